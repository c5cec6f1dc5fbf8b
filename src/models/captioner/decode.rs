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

/// Widest beam a caller may ask for: each beam row holds a full KV cache.
pub const MAX_BEAM: usize = 64;

impl DecodeOptions {
    /// Refuses settings with no meaning (a beam of 0, a negative temperature, NaN).
    pub fn check(&self) -> anyhow::Result<()> {
        let bad = |what: String| Err(anyhow::anyhow!(what));
        if !(1..=MAX_BEAM).contains(&self.beam) {
            return bad(format!("beam {}: give 1 to {MAX_BEAM}", self.beam));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad(format!(
                "temperature {}: give a positive number",
                self.temperature
            ));
        }
        if !(self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top-p {}: give 0 < p ≤ 1", self.top_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!(
                "repetition penalty {}: give a positive number (1 is off)",
                self.repetition_penalty
            ));
        }
        if !self.length_penalty.is_finite() {
            return bad(format!(
                "length penalty {}: give a number",
                self.length_penalty
            ));
        }
        if self.max_tokens == 0 {
            return bad("max_tokens 0: give at least 1".into());
        }
        Ok(())
    }
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

/// What the decoding strategies need from a model: next-token logits per row, with the
/// model's own cache. The captioner in the trainer and the exported TorchScript
/// captioner both implement it, so every strategy is written once.
pub trait NextToken {
    /// Whatever the model keeps between steps (context, caches).
    type State;
    /// `(B, V)` logits after `last` `(B, 1)`, the tokens at position `t`; `hist` holds
    /// every row's tokens so far (start token first) for models that recompute.
    fn next_logits(
        &self,
        state: &mut Self::State,
        last: &Tensor,
        t: i64,
        hist: &[Vec<i64>],
    ) -> anyhow::Result<Tensor>;
    /// The state of rows `index` (int64 on the state's device), in that order.
    fn select_rows(&self, state: &Self::State, index: &Tensor) -> anyhow::Result<Self::State>;
    /// The longest paragraph the model writes, start and end tokens included.
    fn max_len(&self) -> usize;
}

/// Decodes `rows` rows from `state` (the model's state for those rows); returns token
/// ids per row (start token first, end token last when one was produced).
#[allow(clippy::too_many_arguments)] // the decoding call's parts, each distinct
pub fn decode<M: NextToken>(
    model: &M,
    state: M::State,
    rows: i64,
    device: tch::Device,
    opts: &DecodeOptions,
    bos: i64,
    eos: i64,
    pad: i64,
) -> anyhow::Result<Vec<Vec<i64>>> {
    tch::no_grad(|| match opts.strategy {
        Strategy::Beam => {
            // k rows per image, image i's at i·k … i·k+k−1.
            let k = opts.beam.max(1) as i64;
            let index =
                Tensor::arange(rows, (Kind::Int64, device)).repeat_interleave_self_int(k, 0, None);
            let beams = model.select_rows(&state, &index)?;
            beam_search(model, beams, rows as usize, device, opts, bos, eos)
        }
        _ => batched(model, state, rows, device, opts, bos, eos, pad),
    })
}

fn max_steps(max_len: usize, opts: &DecodeOptions) -> usize {
    opts.max_tokens.min(max_len).max(2) - 1
}

