//! Multi-head attention (Vaswani et al. 2017) over libtorch's fused
//! `scaled_dot_product_attention`, with a key/value cache for autoregressive decoding.

use crate::util::draws;
use tch::{nn, Tensor};

/// Keys and values already computed, `(B, H, S, Dh)` each.
#[derive(Default)]
pub struct KvCache {
    pub k: Option<Tensor>,
    pub v: Option<Tensor>,
}

impl KvCache {
    /// A cache of the rows `index`, in that order (beam search reorders hypotheses
    /// every step).
    pub fn selected(&self, index: &Tensor) -> KvCache {
        KvCache {
            k: self.k.as_ref().map(|k| k.index_select(0, index)),
            v: self.v.as_ref().map(|v| v.index_select(0, index)),
        }
    }
}

#[derive(Debug)]
pub struct Attention {
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    o: nn::Linear,
    heads: i64,
    dropout: f64,
}

impl Attention {
    /// `kv_dim` is the width of what is attended to (the same as `dim` for self-attention).
    pub fn new(p: nn::Path, dim: i64, kv_dim: i64, heads: i64, dropout: f64) -> Self {
        assert!(
            dim % heads == 0,
            "width {dim} must divide into {heads} heads"
        );
        let k = nn::linear(&p / "k_proj", kv_dim, dim, Default::default());
        // A key bias adds the same q·b to every score of a query, which the softmax
        // cancels: its true gradient is zero, and AdamW would step on rounding noise.
        // Frozen at its initial value (kept in the checkpoint, so older runs load).
        if let Some(b) = &k.bs {
            let _ = b.set_requires_grad(false);
        }
        Attention {
            q: nn::linear(&p / "q_proj", dim, dim, Default::default()),
            k,
            v: nn::linear(&p / "v_proj", kv_dim, dim, Default::default()),
            o: nn::linear(&p / "out_proj", dim, dim, Default::default()),
            heads,
            dropout,
        }
    }

    /// `(B, T, C)` → `(B, H, T, Dh)`. Only the channel split is a constant, so a traced
    /// module (TorchScript export) keeps batch and length free.
    fn split(&self, x: &Tensor) -> Tensor {
        let c = x.size()[2];
        x.unflatten(2, [self.heads, c / self.heads]).transpose(1, 2)
    }

    /// The keys and values of a context `(B, S, Ckv)`, `(B, H, S, Dh)` each.
    pub fn context_kv(&self, ctx: &Tensor) -> (Tensor, Tensor) {
        (
            self.split(&ctx.apply(&self.k)),
            self.split(&ctx.apply(&self.v)),
        )
    }

    /// Attention of `x` `(B, T, C)` to keys and values computed already (`mask`, when
    /// given, broadcasts to `(B, H, T, S)`; true = attend).
    pub fn attend(&self, x: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let q = self.split(&x.apply(&self.q));
        let y = Tensor::scaled_dot_product_attention(
            &q,
            k,
            v,
            mask.map(|m| m.shallow_clone()),
            0.0,
            false,
            None,
            false,
        );
        y.transpose(1, 2).flatten(2, 3).apply(&self.o)
    }

    /// One self-attention decoding step over a cache of fixed length M, all in tensors
    /// (what the TorchScript export traces): `x` `(B, 1, C)` at position `pos` (one
    /// int64), caches `(B, H, M, Dh)` into which this step's keys and values are written
    /// at `pos`, in place (a traced module returns one tensor, so the cache is updated
    /// where it lies); `key_positions` is `arange(M)`.
    pub fn step_fixed_cache(
        &self,
        x: &Tensor,
        k_cache: &Tensor,
        v_cache: &Tensor,
        pos: &Tensor,
        key_positions: &Tensor,
    ) -> Tensor {
        let (mut k, mut v) = (k_cache.shallow_clone(), v_cache.shallow_clone());
        let _ = k.index_copy_(2, pos, &self.split(&x.apply(&self.k)));
        let _ = v.index_copy_(2, pos, &self.split(&x.apply(&self.v)));
        // Slots after `pos` hold zeros (or stale rows): hidden.
        let mask = key_positions.le_tensor(pos).view([1, 1, 1, -1]);
        self.attend(x, &k, &v, Some(&mask))
    }

