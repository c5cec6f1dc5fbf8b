//! Embedding metrics: retrieval Recall@k and median rank, R-precision (1 true + 99
//! random candidates, as AttnGAN's evaluation), the CLIP-style score, and Fréchet
//! distance / KID between feature sets (named "FD-own" / "KID-own" in reports because the
//! features come from the encoder trained here, not Inception).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// Recall@1/5/10 and median rank (1-based), image→text and text→image, for unit
/// embeddings where row i of each is a pair.
pub fn retrieval(images: &Tensor, texts: &Tensor) -> BTreeMap<String, f64> {
    let n = images.size()[0] as usize;
    retrieval_grouped(images, texts, &(0..n).collect::<Vec<_>>())
}

/// [`retrieval`] for pairs that share images: `groups[i]` names row i's image (several
/// captions of one picture). Image→text asks once per image and counts a hit when any
/// of its captions ranks within k (the COCO 5-captions protocol); text→image ranks each
/// caption's image among the distinct images. Another caption of the same image is
/// never a distractor. With every group of one row, this is plain [`retrieval`].
pub fn retrieval_grouped(
    images: &Tensor,
    texts: &Tensor,
    groups: &[usize],
) -> BTreeMap<String, f64> {
    let cpu = tch::Device::Cpu;
    let sim = images
        .matmul(&texts.tr())
        .to_device(cpu)
        .to_kind(Kind::Float);
    let g = Tensor::from_slice(&groups.iter().map(|&x| x as i64).collect::<Vec<_>>());
    let same = g.unsqueeze(1).eq_tensor(&g.unsqueeze(0));
    // The first row of each group stands for its image.
    let mut seen = std::collections::HashSet::new();
    let first: Vec<bool> = groups.iter().map(|x| seen.insert(*x)).collect();
    let first = Tensor::from_slice(&first);
    // i2t: an image's best own caption against the captions of other images.
    let best_own = sim
        .masked_fill(&same.logical_not(), f64::NEG_INFINITY)
        .amax(&[1i64][..], true);
    let i2t = sim
        .gt_tensor(&best_own)
        .logical_and(&same.logical_not())
        .sum_dim_intlist(1, false, Kind::Int64)
        .masked_select(&first);
    // t2i: a caption's image against the other distinct images.
    let st = sim.tr();
    let own = st.diagonal(0, 0, 1).unsqueeze(1);
    let candidates = first.unsqueeze(0).logical_and(&same.logical_not());
    let t2i = st
        .gt_tensor(&own)
        .logical_and(&candidates)
        .sum_dim_intlist(1, false, Kind::Int64);
    let mut m = BTreeMap::new();
    for (dir, r) in [("i2t", i2t), ("t2i", t2i)] {
        let r: Vec<i64> = Vec::try_from(r).expect("a tensor of the kind we made");
        for k in [1, 5, 10] {
            let hit = r.iter().filter(|&&x| x < k).count() as f64 / r.len() as f64;
            m.insert(format!("{dir}_r{k}"), hit);
        }
        let mut sorted = r.clone();
        sorted.sort();
        m.insert(
            format!("{dir}_median_rank"),
            (sorted[sorted.len() / 2] + 1) as f64,
        );
    }
    m
}

/// [`retrieval_grouped`] averaged over folds of `fold` distinct images in row order (the
/// COCO "1k test" protocol: 5 folds of 1,000 images with 5 captions each). None when
/// the rows hold fewer than `fold` images; a last partial fold is left out.
pub fn retrieval_folds(
    images: &Tensor,
    texts: &Tensor,
    groups: &[usize],
    fold: usize,
) -> Option<BTreeMap<String, f64>> {
    let mut order: Vec<usize> = vec![];
    for g in groups {
        if !order.contains(g) {
            order.push(*g);
        }
    }
    let folds = order.len() / fold.max(1);
    if folds == 0 {
        return None;
    }
    let mut sum: BTreeMap<String, f64> = BTreeMap::new();
    for f in 0..folds {
        let members: std::collections::HashSet<usize> =
            order[f * fold..(f + 1) * fold].iter().copied().collect();
        let rows: Vec<i64> = (0..groups.len())
            .filter(|&i| members.contains(&groups[i]))
            .map(|i| i as i64)
            .collect();
        let idx = Tensor::from_slice(&rows).to_device(images.device());
        let sub_groups: Vec<usize> = rows.iter().map(|&i| groups[i as usize]).collect();
        let m = retrieval_grouped(
            &images.index_select(0, &idx),
            &texts.index_select(0, &idx),
            &sub_groups,
        );
        for (k, v) in m {
            *sum.entry(k).or_default() += v / folds as f64;
        }
    }
    Some(sum)
}

