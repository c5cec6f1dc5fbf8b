//! The contrastive image–text embedding (CLIP, Radford et al. 2021): a CNN
//! image tower and a Transformer text tower, projected and L2-normalised, trained with
//! symmetric InfoNCE and a learnable temperature (initialised at 0.07, the logit scale
//! clamped at 100). Trained on the training split only, separately from every generator,
//! it is also the evaluator behind CLIP-style scores, R-precision and FD/KID-own.

use super::text_encoder::{TextEncoder, TextEncoderConfig};
use crate::nn::conv::ConvEncoder;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClipConfig {
    pub image_size: i64,
    /// Stride-2 stages of the image tower; the last grid is flattened, not pooled, so
    /// the embedding keeps where things are.
    pub channels: Vec<i64>,
    /// Width of the image features (the space of FD-own / KID-own).
    pub feature_dim: i64,
    pub embed_dim: i64,
    pub text: TextEncoderConfig,
}

pub struct Clip {
    pub cfg: ClipConfig,
    conv: ConvEncoder,
    img_fc: nn::Linear,
    img_proj: nn::Linear,
    pub text: TextEncoder,
    txt_proj: nn::Linear,
    logit_scale: Tensor,
}

pub fn l2_normalise(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [-1], true).clamp_min(1e-8)
}

impl Clip {
    pub fn new(p: &nn::Path, cfg: &ClipConfig) -> Result<Self> {
        let down = 1i64 << cfg.channels.len();
        if cfg.channels.is_empty() || cfg.image_size % down != 0 {
            bail!(
                "clip: image_size {} must be divisible by 2^{}",
                cfg.image_size,
                cfg.channels.len()
            );
        }
        let g = cfg.image_size / down;
        let flat = cfg.channels.last().expect("channels checked non-empty") * g * g;
        Ok(Clip {
            cfg: cfg.clone(),
            conv: ConvEncoder::new(p / "image" / "cnn", &cfg.channels),
            img_fc: nn::linear(
                p / "image" / "fc",
                flat,
                cfg.feature_dim,
                Default::default(),
            ),
            img_proj: nn::linear(
                p / "image" / "proj",
                cfg.feature_dim,
                cfg.embed_dim,
                Default::default(),
            ),
            text: TextEncoder::new(p / "text", &cfg.text),
            txt_proj: nn::linear(
                p / "text_proj",
                cfg.text.dim,
                cfg.embed_dim,
                Default::default(),
            ),
            logit_scale: p.var("logit_scale", &[], nn::Init::Const((1.0f64 / 0.07).ln())),
        })
    }

    /// Image features `(B, F)` before the projection (the FD/KID space).
    pub fn image_features(&self, images: &Tensor, train: bool) -> Tensor {
        let h = self.conv.forward(images, train).flatten(1, -1);
        self.img_fc.forward(&h).gelu("tanh")
    }

    /// Unit-norm image embeddings `(B, E)`.
    pub fn embed_images(&self, images: &Tensor, train: bool) -> Tensor {
        self.project_features(&self.image_features(images, train))
    }

    /// Image features → unit-norm embeddings.
    pub fn project_features(&self, features: &Tensor) -> Tensor {
        l2_normalise(&self.img_proj.forward(features))
    }

    /// Unit-norm text embeddings `(B, E)`.
    pub fn embed_texts(&self, tokens: &Tensor, pad: i64, train: bool) -> Tensor {
        let enc = self.text.forward(tokens, pad, train);
        l2_normalise(&self.txt_proj.forward(&enc.pooled))
    }

    pub fn logit_scale(&self) -> Tensor {
        self.logit_scale.clamp_max(100f64.ln()).exp()
    }

    /// Symmetric InfoNCE over the batch: each image's caption is its positive.
    pub fn loss(&self, images: &Tensor, tokens: &Tensor, pad: i64, train: bool) -> Tensor {
        // Over the global batch in a data-parallel job (every rank's pairs are negatives).
        let i = crate::distributed::gather_batch(&self.embed_images(images, train));
        let t = crate::distributed::gather_batch(&self.embed_texts(tokens, pad, train));
        let logits = i.matmul(&t.tr()) * self.logit_scale();
        let target = Tensor::arange(logits.size()[0], (Kind::Int64, logits.device()));
        (logits.cross_entropy_for_logits(&target) + logits.tr().cross_entropy_for_logits(&target))
            / 2.0
    }
}
