//! Caption metrics from their papers' definitions: corpus BLEU-1..4 (Papineni et al.
//! 2002), ROUGE-L (Lin 2004, β = 1.2 as coco-caption), CIDEr-D (Vedantam et al. 2015,
//! coco-caption's variant: clipped tf-idf, Gaussian length penalty σ = 6, ×10), and the
//! paragraph-degeneration measures distinct-n and repeated-trigram rate. METEOR and
//! SPICE need Java tools and WordNet, so they are left out.

use super::mean;
use std::collections::HashMap;

/// Lower-cased words without punctuation (the metrics' tokenisation).
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'' && c != '-')
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

fn ngrams(w: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut m = HashMap::new();
    if w.len() >= n {
        for g in w.windows(n) {
            *m.entry(g).or_insert(0) += 1;
        }
    }
    m
}

/// Corpus BLEU-1..4 against each candidate's references (one or several): n-gram
/// counts clipped by their largest count in any reference, and the brevity penalty from
/// the reference length closest to the candidate's (coco-caption's "closest").
pub fn bleu(cands: &[Vec<String>], refs: &[Vec<Vec<String>>]) -> [f64; 4] {
    let (mut hit, mut tot) = ([0f64; 4], [0f64; 4]);
    let (mut c_len, mut r_len) = (0f64, 0f64);
    for (c, rs) in cands.iter().zip(refs) {
        c_len += c.len() as f64;
        // The closest length; on a tie the shorter, as coco-caption.
        r_len += rs
            .iter()
            .map(|r| r.len())
            .min_by_key(|&l| (l.abs_diff(c.len()), l))
            .unwrap_or(0) as f64;
        for n in 1..=4 {
            let mut most: HashMap<&[String], usize> = HashMap::new();
            for r in rs {
                for (g, k) in ngrams(r, n) {
                    let e = most.entry(g).or_insert(0);
                    *e = (*e).max(k);
                }
            }
            for (g, k) in ngrams(c, n) {
                hit[n - 1] += k.min(*most.get(g).unwrap_or(&0)) as f64;
            }
            tot[n - 1] += c.len().saturating_sub(n - 1) as f64;
        }
    }
    let bp = if c_len == 0.0 {
        0.0
    } else if c_len < r_len {
        (1.0 - r_len / c_len).exp()
    } else {
        1.0
    };
    let mut out = [0.0; 4];
    let mut log_sum = 0.0;
    for n in 0..4 {
        let p = if tot[n] > 0.0 { hit[n] / tot[n] } else { 0.0 };
        log_sum += if p > 0.0 { p.ln() } else { f64::NEG_INFINITY };
        out[n] = bp * (log_sum / (n + 1) as f64).exp();
    }
    out
}

fn lcs(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Mean ROUGE-L F-score (β = 1.2). With several references, as coco-caption: the
/// largest LCS precision and the largest LCS recall over them make the F-score.
pub fn rouge_l(cands: &[Vec<String>], refs: &[Vec<Vec<String>>]) -> f64 {
    let beta2 = 1.2f64 * 1.2;
    let scores: Vec<f64> = cands
        .iter()
        .zip(refs)
        .map(|(c, rs)| {
            let (mut p, mut rec) = (0f64, 0f64);
            for r in rs {
                let l = lcs(c, r) as f64;
                if l > 0.0 {
                    p = p.max(l / c.len() as f64);
                    rec = rec.max(l / r.len() as f64);
                }
            }
            if p == 0.0 || rec == 0.0 {
                return 0.0;
            }
            (1.0 + beta2) * p * rec / (rec + beta2 * p)
        })
        .collect();
    mean(&scores)
}

/// One tf-idf vector per n-gram order, with their norms and the length term.
type CiderVec<'a> = (Vec<HashMap<&'a [String], f64>>, [f64; 4], f64);

/// tf-idf vectors per n (1..4), their norms and the n-gram count used for the length
/// penalty, as in coco-caption's `CiderScorer.counts2vec`.
fn cider_vec<'a>(w: &'a [String], df: &HashMap<Vec<String>, f64>, log_n: f64) -> CiderVec<'a> {
    let mut vecs = vec![];
    let mut norms = [0.0; 4];
    for n in 1..=4 {
        let mut v = HashMap::new();
        for (g, tf) in ngrams(w, n) {
            let d = df.get(g).copied().unwrap_or(0.0).max(1.0).ln();
            let x = tf as f64 * (log_n - d);
            norms[n - 1] += x * x;
            v.insert(g, x);
        }
        norms[n - 1] = norms[n - 1].sqrt();
        vecs.push(v);
    }
    (vecs, norms, w.len().saturating_sub(1) as f64)
}

