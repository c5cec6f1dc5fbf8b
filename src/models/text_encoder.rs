//! A Transformer text encoder trained from scratch over the shared tokenizer: token
//! embeddings + learned positions + pre-norm encoder layers. It returns the token
//! sequence (for cross-attention) and a mean-pooled global vector. The contrastive model
//! and each generator own separate instances: the models are independent by design.
//! With `local_layers`, the first layers attend only within each token's sentence.

use crate::nn::transformer::EncoderLayer;
use crate::util::draws;
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

/// The default (width 0) stands for "not given": a generator reading an align run's
/// text side takes that run's config instead.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
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
    /// The first `local_layers` layers attend only within each token's sentence.
    ///
    /// Why: a paragraph states each fact in one sentence ("A big pink sun hangs in the
    /// top right"). Learned absolute positions must discover from scratch that the
    /// words to bind sit together; a sentence-local layer binds them from the first
    /// step, and the global layers after it read the bound phrases.
    #[serde(default, skip_serializing_if = "crate::config::is_default")]
    pub local_layers: i64,
    /// Token ids that end a sentence (".", "!", "?"), set from the tokenizer at build
    /// time when `local_layers` > 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sentence_ends: Vec<i64>,
}

impl TextEncoderConfig {
    /// Fills in what comes from the tokenizer: the vocabulary size and, for
    /// sentence-local layers, the ids that end a sentence.
    pub fn set_tokenizer(
        &mut self,
        tok: &crate::data::tokenizer::TextTokenizer,
    ) -> anyhow::Result<()> {
        self.vocab_size = tok.vocab_size() as i64;
        if self.local_layers > 0 {
            self.sentence_ends = tok.sentence_end_ids();
            if self.sentence_ends.is_empty() {
                anyhow::bail!(
                    "text.local_layers needs sentence ends, but the tokenizer has no \".\", \"!\" or \"?\" token"
                );
            }
        }
        if self.local_layers > self.layers {
            anyhow::bail!(
                "text.local_layers is {}, but the encoder has {} layers",
                self.local_layers,
                self.layers
            );
        }
        Ok(())
    }
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
        x = draws::dropout(&x, self.cfg.dropout, train);
        let local = (self.cfg.local_layers > 0).then(|| self.sentence_mask(&tokens, &mask));
        for (i, layer) in self.layers.iter().enumerate() {
            let m = match &local {
                Some(local) if (i as i64) < self.cfg.local_layers => local,
                _ => &mask,
            };
            x = layer.forward(&x, Some(m), train);
        }
        let seq = self.ln.forward(&x);
        // `to_dtype`, not `to_kind`: a trace records `to_kind`'s device, which would pin an
        // exported encoder to the CPU it was traced on.
        let m = mask.unsqueeze(-1).to_dtype(Kind::Float, false, false); // (B, L, 1)
        let pooled = (&seq * &m).sum_dim_intlist(1, false, Kind::Float)
            / m.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0);
        Encoded { seq, mask, pooled }
    }

    /// `(B, L, L)`: true where query token i may see key token j, i.e. j is a real
    /// token of i's sentence (a sentence's closing mark belongs to it). Every token also
    /// sees itself, so no row is empty (padding included).
    fn sentence_mask(&self, tokens: &Tensor, mask: &Tensor) -> Tensor {
        let l = tokens.size()[1];
        let mut ends = tokens.zeros_like().to_kind(Kind::Bool);
        for &id in &self.cfg.sentence_ends {
            ends = ends.logical_or(&tokens.eq(id));
        }
        let ends = ends.to_kind(Kind::Int64);
        let sentence = ends.cumsum(1, Kind::Int64) - &ends; // (B, L)
        let same = sentence.unsqueeze(2).eq_tensor(&sentence.unsqueeze(1));
        let eye = Tensor::eye(l, (Kind::Bool, tokens.device())).unsqueeze(0);
        same.logical_and(&mask.unsqueeze(1)).logical_or(&eye)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn a_sentence_local_layer_reads_each_sentence_alone() {
        // Token 9 ends a sentence; 0 pads.
        let cfg = TextEncoderConfig {
            dim: 16,
            layers: 1,
            heads: 2,
            mlp: 32,
            max_len: 12,
            dropout: 0.0,
            vocab_size: 12,
            local_layers: 1,
            sentence_ends: vec![9],
        };
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let enc = TextEncoder::new(vs.root(), &cfg);
        let a = Tensor::from_slice(&[3i64, 4, 9, 5, 6, 9, 0, 0]).view([1, 8]);
        // The second sentence changed: the first one's states must not move.
        let b = Tensor::from_slice(&[3i64, 4, 9, 7, 8, 2, 9, 0]).view([1, 8]);
        let (ea, eb) = (enc.forward(&a, 0, false), enc.forward(&b, 0, false));
        let first = |e: &Encoded| e.seq.narrow(1, 0, 3);
        assert!(first(&ea).allclose(&first(&eb), 1e-6, 1e-6, false));
        // A global encoder (no local layers) lets them see each other.
        let mut global = cfg.clone();
        global.local_layers = 0;
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let enc = TextEncoder::new(vs.root(), &global);
        let (ea, eb) = (enc.forward(&a, 0, false), enc.forward(&b, 0, false));
        assert!(!first(&ea).allclose(&first(&eb), 1e-6, 1e-6, false));
        assert!(
            ea.seq.isfinite().all().int64_value(&[]) == 1,
            "padding rows stay finite"
        );
    }
}
