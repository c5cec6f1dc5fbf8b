//! One seed, two outputs (seed 001): a VAE-style shared latent from which an image
//! decoder paints and an autoregressive caption decoder writes. The posterior reads the
//! captioner's image grid; the latent becomes a few memory tokens that both decoders
//! attend to. Seed 001's two failures are fixed by construction: its non-autoregressive
//! caption decoder fell back to stock phrases (here: the captioner's Transformer decoder,
//! token by token), and its MSE image decoder drew dark gradients (here: the t2i
//! generator's FiLM + cross-attention blocks, and a summed pixel likelihood that keeps its
//! weight against the KL).

use super::captioner::{Captioner, CaptionerConfig};
use super::t2i::generator::{Generator, GeneratorConfig};
use super::t2i::vae::kl_to_standard_normal;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnifiedConfig {
    /// Width of the shared latent (seed 001: 1024).
    #[serde(default = "d_latent")]
    pub latent_dim: i64,
    /// Memory tokens the latent is unfolded into for the decoders to attend to.
    #[serde(default = "d_memory")]
    pub memory_tokens: i64,
    /// The image encoder (posterior features) and the caption decoder.
    pub captioner: CaptionerConfig,
    /// The image decoder; its z_dim is the latent width.
    pub generator: GeneratorConfig,
    /// Final KL weight, reached linearly over `beta_warmup` steps.
    #[serde(default = "d_beta")]
    pub beta: f64,
    #[serde(default)]
    pub beta_warmup: u64,
    /// Weight of the caption's summed log-likelihood against the image's.
    #[serde(default = "d_beta")]
    pub caption_weight: f64,
}
fn d_latent() -> i64 {
    1024
}
fn d_memory() -> i64 {
    16
}
fn d_beta() -> f64 {
    1.0
}

pub struct Unified {
    pub cfg: UnifiedConfig,
    pub captioner: Captioner,
    posterior: nn::Linear,
    memory: nn::Linear,
    memory_pos: Tensor,
    cond: nn::Linear,
    generator: Generator,
}

/// The loss terms of a batch, each a scalar.
pub struct UnifiedLoss {
    pub pixel: Tensor,
    pub caption: Tensor,
    pub kl: Tensor,
}

impl Unified {
    pub fn new(p: &nn::Path, cfg: &UnifiedConfig) -> Result<Self> {
        let c = &cfg.captioner;
        if cfg.latent_dim < 1 || cfg.memory_tokens < 1 {
            bail!("model.latent_dim and model.memory_tokens must be positive");
        }
        if c.channels.is_empty() || c.image_size % (1 << c.channels.len()) != 0 {
            bail!(
                "model.captioner.channels: {} halvings do not divide {} px",
                c.channels.len(),
                c.image_size
            );
        }
        let captioner = Captioner::new(&(p / "captioner"), c)?;
        let g = c.image_size >> c.channels.len();
        let mut gcfg = cfg.generator.clone();
        gcfg.z_dim = cfg.latent_dim;
        let generator = Generator::new(p / "generator", &gcfg, c.dim, c.dim);
        if generator.output_side() != c.image_size {
            bail!(
                "model.generator.channels draws {} px images but model.captioner.image_size is {}",
                generator.output_side(),
                c.image_size
            );
        }
        Ok(Unified {
            posterior: nn::linear(
                p / "posterior",
                g * g * c.dim,
                2 * cfg.latent_dim,
                Default::default(),
            ),
            memory: nn::linear(
                p / "memory",
                cfg.latent_dim,
                cfg.memory_tokens * c.dim,
                Default::default(),
            ),
            memory_pos: p.var(
                "memory_pos",
                &[cfg.memory_tokens, c.dim],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            ),
            cond: nn::linear(p / "cond", cfg.latent_dim, c.dim, Default::default()),
            generator,
            captioner,
            cfg: cfg.clone(),
        })
    }

    pub fn image_size(&self) -> i64 {
        self.cfg.captioner.image_size
    }