/// CIDEr-D over a corpus against each candidate's references, as coco-caption: a
/// document frequency counts the images whose references hold the n-gram, and each
/// candidate scores the mean of its similarities to its references.
pub fn cider_d(cands: &[Vec<String>], refs: &[Vec<Vec<String>>]) -> f64 {
    let mut df: HashMap<Vec<String>, f64> = HashMap::new();
    for rs in refs {
        let mut seen: std::collections::HashSet<&[String]> = Default::default();
        for r in rs {
            for n in 1..=4 {
                seen.extend(ngrams(r, n).into_keys());
            }
        }
        for g in seen {
            *df.entry(g.to_vec()).or_insert(0.0) += 1.0;
        }
    }
    let log_n = (refs.len() as f64).ln();
    let sigma = 6.0f64;
    let scores: Vec<f64> = cands
        .iter()
        .zip(refs)
        .map(|(c, rs)| {
            let (vc, nc, lc) = cider_vec(c, &df, log_n);
            let mut sum = 0.0;
            for r in rs {
                let (vr, nr, lr) = cider_vec(r, &df, log_n);
                let delta = lc - lr;
                for n in 0..4 {
                    let mut val = 0.0;
                    for (g, x) in &vc[n] {
                        if let Some(y) = vr[n].get(g) {
                            val += x.min(*y) * y; // CIDEr-D clips the candidate's counts
                        }
                    }
                    if nc[n] != 0.0 && nr[n] != 0.0 {
                        val /= nc[n] * nr[n];
                    }
                    sum += val * (-(delta * delta) / (2.0 * sigma * sigma)).exp();
                }
            }
            sum / 4.0 / rs.len().max(1) as f64 * 10.0
        })
        .collect();
    mean(&scores)
}

/// Unique n-grams over all n-grams, across the corpus.
pub fn distinct_n(cands: &[Vec<String>], n: usize) -> f64 {
    let mut all: HashMap<&[String], usize> = HashMap::new();
    let mut total = 0usize;
    for c in cands {
        for (g, k) in ngrams(c, n) {
            *all.entry(g).or_insert(0) += k;
            total += k;
        }
    }
    if total == 0 {
        0.0
    } else {
        all.len() as f64 / total as f64
    }
}

/// Mean share of each paragraph's trigrams that already occurred earlier in it.
pub fn repeated_trigram_rate(cands: &[Vec<String>]) -> f64 {
    let rates: Vec<f64> = cands
        .iter()
        .map(|c| {
            if c.len() < 3 {
                return 0.0;
            }
            let mut seen = std::collections::HashSet::new();
            let repeats = c.windows(3).filter(|g| !seen.insert(*g)).count();
            repeats as f64 / (c.len() - 2) as f64
        })
        .collect();
    mean(&rates)
}

/// All caption metrics for generated vs reference paragraphs, one reference each.
pub fn caption_metrics(
    generated: &[String],
    references: &[String],
) -> std::collections::BTreeMap<String, f64> {
    let refs: Vec<Vec<String>> = references.iter().map(|r| vec![r.clone()]).collect();
    caption_metrics_multi(generated, &refs)
}

