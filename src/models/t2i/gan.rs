//! The conditional GAN of the Reverse Image Caption competition, DF-GAN-style (Tao et al. 2022): the shared
//! [`super::generator::Generator`] with text-conditioned fusion blocks, a discriminator
//! D(x, s) that judges an image together with its sentence vector, hinge losses with
//! matching-aware training (a real image with a mismatched caption is fake, GAN-INT-CLS,
//! Reed et al. 2016) and the matching-aware gradient penalty (MA-GP) on real, matching
//! pairs. Interpolated sentence vectors (INT) are an option.

use crate::util::draws;
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GanConfig {
    /// Discriminator channels after each stride-2 stage from the full image.
    pub disc_channels: Vec<i64>,
    /// Discriminator learning rate = train.lr × this (DF-GAN: 4e-4 vs 1e-4).
    #[serde(default = "d_lr_d")]
    pub lr_d_scale: f64,
    /// MA-GP weight k and power p: k·E‖∇_{x,s} D(x, s)‖^p on real matching pairs.
    #[serde(default = "d_gp_weight")]
    pub gp_weight: f64,
    #[serde(default = "d_gp_power")]
    pub gp_power: f64,
    /// Also train G on interpolated sentence vectors (GAN-INT).
    #[serde(default)]
    pub interpolate: bool,
    /// Sampling: noise values beyond ±this are redrawn (the truncation trick); 0 = off.
    #[serde(default)]
    pub truncation: f64,
}
fn d_lr_d() -> f64 {
    4.0
}
fn d_gp_weight() -> f64 {
    2.0
}
fn d_gp_power() -> f64 {
    6.0
}

/// D(x, s): stride-2 conv stages (spectral norm is left out: MA-GP regularises D) to a
/// 4×4 map, the sentence vector tiled onto it, and a conv head to one score per pair.
#[derive(Debug)]
pub struct Discriminator {
    convs: Vec<nn::Conv2D>,
    text: nn::Linear,
    joint: nn::Conv2D,
    head: nn::Conv2D,
}

impl Discriminator {
    pub fn new(p: nn::Path, cfg: &GanConfig, image_size: i64, cond: i64) -> Self {
        let mut cin = 3;
        let convs = cfg
            .disc_channels
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let conv = nn::conv2d(
                    &p / "convs" / i,
                    cin,
                    c,
                    4,
                    nn::ConvConfig {
                        stride: 2,
                        padding: 1,
                        ..Default::default()
                    },
                );
                cin = c;
                conv
            })
            .collect();
        let side = image_size >> cfg.disc_channels.len();
        let t = 64.min(cin);
        Discriminator {
            convs,
            text: nn::linear(&p / "text", cond, t, Default::default()),
            joint: nn::conv2d(
                &p / "joint",
                cin + t,
                cin,
                3,
                nn::ConvConfig {
                    padding: 1,
                    ..Default::default()
                },
            ),
            head: nn::conv2d(&p / "head", cin, 1, side, Default::default()),
        }
    }

    /// One score per (image, sentence vector) pair: `(B,)`.
    pub fn forward(&self, x: &Tensor, s: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for c in &self.convs {
            h = h.apply(c).leaky_relu_(); // in place: activations are not reused
        }
        let (b, _, hh, ww) = h.size4().expect("images are (N, C, H, W)");
        let t = self
            .text
            .forward(s)
            .leaky_relu()
            .view([b, -1, 1, 1])
            .expand([b, -1, hh, ww], false);
        Tensor::cat(&[h, t], 1)
            .apply(&self.joint)
            .leaky_relu()
            .apply(&self.head)
            .view([b])
    }
}