#[allow(clippy::too_many_arguments)] // the decoding call's parts, each distinct
fn batched<M: NextToken>(
    model: &M,
    mut state: M::State,
    b: i64,
    dev: tch::Device,
    opts: &DecodeOptions,
    bos: i64,
    eos: i64,
    pad: i64,
) -> anyhow::Result<Vec<Vec<i64>>> {
    let mut hist: Vec<Vec<i64>> = vec![vec![bos]; b as usize];
    let mut done = vec![false; b as usize];
    let mut input = Tensor::full([b, 1], bos, (Kind::Int64, dev));
    for t in 0..max_steps(model.max_len(), opts) {
        let mut last = model.next_logits(&mut state, &input, t as i64, &hist)?;
        penalise(&mut last, &hist, opts);
        let next = match opts.strategy {
            Strategy::Sample => sample_top_p(&last, opts.temperature, opts.top_p),
            _ => last.argmax(-1, false),
        };
        let next: Vec<i64> = Vec::try_from(next.to_device(tch::Device::Cpu)).expect("int64 tokens");
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
    Ok(hist
        .into_iter()
        .map(|mut h| {
            if let Some(p) = h.iter().position(|&t| t == eos) {
                h.truncate(p + 1);
            }
            h
        })
        .collect())
}

/// One image's beam: its hypotheses with their summed log-probabilities.
type Beam = Vec<(Vec<i64>, f64)>;

/// Beam search for a batch of images at once. `state` holds `beam` rows per image (image
/// i's hypotheses at rows i·k … i·k+k−1); an image whose search has ended leaves the
/// batch, so the rows still decoded are always those of the images still searching.
#[allow(clippy::too_many_arguments)] // the decoding call's parts, each distinct
fn beam_search<M: NextToken>(
    model: &M,
    mut state: M::State,
    rows: usize,
    dev: tch::Device,
    opts: &DecodeOptions,
    bos: i64,
    eos: i64,
) -> anyhow::Result<Vec<Vec<i64>>> {
    let k = opts.beam.max(1);
    let norm = |len: usize| (len as f64).powf(opts.length_penalty);
    // The best hypothesis of an image's finished ones and live ones, scored per length.
    let best = |finished: &Beam, live: &Beam| -> Vec<i64> {
        finished
            .iter()
            .cloned()
            .chain(
                live.iter()
                    .map(|(s, sc)| (s.clone(), sc / norm(s.len() - 1))),
            )
            .filter(|b| b.1.is_finite())
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|b| b.0)
            .unwrap_or_else(|| vec![bos])
    };
    // Only the first hypothesis is live at the start, so the k rows do not fill with
    // copies of one paragraph.
    let start: Beam = (0..k)
        .map(|i| (vec![bos], if i == 0 { 0.0 } else { f64::NEG_INFINITY }))
        .collect();
    let mut beams: Vec<Beam> = vec![start; rows];
    let mut finished: Vec<Beam> = vec![vec![]; rows];
    let mut result: Vec<Option<Vec<i64>>> = vec![None; rows];
    let mut searching: Vec<usize> = (0..rows).collect();
    for t in 0..max_steps(model.max_len(), opts) {
        let n = (searching.len() * k) as i64;
        let hist: Vec<Vec<i64>> = searching
            .iter()
            .flat_map(|&i| beams[i].iter().map(|b| b.0.clone()))
            .collect();
        let last: Vec<i64> = hist
            .iter()
            .map(|h| *h.last().expect("beams start with the start token"))
            .collect();
        let input = Tensor::from_slice(&last).view([n, 1]).to_device(dev);
        let mut logits = model.next_logits(&mut state, &input, t as i64, &hist)?;
        penalise(&mut logits, &hist, opts);
        let v = logits.size()[1];
        let logp = logits
            .log_softmax(-1, Kind::Float)
            .to_device(tch::Device::Cpu);
        let scores: Vec<f32> = searching
            .iter()
            .flat_map(|&i| beams[i].iter().map(|b| b.1 as f32))
            .collect();
        let total = (logp + Tensor::from_slice(&scores).view([n, 1]))
            .view([searching.len() as i64, k as i64 * v]);
        // 2k candidates per image: even if k of them end the paragraph, k stay live.
        let (top, idx) = total.topk((2 * k as i64).min(k as i64 * v), 1, true, true);
        let width = top.size()[1] as usize;
        let top: Vec<f32> = Vec::try_from(top.view([-1])).expect("a tensor of the kind we made");
        let idx: Vec<i64> = Vec::try_from(idx.view([-1])).expect("a tensor of the kind we made");
        let mut source: Vec<i64> = vec![];
        let mut still: Vec<usize> = vec![];
        for (slot, &i) in searching.iter().enumerate() {
            let mut next: Beam = vec![];
            let mut from_rows: Vec<i64> = vec![];
            for j in slot * width..(slot + 1) * width {
                let score = top[j];
                if !score.is_finite() {
                    continue;
                }
                let (from, tok) = ((idx[j] / v) as usize, idx[j] % v);
                let mut seq = beams[i][from].0.clone();
                seq.push(tok);
                if tok == eos {
                    let len = seq.len() - 1;
                    finished[i].push((seq, score as f64 / norm(len)));
                } else {
                    next.push((seq, score as f64));
                    from_rows.push((slot * k + from) as i64);
                }
                if next.len() == k {
                    break;
                }
            }
            let best_alive = next
                .first()
                .map(|b| b.1 / norm(b.0.len() - 1))
                .unwrap_or(f64::NEG_INFINITY);
            let best_done = finished[i]
                .iter()
                .map(|f| f.1)
                .fold(f64::NEG_INFINITY, f64::max);
            if next.is_empty() || (finished[i].len() >= k && best_done >= best_alive) {
                result[i] = Some(best(&finished[i], &next));
                continue;
            }
            // Fewer than k live candidates: dead copies (scored −∞) keep k rows per image.
            while next.len() < k {
                next.push((next[0].0.clone(), f64::NEG_INFINITY));
                from_rows.push(from_rows[0]);
            }
            beams[i] = next;
            source.extend(from_rows);
            still.push(i);
        }
        searching = still;
        if searching.is_empty() {
            break;
        }
        state = model.select_rows(&state, &Tensor::from_slice(&source).to_device(dev))?;
    }
    // Images still searching at the length limit end with their best hypothesis so far.
    Ok(result
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|| best(&finished[i], &beams[i])))
        .collect())
}