/// All caption metrics for generated paragraphs against each one's references (an
/// image's every caption, as coco-caption scores them). The reference-side
/// degeneration figure is over every reference.
pub fn caption_metrics_multi(
    generated: &[String],
    references: &[Vec<String>],
) -> std::collections::BTreeMap<String, f64> {
    let c: Vec<Vec<String>> = generated.iter().map(|t| words(t)).collect();
    let rr: Vec<Vec<Vec<String>>> = references
        .iter()
        .map(|rs| rs.iter().map(|t| words(t)).collect())
        .collect();
    let r: Vec<Vec<String>> = rr.iter().flatten().cloned().collect();
    let b = bleu(&c, &rr);
    let mut m = std::collections::BTreeMap::new();
    for (i, v) in b.iter().enumerate() {
        m.insert(format!("bleu{}", i + 1), *v);
    }
    m.insert("rouge_l".into(), rouge_l(&c, &rr));
    m.insert("cider_d".into(), cider_d(&c, &rr));
    m.insert("distinct1".into(), distinct_n(&c, 1));
    m.insert("distinct2".into(), distinct_n(&c, 2));
    m.insert("repeated_trigrams".into(), repeated_trigram_rate(&c));
    m.insert("repeated_trigrams_ref".into(), repeated_trigram_rate(&r));
    m.insert(
        "mean_words".into(),
        mean(&c.iter().map(|x| x.len() as f64).collect::<Vec<_>>()),
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        words(s)
    }

    #[test]
    fn bleu_by_hand() {
        // cand "the cat sat on the mat" vs ref "the cat is on the mat":
        // p1 = 5/6, p2 = 3/5 (the cat, on the, the mat), p3 = 1/4 (on the mat), p4 = 0/3.
        let b = bleu(
            &[w("the cat sat on the mat")],
            &[vec![w("the cat is on the mat")]],
        );
        assert!((b[0] - 5.0 / 6.0).abs() < 1e-12);
        assert!((b[1] - (5.0f64 / 6.0 * 3.0 / 5.0).sqrt()).abs() < 1e-12);
        assert!((b[2] - (5.0f64 / 6.0 * 3.0 / 5.0 * 1.0 / 4.0).cbrt()).abs() < 1e-12);
        assert_eq!(b[3], 0.0);
        // Brevity penalty: a 3-word candidate against a 6-word reference, all matching.
        let b = bleu(&[w("the cat is")], &[vec![w("the cat is on the mat")]]);
        assert!((b[0] - (1.0f64 - 2.0).exp()).abs() < 1e-12);
        // Clipping: "the the the" against "the cat": p1 = 1/3.
        let b = bleu(&[w("the the the")], &[vec![w("the cat the")]]);
        assert!((b[0] - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn rouge_l_by_hand() {
        // LCS("a b c d", "a c d e") = 3 → P = R = 3/4 → F = 3/4 for any β.
        let r = rouge_l(&[w("a b c d")], &[vec![w("a c d e")]]);
        assert!((r - 0.75).abs() < 1e-12);
        // P = 1, R = 1/2, β² = 1.44: F = 2.44·0.5 / (0.5 + 1.44) = 0.628866…
        let r = rouge_l(&[w("a b")], &[vec![w("a b c d")]]);
        assert!((r - 2.44 * 0.5 / 1.94).abs() < 1e-12);
    }

    #[test]
    fn cider_identical_beats_different_and_length_penalty_applies() {
        let refs = vec![
            w("a red house stands on the left"),
            w("a blue boat floats on the sea"),
            w("a green tree grows in the meadow"),
        ];
        let one: Vec<Vec<Vec<String>>> = refs.iter().map(|r| vec![r.clone()]).collect();
        let same = cider_d(&refs, &one);
        // Identical candidates: every n-gram matches, cosine 1 per n, no length penalty → 10.
        assert!((same - 10.0).abs() < 1e-9, "{same}");
        let other = vec![refs[1].clone(), refs[2].clone(), refs[0].clone()];
        assert!(cider_d(&other, &one) < 3.0);
    }

    #[test]
    fn several_references_by_hand() {
        let cand = [w("the cat sat on the mat")];
        let refs = [vec![w("the cat is on the mat"), w("a cat sat on a mat")]];
        // Every unigram and bigram is in one reference or the other; trigrams: "cat sat
        // on" and "on the mat" of 4; 4-grams: none. Both references are 6 words: bp = 1.
        let b = bleu(&cand, &refs);
        assert!((b[0] - 1.0).abs() < 1e-12);
        assert!((b[1] - 1.0).abs() < 1e-12);
        assert!((b[2] - 0.5f64.cbrt()).abs() < 1e-12);
        assert_eq!(b[3], 0.0);
        // The brevity penalty takes the closest reference length (4, not 6).
        let b = bleu(
            &[w("the cat is")],
            &[vec![w("the cat is on the mat"), w("the cat is here")]],
        );
        assert!((b[0] - (1.0f64 - 4.0 / 3.0).exp()).abs() < 1e-12);
        // ROUGE-L: the best precision (2/3, from "a b") and the best recall (1, both).
        let r = rouge_l(&[w("a b c")], &[vec![w("a b"), w("c")]]);
        let (p, rec) = (2.0 / 3.0, 1.0);
        assert!((r - 2.44 * p * rec / (rec + 1.44 * p)).abs() < 1e-12);
        // CIDEr-D is the mean over an image's references: a candidate equal to both of
        // its image's references scores 10, equal to one of two that share no word, 5.
        let imgs = vec![
            vec![w("a red house on the left"), w("a red house on the left")],
            vec![
                w("a blue boat on the sea"),
                w("green trees grow in meadows"),
            ],
            vec![w("the sun over a desert"), w("the sun over a desert")],
        ];
        let cands = vec![imgs[0][0].clone(), imgs[1][0].clone(), imgs[2][0].clone()];
        let c = cider_d(&cands, &imgs);
        assert!((c - (10.0 + 5.0 + 10.0) / 3.0).abs() < 1e-9, "{c}");
        let m = caption_metrics_multi(
            &["a red house on the left".to_string()],
            &[vec!["a red house on the left".into(), "a boat".into()]],
        );
        assert!((m["bleu4"] - 1.0).abs() < 1e-12 && (m["rouge_l"] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn degeneration_measures() {
        let looping = vec![w("a b c a b c a b c")];
        // 7 trigrams, the last 4 repeat earlier ones.
        assert!((repeated_trigram_rate(&looping) - 4.0 / 7.0).abs() < 1e-12);
        assert!((distinct_n(&looping, 1) - 3.0 / 9.0).abs() < 1e-12);
        assert_eq!(repeated_trigram_rate(&[w("a b c d")]), 0.0);
    }
}
