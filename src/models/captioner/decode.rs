//! Paragraph decoding for the captioner: batched greedy and temperature / top-p
//! sampling, beam search with a length penalty, a repetition penalty and
//! no-repeat-n-gram blocking (paragraph captioners loop without it: Melas-Kyriazi et al.
//! 2018). All use the KV cache unless told not to (the equality test and the speed
//! comparison need the full-recomputation path too).

use super::Captioner;
use crate::nn::transformer::LayerCache;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Greedy,
    Beam,
    Sample,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeOptions {
    pub strategy: Strategy,
    #[serde(default = "d_beam")]
    pub beam: usize,
    /// Beam scores are divided by length^length_penalty.
    #[serde(default = "d_one")]
    pub length_penalty: f64,
    #[serde(default = "d_one")]
    pub temperature: f64,
    #[serde(default = "d_one")]
    pub top_p: f64,
    /// > 1 makes tokens already written less likely (CTRL, Keskar et al. 2019).
    #[serde(default = "d_one")]
    pub repetition_penalty: f64,
    /// Forbid repeating any n-gram of this length; 0 disables.
    #[serde(default)]
    pub no_repeat_ngram: usize,
    /// Upper bound on the paragraph length in tokens (capped by the model's max_len).
    #[serde(default = "d_max")]
    pub max_tokens: usize,
    #[serde(default = "d_true")]
    pub kv_cache: bool,
}
fn d_beam() -> usize {
    3
}
fn d_one() -> f64 {
    1.0
}
fn d_max() -> usize {
    256
}
fn d_true() -> bool {
    true
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            strategy: Strategy::Greedy,
            beam: 3,
            length_penalty: 1.0,
            temperature: 1.0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            no_repeat_ngram: 0,
            max_tokens: 256,
            kv_cache: true,
        }
    }
}

/// Tokens that would complete an n-gram already present in `history`.
fn banned_by_ngram(history: &[i64], n: usize) -> Vec<i64> {
    if n == 0 || history.len() + 1 < n {
        return vec![];
    }
    let prefix = &history[history.len() + 1 - n..];
    history
        .windows(n)
        .filter(|w| &w[..n - 1] == prefix)
        .map(|w| w[n - 1])
        .collect()
}

/// Applies the repetition penalty and n-gram blocking to `logits` `(B, V)` in place,
/// row by row from each row's history.
fn penalise(logits: &mut Tensor, histories: &[Vec<i64>], opts: &DecodeOptions) {
    if opts.repetition_penalty == 1.0 && opts.no_repeat_ngram == 0 {
        return;
    }
    let v = logits.size()[1];
    let dev = logits.device();
    let mut scale = vec![1f32; histories.len() * v as usize];
    let mut ban = vec![false; histories.len() * v as usize];
    for (r, h) in histories.iter().enumerate() {
        if opts.repetition_penalty != 1.0 {
            for &t in h.iter().skip(1) {
                scale[r * v as usize + t as usize] = opts.repetition_penalty as f32;
            }
        }
        for t in banned_by_ngram(&h[1.min(h.len())..], opts.no_repeat_ngram) {
            ban[r * v as usize + t as usize] = true;
        }
    }
    let b = histories.len() as i64;
    let scale = Tensor::from_slice(&scale).view([b, v]).to_device(dev);
    // CTRL's rule: positive logits are divided, negative ones multiplied.
    let penalised = logits
        .where_self(&logits.lt(0.0), &(&*logits / &scale))
        .where_self(&logits.ge(0.0), &(&*logits * &scale));
    let ban = Tensor::from_slice(&ban).view([b, v]).to_device(dev);
    *logits = penalised.masked_fill(&ban, f64::NEG_INFINITY);
}

fn sample_top_p(logits: &Tensor, temperature: f64, top_p: f64) -> Tensor {
    let probs = (logits / temperature.max(1e-6)).softmax(-1, Kind::Float);
    let (sorted, idx) = probs.sort(-1, true);
    let cum = sorted.cumsum(-1, Kind::Float);
    // Keep the smallest prefix whose mass reaches top_p (the first token always stays).
    let drop = (&cum - &sorted).gt(top_p);
    let kept = sorted.masked_fill(&drop, 0.0);
    let choice = kept.multinomial(1, false); // (B, 1) index into the sorted order
    idx.gather(-1, &choice, false).squeeze_dim(-1)
}