    /// Self-attention when `context` is None, else cross-attention to `context`
    /// `(B, S, Ckv)`. With a cache: self-attention appends the new keys; cross-attention
    /// computes the context's keys once and reuses them.
    pub fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        causal: bool,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Tensor {
        self.forward_masked(x, context, causal, cache, None, train)
    }

    /// As [`Attention::forward`], with `key_mask` (true = attend): `(B, S)` hides padding
    /// from every query; `(B, T, S)` says, per query, which keys it may see.
    pub fn forward_masked(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        causal: bool,
        cache: Option<&mut KvCache>,
        key_mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let t = x.size()[1];
        let q = self.split(&x.apply(&self.q));
        let (k, v, had_past) = match (context, cache) {
            (None, None) => (
                self.split(&x.apply(&self.k)),
                self.split(&x.apply(&self.v)),
                false,
            ),
            (None, Some(cache)) => {
                let (k_new, v_new) = (self.split(&x.apply(&self.k)), self.split(&x.apply(&self.v)));
                let had_past = cache.k.is_some();
                let (k, v) = match (&cache.k, &cache.v) {
                    (Some(pk), Some(pv)) => {
                        (Tensor::cat(&[pk, &k_new], 2), Tensor::cat(&[pv, &v_new], 2))
                    }
                    _ => (k_new, v_new),
                };
                cache.k = Some(k.shallow_clone());
                cache.v = Some(v.shallow_clone());
                (k, v, had_past)
            }
            (Some(ctx), None) => (
                self.split(&ctx.apply(&self.k)),
                self.split(&ctx.apply(&self.v)),
                false,
            ),
            (Some(ctx), Some(cache)) => {
                if cache.k.is_none() {
                    cache.k = Some(self.split(&ctx.apply(&self.k)));
                    cache.v = Some(self.split(&ctx.apply(&self.v)));
                }
                (
                    cache.k.as_ref().expect("filled just above").shallow_clone(),
                    cache.v.as_ref().expect("filled just above").shallow_clone(),
                    false,
                )
            }
        };
        // With a past, new queries sit at the end: a causal mask is only needed when
        // several new tokens arrive at once, which decoding never does after the prefill.
        let is_causal = causal && !had_past && t > 1;
        let mut mask = if causal && had_past && t > 1 {
            let s = k.size()[2];
            Some(Tensor::ones([t, s], (tch::Kind::Bool, x.device())).tril(s - t))
        } else {
            None
        };
        if let Some(km) = key_mask {
            let km = match km.dim() {
                3 => km.unsqueeze(1),              // (B, 1, T, S): broadcast over heads
                _ => km.unsqueeze(1).unsqueeze(1), // (B, 1, 1, S): over heads and queries
            };
            mask = Some(match mask {
                Some(m) => m.logical_and(&km),
                None => km,
            });
        }
        let p = if train { self.dropout } else { 0.0 };
        let y = if p > 0.0 {
            dropped_attention(&q, &k, &v, mask, p, is_causal)
        } else {
            Tensor::scaled_dot_product_attention(&q, &k, &v, mask, 0.0, is_causal, None, false)
        };
        y.transpose(1, 2).flatten(2, 3).apply(&self.o) // (B, T, C)
    }
}

/// Attention with dropout on the weights, written out so the mask is a keyed draw
/// ([`draws::dropout`]): the fused kernel draws from the generator, which would make a
/// data-parallel rank's masks differ from one process's.
fn dropped_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<Tensor>,
    p: f64,
    causal: bool,
) -> Tensor {
    let (t, s) = (q.size()[2], k.size()[2]);
    let scale = 1.0 / (q.size()[3] as f64).sqrt();
    let mut scores = q.matmul(&k.transpose(-2, -1)) * scale;
    if causal {
        let keep = Tensor::ones([t, s], (tch::Kind::Bool, q.device())).tril(s - t);
        scores = scores.masked_fill(&keep.logical_not(), f64::NEG_INFINITY);
    }
    if let Some(m) = mask {
        scores = scores.masked_fill(&m.logical_not(), f64::NEG_INFINITY);
    }
    draws::dropout(&scores.softmax(-1, scores.kind()), p, true).matmul(v)
}
