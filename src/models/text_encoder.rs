//! A Transformer text encoder trained from scratch over the shared tokenizer: token
//! embeddings + learned positions + pre-norm encoder layers. It returns the token
//! sequence (for cross-attention) and a mean-pooled global vector. The contrastive model
//! and each generator own separate instances: the models are independent by design.

use crate::nn::transformer::EncoderLayer;
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TextEncoderConfig {
    pub dim: i64,
    pub layers: i64,
    pub heads: i64,
    pub mlp: i64,
    pub max_len: i64,
    #[serde(default)]
    pub dropout: f64,
    /// Set from the tokenizer at build time.
    #[serde(default)]
    pub vocab_size: i64,
}

pub struct TextEncoder {
    pub cfg: TextEncoderConfig,
    emb: nn::Embedding,
    pos: Tensor,
    layers: Vec<EncoderLayer>,
    ln: nn::LayerNorm,
}

pub struct Encoded {
    /// `(B, L, D)` token states.
    pub seq: Tensor,
    /// `(B, L)` true for real tokens.
    pub mask: Tensor,
    /// `(B, D)` mean over real tokens.
    pub pooled: Tensor,
}

impl TextEncoder {
    pub fn new(p: nn::Path, cfg: &TextEncoderConfig) -> Self {
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        TextEncoder {
            cfg: cfg.clone(),
            emb: nn::embedding(
                &p / "tok_emb",
                cfg.vocab_size,
                cfg.dim,
                nn::EmbeddingConfig {
                    ws_init: init,
                    ..Default::default()
                },
            ),
            pos: p.var("pos_emb", &[cfg.max_len, cfg.dim], init),
            layers: (0..cfg.layers)
                .map(|i| {
                    EncoderLayer::new(&p / "layers" / i, cfg.dim, cfg.heads, cfg.mlp, cfg.dropout)
                })
                .collect(),
            ln: nn::layer_norm(&p / "ln", vec![cfg.dim], Default::default()),
        }
    }

    /// Encodes `tokens` `(B, L)`; positions beyond `max_len` are cut off.
    pub fn forward(&self, tokens: &Tensor, pad: i64, train: bool) -> Encoded {
        let l = tokens.size()[1].min(self.cfg.max_len);
        let tokens = tokens.narrow(1, 0, l);
        let mask = tokens.ne(pad);
        let mut x = tokens.apply(&self.emb) + self.pos.narrow(0, 0, l);
        x = x.dropout(self.cfg.dropout, train);
        for layer in &self.layers {
            x = layer.forward(&x, Some(&mask), train);
        }
        let seq = self.ln.forward(&x);
        // `to_dtype`, not `to_kind`: a trace records `to_kind`'s device, which would pin an
        // exported encoder to the CPU it was traced on.
        let m = mask.unsqueeze(-1).to_dtype(Kind::Float, false, false); // (B, L, 1)
        let pooled = (&seq * &m).sum_dim_intlist(1, false, Kind::Float)
            / m.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0);
        Encoded { seq, mask, pooled }
    }
}