/// The trainer's captioner between steps: the context it attends to, and per layer the
/// KV cache (empty when decoding recomputes every prefix).
pub struct CaptionerState {
    ctx: Tensor,
    caches: Vec<LayerCache>,
    kv_cache: bool,
}

impl NextToken for Captioner {
    type State = CaptionerState;

    fn next_logits(
        &self,
        state: &mut CaptionerState,
        last: &Tensor,
        t: i64,
        hist: &[Vec<i64>],
    ) -> anyhow::Result<Tensor> {
        let logits = if state.kv_cache {
            self.logits(&state.ctx, last, t, Some(&mut state.caches), false)
        } else {
            let all: Vec<i64> = hist.concat();
            let prefix = Tensor::from_slice(&all)
                .view([hist.len() as i64, t + 1])
                .to_device(state.ctx.device());
            self.logits(&state.ctx, &prefix, 0, None, false)
        };
        Ok(logits.select(1, -1))
    }

    fn select_rows(
        &self,
        state: &CaptionerState,
        index: &Tensor,
    ) -> anyhow::Result<CaptionerState> {
        Ok(CaptionerState {
            ctx: state.ctx.index_select(0, index),
            caches: state
                .caches
                .iter()
                .map(|c| LayerCache {
                    self_attn: c.self_attn.selected(index),
                    cross_attn: c.cross_attn.selected(index),
                })
                .collect(),
            kv_cache: state.kv_cache,
        })
    }

    fn max_len(&self) -> usize {
        self.cfg.max_len as usize
    }
}

impl Captioner {
    /// The decoding state for a context `(B, G, D)`: empty caches.
    pub fn start_state(&self, ctx: &Tensor, opts: &DecodeOptions) -> CaptionerState {
        CaptionerState {
            ctx: ctx.shallow_clone(),
            caches: (0..self.cfg.layers)
                .map(|_| LayerCache::default())
                .collect(),
            kv_cache: opts.kv_cache,
        }
    }

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
        let state = self.start_state(ctx, opts);
        decode(
            self,
            state,
            ctx.size()[0],
            ctx.device(),
            opts,
            bos,
            eos,
            pad,
        )
        .expect("the trainer's captioner returns no errors while decoding")
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
