//! The conditional VAE (Kingma & Welling 2014, Sohn et al. 2015):
//! q(z | x, t) from a conv encoder and the caption vector, p(x | z, t) from the shared
//! [`Generator`]; loss = pixel term + β·KL to N(0, I), with β warmed up.

use super::generator::Generator;
use crate::nn::conv::ConvEncoder;
use crate::util::draws;
use tch::{nn, nn::Module, Kind, Tensor};

pub struct Posterior {
    conv: ConvEncoder,
    fc: nn::Linear,
}

impl Posterior {
    pub fn new(p: nn::Path, channels: &[i64], image_size: i64, cond: i64, z_dim: i64) -> Self {
        let g = image_size >> channels.len();
        Posterior {
            conv: ConvEncoder::new(&p / "cnn", channels),
            fc: nn::linear(
                &p / "fc",
                channels.last().expect("channels checked non-empty") * g * g + cond,
                2 * z_dim,
                Default::default(),
            ),
        }
    }

    /// (μ, log σ²) of q(z | x, t).
    pub fn forward(&self, x: &Tensor, cond: &Tensor) -> (Tensor, Tensor) {
        let h = self.conv.forward(x, true).flatten(1, -1); // only used while training
        let out = self.fc.forward(&Tensor::cat(&[&h, cond], 1));
        let parts = out.chunk(2, 1);
        (parts[0].shallow_clone(), parts[1].clamp(-10.0, 10.0))
    }
}

/// KL(q ‖ N(0, I)) per sample, summed over latent dimensions.
pub fn kl_to_standard_normal(mu: &Tensor, logvar: &Tensor) -> Tensor {
    ((mu.square() + logvar.exp() - logvar - 1.0) * 0.5).sum_dim_intlist(1, false, Kind::Float)
}

/// The VAE loss pieces for a batch: (pixel loss, KL), both per image, and the
/// reconstruction they were measured on.
pub fn vae_terms(
    posterior: &Posterior,
    generator: &Generator,
    x: &Tensor,
    cond: &Tensor,
    tokens: &Tensor,
    mask: &Tensor,
) -> (Tensor, Tensor, Tensor) {
    let (mu, logvar) = posterior.forward(x, cond);
    let z = &mu + (&logvar * 0.5).exp() * draws::normal_like(&mu);
    let recon = generator.forward(&z, cond, tokens, mask);
    // Summed squared error per image (a Gaussian decoder with σ² = ½ on [-1, 1]),
    // so the KL keeps its natural weight against it.
    let pixel = (&recon - x)
        .square()
        .sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float);
    (pixel, kl_to_standard_normal(&mu, &logvar), recon)
}

/// The VAE as a text → image body: the generator is the decoder p(x | z, t), the
/// posterior q(z | x, t) trains it, and samples draw z ~ N(0, I).
pub struct VaeBody {
    generator: Generator,
    posterior: Posterior,
    beta: f64,
    beta_warmup: u64,
    /// `model.align.match_prior`: paint a prior sample for the matching term.
    paint_prior: bool,
    z_dim: i64,
}

impl VaeBody {
    pub(super) fn new(p: &nn::Path, cfg: &super::T2IConfig) -> anyhow::Result<Self> {
        let z_dim = super::need(&cfg.generator, "vae", "generator")?.z_dim;
        // The generator first, then the posterior: the order the variables are drawn in.
        let generator = super::checked_generator(p, cfg, "vae")?;
        let posterior = Posterior::new(
            p / "posterior",
            &cfg.encoder_channels,
            cfg.image_size,
            cfg.text.dim,
            z_dim,
        );
        Ok(VaeBody {
            generator,
            posterior,
            beta: cfg.beta,
            beta_warmup: cfg.beta_warmup,
            paint_prior: cfg.align.as_ref().is_some_and(|a| a.match_prior),
            z_dim,
        })
    }
}

impl super::Body for VaeBody {
    fn loss_terms(
        &self,
        images: &Tensor,
        c: super::Condition,
        step: u64,
    ) -> anyhow::Result<super::BodyLoss> {
        let (pixel, kl, recon) = vae_terms(
            &self.posterior,
            &self.generator,
            images,
            &c.global,
            &c.tokens,
            &c.mask,
        );
        let ramp = if self.beta_warmup == 0 {
            1.0
        } else {
            (step as f64 / self.beta_warmup as f64).min(1.0)
        };
        let beta = self.beta * ramp;
        // The reconstruction costs nothing more, but its latent comes from the picture
        // itself, so a matching term on it can be met by what the posterior passes
        // through z rather than by the caption. A prior sample, what the model draws
        // at test time, has only the caption to paint the objects from.
        let painted = if self.paint_prior {
            let z = draws::normal(&[images.size()[0], self.z_dim], images.device());
            super::Body::sample(self, &c, &z)
        } else {
            recon
        };
        Ok(super::BodyLoss {
            terms: vec![
                ("pixel", pixel.mean(Kind::Float)),
                ("kl", kl.mean(Kind::Float) * beta),
            ],
            painted: Some(painted),
        })
    }
    fn sample(&self, c: &super::Condition, z: &Tensor) -> Tensor {
        self.generator.forward(z, &c.global, &c.tokens, &c.mask)
    }
    fn generator(&self) -> Option<&Generator> {
        Some(&self.generator)
    }
}