impl Captioner {
    /// Decodes a batch of images in [-1, 1]; returns token ids per image (start token
    /// first, end token last when one was produced).
    pub fn generate(
        &self,
        images: &Tensor,
        opts: &DecodeOptions,
        bos: i64,
        eos: i64,
        pad: i64,
    ) -> Vec<Vec<i64>> {
        let ctx = tch::no_grad(|| self.encode(images, false));
        self.generate_from_context(&ctx, opts, bos, eos, pad)
    }

    /// Decodes from a context the decoder attends to, `(B, G, D)`: the image grid, or
    /// any other memory (the unified generator's latent tokens).
    pub fn generate_from_context(
        &self,
        ctx: &Tensor,
        opts: &DecodeOptions,
        bos: i64,
        eos: i64,
        pad: i64,
    ) -> Vec<Vec<i64>> {
        tch::no_grad(|| match opts.strategy {
            Strategy::Beam => (0..ctx.size()[0])
                .map(|i| self.beam_search(&ctx.narrow(0, i, 1), opts, bos, eos))
                .collect(),
            _ => self.batched(ctx, opts, bos, eos, pad),
        })
    }

    fn max_steps(&self, opts: &DecodeOptions) -> usize {
        opts.max_tokens.min(self.cfg.max_len as usize).max(2) - 1
    }

    fn batched(
        &self,
        ctx: &Tensor,
        opts: &DecodeOptions,
        bos: i64,
        eos: i64,
        pad: i64,
    ) -> Vec<Vec<i64>> {
        let b = ctx.size()[0];
        let dev = ctx.device();
        let mut caches: Vec<LayerCache> = (0..self.cfg.layers)
            .map(|_| LayerCache::default())
            .collect();
        let mut hist: Vec<Vec<i64>> = vec![vec![bos]; b as usize];
        let mut done = vec![false; b as usize];
        let mut input = Tensor::full([b, 1], bos, (Kind::Int64, dev));
        for t in 0..self.max_steps(opts) {
            let logits = if opts.kv_cache {
                self.logits(ctx, &input, t as i64, Some(&mut caches), false)
            } else {
                let all: Vec<i64> = hist.concat();
                let prefix = Tensor::from_slice(&all)
                    .view([b, t as i64 + 1])
                    .to_device(dev);
                self.logits(ctx, &prefix, 0, None, false)
            };
            let mut last = logits.select(1, -1); // (B, V)
            penalise(&mut last, &hist, opts);
            let next = match opts.strategy {
                Strategy::Sample => sample_top_p(&last, opts.temperature, opts.top_p),
                _ => last.argmax(-1, false),
            };
            let next: Vec<i64> =
                Vec::try_from(next.to_device(tch::Device::Cpu)).expect("int64 tokens");
            for (r, &tok) in next.iter().enumerate() {
                let tok = if done[r] { pad } else { tok };
                hist[r].push(tok);
                done[r] |= tok == eos;
            }
            if done.iter().all(|&d| d) {
                break;
            }
            let fed: Vec<i64> = hist
                .iter()
                .map(|h| *h.last().expect("histories start with the start token"))
                .collect();
            input = Tensor::from_slice(&fed).view([b, 1]).to_device(dev);
        }
        hist.into_iter()
            .map(|mut h| {
                if let Some(p) = h.iter().position(|&t| t == eos) {
                    h.truncate(p + 1);
                }
                h
            })
            .collect()
    }