    /// (μ, log σ²) of q(z | x).
    pub fn posterior(&self, images: &Tensor, train: bool) -> (Tensor, Tensor) {
        let grid = self.captioner.encode(images, train).flatten(1, -1);
        let out = self.posterior.forward(&grid);
        let parts = out.chunk(2, 1);
        (parts[0].shallow_clone(), parts[1].clamp(-10.0, 10.0))
    }

    /// The memory tokens `(B, K, D)` both decoders attend to.
    pub fn memory(&self, z: &Tensor) -> Tensor {
        let b = z.size()[0];
        let (k, d) = (self.cfg.memory_tokens, self.cfg.captioner.dim);
        self.memory.forward(z).view([b, k, d]) + &self.memory_pos
    }

    /// Images in [-1, 1] from latents.
    pub fn paint(&self, z: &Tensor) -> Tensor {
        let mem = self.memory(z);
        let mask = Tensor::ones(
            [z.size()[0], self.cfg.memory_tokens],
            (Kind::Bool, z.device()),
        );
        self.generator
            .forward(z, &self.cond.forward(z), &mem, &mask)
    }

    /// The three terms for images in [-1, 1] and their caption tokens.
    pub fn loss(&self, images: &Tensor, tokens: &Tensor, pad: i64) -> UnifiedLoss {
        let (mu, logvar) = self.posterior(images, true);
        let z = &mu + (&logvar * 0.5).exp() * mu.randn_like();
        // Summed squared error per image (a Gaussian likelihood), as in the t2i VAE.
        let pixel = (self.paint(&z) - images)
            .square()
            .sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float)
            .mean(Kind::Float);
        // The decoder's mean cross-entropy, scaled to a summed log-likelihood per caption.
        let ce = self
            .captioner
            .loss_from_context(&self.memory(&z), tokens, pad, 0.0, 0.0, true);
        let per_caption = tokens.ne(pad).sum(Kind::Float) / tokens.size()[0] as f64 - 1.0;
        UnifiedLoss {
            pixel,
            caption: ce * per_caption.clamp_min(1.0),
            kl: kl_to_standard_normal(&mu, &logvar).mean(Kind::Float),
        }
    }

    /// The training objective at `step` (β warmed up).
    pub fn objective(&self, l: &UnifiedLoss, step: u64) -> Tensor {
        let ramp = if self.cfg.beta_warmup == 0 {
            1.0
        } else {
            (step as f64 / self.cfg.beta_warmup as f64).min(1.0)
        };
        &l.pixel + &l.caption * self.cfg.caption_weight + &l.kl * (self.cfg.beta * ramp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn shapes_and_a_finite_kl() {
        tch::manual_seed(0);
        let yaml = "latent_dim: 24\nmemory_tokens: 3\ncaptioner: {encoder: cnn, channels: [8, 16], dim: 16, layers: 1, heads: 2, mlp: 32, max_len: 16, image_size: 16, vocab_size: 20}\ngenerator: {z_dim: 0, channels: [16, 8], attention_max_side: 8}\n";
        let cfg: UnifiedConfig = serde_yaml::from_str(yaml).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Unified::new(&vs.root(), &cfg).unwrap();
        let x = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu)) * 2 - 1;
        let (mu, logvar) = m.posterior(&x, false);
        assert_eq!(mu.size(), vec![2, 24]);
        assert_eq!(logvar.size(), vec![2, 24]);
        assert_eq!(m.memory(&mu).size(), vec![2, 3, 16]);
        assert_eq!(m.paint(&mu).size(), vec![2, 3, 16, 16]);
        let tokens = Tensor::from_slice(&[1i64, 5, 6, 2, 0, 1, 7, 8, 9, 2]).view([2, 5]);
        let l = m.loss(&x, &tokens, 0);
        for (name, t) in [("pixel", &l.pixel), ("caption", &l.caption), ("kl", &l.kl)] {
            let v = t.double_value(&[]);
            assert!(v.is_finite() && v >= 0.0, "{name}: {v}");
        }
        assert!(m.objective(&l, 0).double_value(&[]).is_finite());
    }
}
