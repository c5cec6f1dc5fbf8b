//! Pre-norm Transformer layers (Xiong et al. 2020): encoder layers (self-attention + MLP)
//! and decoder layers (causal self-attention + cross-attention + MLP).

use super::attention::{Attention, KvCache};
use crate::util::draws;
use tch::{nn, nn::Module, Tensor};

#[derive(Debug)]
pub struct Mlp {
    fc1: nn::Linear,
    fc2: nn::Linear,
    dropout: f64,
}

impl Mlp {
    pub fn new(p: nn::Path, dim: i64, hidden: i64, dropout: f64) -> Self {
        Mlp {
            fc1: nn::linear(&p / "fc1", dim, hidden, Default::default()),
            fc2: nn::linear(&p / "fc2", hidden, dim, Default::default()),
            dropout,
        }
    }
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let h = x.apply(&self.fc1).gelu("tanh").apply(&self.fc2);
        draws::dropout(&h, self.dropout, train)
    }
}

fn ln(p: nn::Path, dim: i64) -> nn::LayerNorm {
    nn::layer_norm(p, vec![dim], Default::default())
}

#[derive(Debug)]
pub struct EncoderLayer {
    ln1: nn::LayerNorm,
    attn: Attention,
    ln2: nn::LayerNorm,
    mlp: Mlp,
    dropout: f64,
}

impl EncoderLayer {
    pub fn new(p: nn::Path, dim: i64, heads: i64, hidden: i64, dropout: f64) -> Self {
        EncoderLayer {
            ln1: ln(&p / "ln1", dim),
            attn: Attention::new(&p / "attn", dim, dim, heads, dropout),
            ln2: ln(&p / "ln2", dim),
            mlp: Mlp::new(&p / "mlp", dim, hidden, dropout),
            dropout,
        }
    }
    /// `key_mask` `(B, T)`: true for real tokens, false for padding.
    pub fn forward(&self, x: &Tensor, key_mask: Option<&Tensor>, train: bool) -> Tensor {
        let h = self
            .attn
            .forward_masked(&self.ln1.forward(x), None, false, None, key_mask, train);
        let x = x + draws::dropout(&h, self.dropout, train);
        &x + self.mlp.forward(&self.ln2.forward(&x), train)
    }
}

/// Caches of one decoder layer: its self-attention and its cross-attention.
#[derive(Default)]
pub struct LayerCache {
    pub self_attn: KvCache,
    pub cross_attn: KvCache,
}

#[derive(Debug)]
pub struct DecoderLayer {
    ln1: nn::LayerNorm,
    self_attn: Attention,
    ln2: nn::LayerNorm,
    cross_attn: Attention,
    ln3: nn::LayerNorm,
    mlp: Mlp,
    dropout: f64,
}

impl DecoderLayer {
    pub fn new(p: nn::Path, dim: i64, ctx_dim: i64, heads: i64, hidden: i64, dropout: f64) -> Self {
        DecoderLayer {
            ln1: ln(&p / "ln1", dim),
            self_attn: Attention::new(&p / "self_attn", dim, dim, heads, dropout),
            ln2: ln(&p / "ln2", dim),
            cross_attn: Attention::new(&p / "cross_attn", dim, ctx_dim, heads, dropout),
            ln3: ln(&p / "ln3", dim),
            mlp: Mlp::new(&p / "mlp", dim, hidden, dropout),
            dropout,
        }
    }

    /// The cross-attention's keys and values of a context, computed once per image.
    pub fn context_kv(&self, ctx: &Tensor) -> (Tensor, Tensor) {
        self.cross_attn.context_kv(ctx)
    }

    /// One decoding step with explicit fixed-length caches (see
    /// [`Attention::step_fixed_cache`]; the self-attention caches are updated in place).
    pub fn step_fixed_cache(
        &self,
        x: &Tensor,
        self_kv: (&Tensor, &Tensor),
        cross_kv: (&Tensor, &Tensor),
        pos: &Tensor,
        key_positions: &Tensor,
    ) -> Tensor {
        let h = self.self_attn.step_fixed_cache(
            &self.ln1.forward(x),
            self_kv.0,
            self_kv.1,
            pos,
            key_positions,
        );
        let x = x + h;
        let x = &x
            + self
                .cross_attn
                .attend(&self.ln2.forward(&x), cross_kv.0, cross_kv.1, None);
        &x + self.mlp.forward(&self.ln3.forward(&x), false)
    }

    pub fn forward(
        &self,
        x: &Tensor,
        ctx: &Tensor,
        cache: Option<&mut LayerCache>,
        train: bool,
    ) -> Tensor {
        let (sc, cc) = match cache {
            Some(c) => (Some(&mut c.self_attn), Some(&mut c.cross_attn)),
            None => (None, None),
        };
        let h = self
            .self_attn
            .forward(&self.ln1.forward(x), None, true, sc, train);
        let x = x + draws::dropout(&h, self.dropout, train);
        let h = self
            .cross_attn
            .forward(&self.ln2.forward(&x), Some(ctx), false, cc, train);
        let x = x + draws::dropout(&h, self.dropout, train);
        &x + self.mlp.forward(&self.ln3.forward(&x), train)
    }
}