    /// Beam search for one context `(1, G, D)`; hypotheses are the batch dimension.
    fn beam_search(&self, ctx: &Tensor, opts: &DecodeOptions, bos: i64, eos: i64) -> Vec<i64> {
        let k = opts.beam.max(1) as i64;
        let dev = ctx.device();
        let ctx = ctx.expand([k, -1, -1], false).contiguous();
        let mut caches: Vec<LayerCache> = (0..self.cfg.layers)
            .map(|_| LayerCache::default())
            .collect();
        let mut beams: Vec<(Vec<i64>, f64)> = (0..k)
            .map(|i| (vec![bos], if i == 0 { 0.0 } else { f64::NEG_INFINITY }))
            .collect();
        let mut finished: Vec<(Vec<i64>, f64)> = vec![];
        let norm = |len: usize| (len as f64).powf(opts.length_penalty);
        for t in 0..self.max_steps(opts) {
            let n = beams.len() as i64;
            let logits = if opts.kv_cache {
                let last: Vec<i64> = beams
                    .iter()
                    .map(|b| *b.0.last().expect("beams start with the start token"))
                    .collect();
                let input = Tensor::from_slice(&last).view([n, 1]).to_device(dev);
                self.logits(
                    &ctx.narrow(0, 0, n),
                    &input,
                    t as i64,
                    Some(&mut caches),
                    false,
                )
            } else {
                let all: Vec<i64> = beams.iter().flat_map(|b| b.0.clone()).collect();
                let prefix = Tensor::from_slice(&all)
                    .view([n, t as i64 + 1])
                    .to_device(dev);
                self.logits(&ctx.narrow(0, 0, n), &prefix, 0, None, false)
            };
            let mut last = logits.select(1, -1);
            let hist: Vec<Vec<i64>> = beams.iter().map(|b| b.0.clone()).collect();
            penalise(&mut last, &hist, opts);
            let logp = last
                .log_softmax(-1, Kind::Float)
                .to_device(tch::Device::Cpu);
            let scores = Tensor::from_slice(&beams.iter().map(|b| b.1 as f32).collect::<Vec<_>>())
                .view([n, 1]);
            let total = (logp + scores).view([-1]);
            let v = last.size()[1];
            let (top, idx) = total.topk(2 * k, 0, true, true);
            let top: Vec<f32> = Vec::try_from(top).expect("a tensor of the kind we made");
            let idx: Vec<i64> = Vec::try_from(idx).expect("a tensor of the kind we made");
            let mut next: Vec<(Vec<i64>, f64)> = vec![];
            let mut source: Vec<i64> = vec![];
            for (&score, &flat) in top.iter().zip(&idx) {
                if !score.is_finite() {
                    continue;
                }
                let (from, tok) = (flat / v, flat % v);
                let mut seq = beams[from as usize].0.clone();
                seq.push(tok);
                if tok == eos {
                    finished.push((seq.clone(), score as f64 / norm(seq.len() - 1)));
                } else {
                    next.push((seq, score as f64));
                    source.push(from);
                }
                if next.len() as i64 == k {
                    break;
                }
            }
            let best_alive = next
                .first()
                .map(|b| b.1 / norm(b.0.len() - 1))
                .unwrap_or(f64::NEG_INFINITY);
            let best_done = finished
                .iter()
                .map(|f| f.1)
                .fold(f64::NEG_INFINITY, f64::max);
            if next.is_empty() || (finished.len() as i64 >= k && best_done >= best_alive) {
                beams = next;
                break;
            }
            if opts.kv_cache {
                let index = Tensor::from_slice(&source).to_device(dev);
                for c in caches.iter_mut() {
                    c.self_attn.select(&index);
                    // The cross-attention keys are identical across hypotheses.
                    c.cross_attn.k = c
                        .cross_attn
                        .k
                        .as_ref()
                        .map(|t| t.narrow(0, 0, next.len() as i64));
                    c.cross_attn.v = c
                        .cross_attn
                        .v
                        .as_ref()
                        .map(|t| t.narrow(0, 0, next.len() as i64));
                }
            }
            beams = next;
        }
        finished
            .into_iter()
            .chain(beams.into_iter().map(|(s, sc)| {
                let l = s.len() - 1;
                (s, sc / norm(l))
            }))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|b| b.0)
            .unwrap_or_else(|| vec![bos])
    }
}

#[cfg(test)]
mod tests {
    use super::banned_by_ngram;

    #[test]
    fn ngram_blocking_finds_continuations() {
        // history "1 2 3 1 2": the trigram "1 2 3" exists, so after "1 2" token 3 is banned.
        assert_eq!(banned_by_ngram(&[1, 2, 3, 1, 2], 3), vec![3]);
        assert!(banned_by_ngram(&[1, 2], 3).is_empty());
        assert!(banned_by_ngram(&[1, 2, 3], 0).is_empty());
    }
}
