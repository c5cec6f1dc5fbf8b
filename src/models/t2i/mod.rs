//! Text → image (seed 000 §3, seed 004): a text encoder trained jointly with a
//! conditional generator. `vae` is the demo default (stable and fast on a CPU).

pub mod generator;
pub mod vae;

use super::text_encoder::{TextEncoder, TextEncoderConfig};
use anyhow::{bail, Result};
use generator::{Generator, GeneratorConfig};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};
use vae::{vae_terms, Posterior};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum T2IKind {
    Vae,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct T2IConfig {
    pub kind: T2IKind,
    pub image_size: i64,
    pub text: TextEncoderConfig,
    pub generator: GeneratorConfig,
    /// VAE: channels of the posterior's conv encoder.
    #[serde(default = "d_enc")]
    pub encoder_channels: Vec<i64>,
    /// VAE: final weight of the KL term, reached linearly over `beta_warmup` steps.
    #[serde(default = "d_one")]
    pub beta: f64,
    #[serde(default)]
    pub beta_warmup: u64,
}
fn d_enc() -> Vec<i64> {
    vec![32, 64, 128, 128]
}
fn d_one() -> f64 {
    1.0
}

pub struct TextToImage {
    pub cfg: T2IConfig,
    pub text: TextEncoder,
    pub generator: Generator,
    posterior: Option<Posterior>,
}

/// The caption as the generator sees it: global vector, tokens, token mask.
pub struct Condition {
    pub global: Tensor,
    pub tokens: Tensor,
    pub mask: Tensor,
}

impl Condition {
    /// Repeats each caption's condition `n` times (several noises per caption).
    pub fn repeat(&self, n: i64) -> Condition {
        Condition {
            global: self.global.repeat_interleave_self_int(n, 0, None),
            tokens: self.tokens.repeat_interleave_self_int(n, 0, None),
            mask: self.mask.repeat_interleave_self_int(n, 0, None),
        }
    }
}

impl TextToImage {
    pub fn new(p: &nn::Path, cfg: &T2IConfig) -> Result<Self> {
        if cfg.text.vocab_size <= 0 {
            bail!("t2i: vocab_size is not set (it comes from the tokenizer)");
        }
        let text = TextEncoder::new(p / "text", &cfg.text);
        let generator = Generator::new(p / "generator", &cfg.generator, cfg.text.dim, cfg.text.dim);
        if generator.output_side() != cfg.image_size {
            bail!(
                "model.generator.channels has {} upsampling blocks: images of {} px, but model.image_size is {}",
                cfg.generator.channels.len(),
                generator.output_side(),
                cfg.image_size
            );
        }
        let posterior = match cfg.kind {
            T2IKind::Vae => Some(Posterior::new(
                p / "posterior",
                &cfg.encoder_channels,
                cfg.image_size,
                cfg.text.dim,
                cfg.generator.z_dim,
            )),
        };
        Ok(TextToImage {
            cfg: cfg.clone(),
            text,
            generator,
            posterior,
        })
    }

    pub fn condition(&self, tokens: &Tensor, pad: i64, train: bool) -> Condition {
        let e = self.text.forward(tokens, pad, train);
        Condition {
            global: e.pooled,
            tokens: e.seq,
            mask: e.mask,
        }
    }

    /// The training loss of a batch (images in [-1, 1], caption tokens); `step` drives
    /// the KL warm-up.
    pub fn loss(&self, images: &Tensor, tokens: &Tensor, pad: i64, step: u64) -> Tensor {
        let c = self.condition(tokens, pad, true);
        match self.cfg.kind {
            T2IKind::Vae => {
                let post = self.posterior.as_ref().expect("vae has a posterior");
                let (pixel, kl) =
                    vae_terms(post, &self.generator, images, &c.global, &c.tokens, &c.mask);
                let ramp = if self.cfg.beta_warmup == 0 {
                    1.0
                } else {
                    (step as f64 / self.cfg.beta_warmup as f64).min(1.0)
                };
                let beta = self.cfg.beta * ramp;
                pixel.mean(Kind::Float) + kl.mean(Kind::Float) * beta
            }
        }
    }

    /// Samples one image per row of `cond` with the given noise `(B, z)`.
    pub fn sample(&self, cond: &Condition, z: &Tensor) -> Tensor {
        tch::no_grad(|| {
            self.generator
                .forward(z, &cond.global, &cond.tokens, &cond.mask)
        })
    }

    pub fn noise(&self, n: i64, device: Device) -> Tensor {
        self.generator.noise(n, device)
    }
}