/// The discriminator's hinge loss with matching-aware terms and MA-GP.
/// `fake` must already be detached; `s` is the (detached) sentence vector of `real`.
pub fn discriminator_loss(
    d: &Discriminator,
    cfg: &GanConfig,
    real: &Tensor,
    fake: &Tensor,
    s: &Tensor,
) -> Tensor {
    let real = real.detach().set_requires_grad(cfg.gp_weight > 0.0);
    let s = s.detach().set_requires_grad(cfg.gp_weight > 0.0);
    let d_real = d.forward(&real, &s);
    let d_fake = d.forward(fake, &s);
    // The same images with the next row's caption: a mismatched pair.
    let d_mis = d.forward(&real, &crate::distributed::roll_global(&s, 1));
    let hinge = (d_real.neg() + 1.0).relu().mean(Kind::Float)
        + ((d_fake + 1.0).relu().mean(Kind::Float) + (d_mis + 1.0).relu().mean(Kind::Float)) * 0.5;
    if cfg.gp_weight <= 0.0 {
        return hinge;
    }
    let grads = Tensor::run_backward(&[d_real.sum(Kind::Float)], &[&real, &s], true, true);
    let b = real.size()[0];
    let norm = Tensor::cat(&[grads[0].view([b, -1]), grads[1].view([b, -1])], 1)
        .square()
        .sum_dim_intlist(1, false, Kind::Float)
        .sqrt();
    hinge + norm.pow_tensor_scalar(cfg.gp_power).mean(Kind::Float) * cfg.gp_weight
}

/// The generator's hinge loss: −D(G(z, s), s).
pub fn generator_loss(d: &Discriminator, fake: &Tensor, s: &Tensor) -> Tensor {
    -d.forward(fake, s).mean(Kind::Float)
}

/// Standard normal noise with values beyond ±`limit` redrawn (0 = plain normal).
pub fn truncated_noise(n: i64, dim: i64, limit: f64, device: tch::Device) -> Tensor {
    let mut z = draws::normal(&[n, dim], device);
    if limit > 0.0 {
        for _ in 0..16 {
            let out = z.abs().gt(limit);
            if !bool::try_from(out.any()).unwrap_or(false) {
                break;
            }
            z = z.randn_like().where_self(&out, &z);
        }
        z = z.clamp(-limit, limit);
    }
    z
}

/// The GAN as a text → image body: the shared generator and DF-GAN's discriminator,
/// trained in turn through [`super::TextToImage::gan_losses`].
pub struct GanBody {
    pub(super) generator: super::generator::Generator,
    pub(super) discriminator: Discriminator,
    pub(super) cfg: GanConfig,
}

impl GanBody {
    pub(super) fn new(p: &nn::Path, cfg: &super::T2IConfig) -> anyhow::Result<Self> {
        let g = super::need(&cfg.gan, "gan", "gan")?;
        let n = g.disc_channels.len() as u32;
        if g.disc_channels.is_empty() || cfg.image_size % (1 << n) != 0 {
            anyhow::bail!(
                "model.gan.disc_channels: {} stride-2 stages do not divide {} px",
                n,
                cfg.image_size
            );
        }
        let generator = super::checked_generator(p, cfg, "gan")?;
        let discriminator =
            Discriminator::new(p / "discriminator", g, cfg.image_size, cfg.text.dim);
        Ok(GanBody {
            generator,
            discriminator,
            cfg: g.clone(),
        })
    }
}

impl super::Body for GanBody {
    fn loss_terms(
        &self,
        _images: &Tensor,
        _c: super::Condition,
        _step: u64,
    ) -> anyhow::Result<super::BodyLoss> {
        anyhow::bail!(
            "a GAN has two losses (discriminator, generator): train it through gan_losses"
        )
    }
    fn sample(&self, c: &super::Condition, z: &Tensor) -> Tensor {
        self.generator.forward(z, &c.global, &c.tokens, &c.mask)
    }
    fn generator(&self) -> Option<&super::generator::Generator> {
        Some(&self.generator)
    }
    fn gan(&self) -> Option<&GanBody> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_noise_stays_in_bounds() {
        tch::manual_seed(0);
        let z = truncated_noise(256, 16, 0.5, tch::Device::Cpu);
        assert!(z.abs().max().double_value(&[]) <= 0.5);
        assert_eq!(z.size(), vec![256, 16]);
    }
}