/// R-precision: for each image, rank its true caption among it and `distractors` random
/// other captions; the share ranked first. Chance is 1/(distractors+1).
pub fn r_precision(images: &Tensor, texts: &Tensor, distractors: usize, seed: u64) -> f64 {
    let n = images.size()[0] as usize;
    r_precision_grouped(
        images,
        texts,
        &(0..n).collect::<Vec<_>>(),
        distractors,
        seed,
    )
}

/// [`r_precision`] for pairs that share images (`groups[i]`: row i's image): the
/// distractors are drawn from the captions of other images only.
pub fn r_precision_grouped(
    images: &Tensor,
    texts: &Tensor,
    groups: &[usize],
    distractors: usize,
    seed: u64,
) -> f64 {
    let n = images.size()[0] as usize;
    if n < 2 {
        return 0.0;
    }
    let sim: Vec<Vec<f32>> = Vec::try_from(images.matmul(&texts.tr()).to_device(tch::Device::Cpu))
        .expect("a tensor of the kind we made");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut hits = 0;
    for (i, row) in sim.iter().enumerate() {
        let others: Vec<usize> = (0..n).filter(|&j| groups[j] != groups[i]).collect();
        let picked: Vec<&usize> = others
            .choose_multiple(&mut rng, distractors.min(others.len()))
            .collect();
        if picked.iter().all(|&&j| row[j] < row[i]) {
            hits += 1;
        }
    }
    hits as f64 / n as f64
}

/// CLIP-style score: 100 × max(cos, 0), averaged over pairs.
pub fn clip_score(images: &Tensor, texts: &Tensor) -> f64 {
    ((images * texts)
        .sum_dim_intlist(1, false, Kind::Float)
        .clamp_min(0.0)
        * 100.0)
        .mean(Kind::Float)
        .double_value(&[])
}

fn mean_cov(x: &Tensor) -> (Tensor, Tensor) {
    let x = x.to_kind(Kind::Double);
    let mu = x.mean_dim(0, false, Kind::Double);
    let c = &x - &mu;
    let cov = c.tr().matmul(&c) / (x.size()[0] - 1).max(1) as f64;
    (mu, cov)
}

/// Square root of a symmetric positive semi-definite matrix via its eigen-decomposition.
fn sqrtm_psd(m: &Tensor) -> Tensor {
    let (vals, vecs) = m.linalg_eigh("L");
    let s = vals.clamp_min(0.0).sqrt();
    (&vecs * s.unsqueeze(0)).matmul(&vecs.tr())
}

/// Fréchet distance between Gaussians fitted to two feature sets `(N, F)`:
/// |μ₁−μ₂|² + Tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½).
pub fn frechet_distance(a: &Tensor, b: &Tensor) -> f64 {
    let (m1, s1) = mean_cov(&a.to_device(tch::Device::Cpu));
    let (m2, s2) = mean_cov(&b.to_device(tch::Device::Cpu));
    let r1 = sqrtm_psd(&s1);
    let inner = r1.matmul(&s2).matmul(&r1);
    let inner = (&inner + inner.tr()) / 2.0;
    let cross = sqrtm_psd(&inner).trace();
    let d = (&m1 - &m2).square().sum(Kind::Double);
    (d + s1.trace() + s2.trace() - cross * 2.0)
        .double_value(&[])
        .max(0.0)
}

/// Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD² with the cubic
/// polynomial kernel k(x, y) = (x·y / d + 1)³.
pub fn kid(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_device(tch::Device::Cpu).to_kind(Kind::Double);
    let b = b.to_device(tch::Device::Cpu).to_kind(Kind::Double);
    let d = a.size()[1] as f64;
    let k = |x: &Tensor, y: &Tensor| (x.matmul(&y.tr()) / d + 1.0).pow_tensor_scalar(3);
    let (n, m) = (a.size()[0] as f64, b.size()[0] as f64);
    let kxx = k(&a, &a);
    let kyy = k(&b, &b);
    let kxy = k(&a, &b);
    let off =
        |t: &Tensor, n: f64| (t.sum(Kind::Double) - t.trace()).double_value(&[]) / (n * (n - 1.0));
    off(&kxx, n) + off(&kyy, m) - 2.0 * kxy.mean(Kind::Double).double_value(&[])
}

/// Inception-Score-style score from class posteriors `(N, C)`: exp(E KL(p(y|x) ‖ p(y))).
pub fn inception_style_score(posteriors: &Tensor) -> f64 {
    let p = posteriors.to_kind(Kind::Double).clamp_min(1e-12);
    let py = p.mean_dim(0, true, Kind::Double);
    let kl = (&p * (p.log() - py.log())).sum_dim_intlist(1, false, Kind::Double);
    kl.mean(Kind::Double).exp().double_value(&[])
}

/// The temperature of [`caption_posteriors`]: CLIP's largest logit scale (Radford et al.
/// 2021), a fixed number so scores compare across contrastive models.
pub const CAPTION_TEMPERATURE: f64 = 100.0;

/// p(c | x) over a set of distinct captions as classes: the softmax of
/// [`CAPTION_TEMPERATURE`] × cosine between each unit image embedding `(N, E)` and each
/// unit caption embedding `(C, E)`. With [`inception_style_score`] it gives an
/// Inception-style score that needs no class labels: high when each picture is sharply
/// one caption's and the pictures spread over all of them (between 1 and C).
pub fn caption_posteriors(images: &Tensor, captions: &Tensor) -> Tensor {
    (images.matmul(&captions.tr()) * CAPTION_TEMPERATURE).softmax(-1, Kind::Double)
}

/// Mean pairwise L2 distance between rows (the diversity of several images of one
/// caption; zero means mode collapse).
pub fn mean_pairwise_distance(x: &Tensor) -> f64 {
    let n = x.size()[0];
    if n < 2 {
        return 0.0;
    }
    let d = Tensor::cdist(
        &x.to_kind(Kind::Float),
        &x.to_kind(Kind::Float),
        2.0,
        None::<i64>,
    );
    d.sum(Kind::Double).double_value(&[]) / (n * (n - 1)) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::clip::l2_normalise;
    use tch::Device;

    fn randn(n: i64, d: i64, seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn([n, d], (Kind::Float, Device::Cpu))
    }

    #[test]
    fn perfect_pairs_retrieve_perfectly_and_shuffled_pairs_at_chance() {
        let x = l2_normalise(&randn(200, 32, 0));
        let m = retrieval(&x, &x);
        assert_eq!(
            (m["i2t_r1"], m["t2i_r1"], m["i2t_median_rank"]),
            (1.0, 1.0, 1.0)
        );
        assert_eq!(r_precision(&x, &x, 99, 0), 1.0);
        let y = l2_normalise(&randn(200, 32, 1));
        let rp = r_precision(&x, &y, 99, 0);
        assert!(
            rp < 0.05,
            "unrelated pairs: R-precision {rp} should be near 1/100"
        );
        assert!((clip_score(&x, &x) - 100.0).abs() < 1e-3);
    }

    #[test]
    fn captions_of_one_image_are_never_each_others_distractors() {
        // Two images, two captions each (rows 0-1: image A, rows 2-3: image B). A's
        // second caption leans to B and B's second to A.
        let images = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0]).view([4, 2]);
        let texts = Tensor::from_slice(&[1.0f32, 0.0, 0.6, 0.8, 0.0, 1.0, 0.8, 0.6]).view([4, 2]);
        let groups = [0, 0, 1, 1];
        let m = retrieval_grouped(&images, &texts, &groups);
        // Each image's best caption is its own: both image queries hit at 1.
        assert_eq!(m["i2t_r1"], 1.0);
        // Each weak caption ranks the other image first; B counts once, not twice.
        assert_eq!((m["t2i_r1"], m["t2i_r5"]), (0.5, 1.0));
        let plain = retrieval(&images, &texts);
        assert_eq!(
            plain["i2t_r1"], 0.5,
            "ungrouped, A's second row counts its own caption against it"
        );
        assert_eq!(r_precision_grouped(&images, &texts, &groups, 99, 0), 0.5);
        // One row per group: the grouped metrics are the plain ones.
        let x = l2_normalise(&randn(50, 8, 4));
        let y = l2_normalise(&(&x + randn(50, 8, 5) * 0.5));
        let singles: Vec<usize> = (0..50).collect();
        assert_eq!(retrieval(&x, &y), retrieval_grouped(&x, &y, &singles));
        assert_eq!(
            r_precision(&x, &y, 9, 3),
            r_precision_grouped(&x, &y, &singles, 9, 3)
        );
    }

    #[test]
    fn folds_average_retrieval_over_groups_of_images() {
        // 4 images with 2 captions each; folds of 2 images: rows 0-3, then 4-7.
        let x = l2_normalise(&randn(4, 8, 6));
        let images = x.repeat_interleave_self_int(2, Some(0), None);
        let texts = l2_normalise(&(&images + randn(8, 8, 7) * 0.3));
        let groups = [0, 0, 1, 1, 2, 2, 3, 3];
        let m = retrieval_folds(&images, &texts, &groups, 2).unwrap();
        let a = retrieval_grouped(
            &images.narrow(0, 0, 4),
            &texts.narrow(0, 0, 4),
            &groups[..4],
        );
        let b = retrieval_grouped(
            &images.narrow(0, 4, 4),
            &texts.narrow(0, 4, 4),
            &groups[4..],
        );
        for k in ["i2t_r1", "t2i_r1", "t2i_median_rank"] {
            assert!((m[k] - (a[k] + b[k]) / 2.0).abs() < 1e-12, "{k}");
        }
        assert!(retrieval_folds(&images, &texts, &groups, 5).is_none());
    }

    #[test]
    fn frechet_and_kid_known_answers() {
        let a = randn(2000, 8, 2);
        assert!(frechet_distance(&a, &a) < 1e-6);
        assert!(kid(&a, &a).abs() < 0.05);
        // A shift by 3 in every coordinate: FD ≈ |Δμ|² = 8 · 9 = 72 (same covariance).
        let b = &a + 3.0;
        let fd = frechet_distance(&a, &b);
        assert!((fd - 72.0).abs() < 1e-3, "{fd}");
        // Independent samples of one distribution: FD small, KID near zero.
        let c = randn(2000, 8, 3);
        assert!(frechet_distance(&a, &c) < 0.1);
        assert!(kid(&a, &c).abs() < 0.01);
        assert!(kid(&a, &b) > 1.0);
    }

    #[test]
    fn inception_style_score_bounds() {
        // Confident and evenly spread over C classes → C; all the same → 1.
        let eye = Tensor::eye(10, (Kind::Float, Device::Cpu));
        assert!((inception_style_score(&eye) - 10.0).abs() < 1e-6);
        let same = Tensor::ones([10, 10], (Kind::Float, Device::Cpu)) / 10.0;
        assert!((inception_style_score(&same) - 1.0).abs() < 1e-9);
        assert_eq!(
            mean_pairwise_distance(&Tensor::ones([5, 3], (Kind::Float, Device::Cpu))),
            0.0
        );
    }
}
