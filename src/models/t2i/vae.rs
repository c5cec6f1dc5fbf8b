//! The conditional VAE (Kingma & Welling 2014, Sohn et al. 2015):
//! q(z | x, t) from a conv encoder and the caption vector, p(x | z, t) from the shared
//! [`Generator`]; loss = pixel term + β·KL, with β warmed up. The prior is N(0, I), or,
//! with `prior: learned`, Sohn et al.'s conditional prior p(z | t) = N(μ(t), σ(t)²):
//! sampling draws ε ~ N(0, I) and paints z = μ(t) + σ(t)·ε.

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

/// The learned conditional prior p(z | t): an MLP on the caption vector.
///
/// Why: against N(0, I), the posterior learns to carry the objects in z (the cheapest
/// path from the image to the decoder), and a sample with z ~ N(0, I) paints random
/// objects, whatever the caption says. Against p(z | t), what the caption predicts costs
/// no KL, and the prior must learn to predict it: the text reaches the objects through z.
pub struct LearnedPrior {
    net: nn::Sequential,
}

impl LearnedPrior {
    pub fn new(p: nn::Path, cond: i64, z_dim: i64) -> Self {
        let hidden = 2 * cond;
        // The output starts at zero: the prior begins as N(0, I).
        let zero = nn::LinearConfig {
            ws_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        LearnedPrior {
            net: nn::seq()
                .add(nn::linear(&p / "fc", cond, hidden, Default::default()))
                .add_fn(|x| x.gelu("tanh"))
                .add(nn::linear(&p / "out", hidden, 2 * z_dim, zero)),
        }
    }

    /// (μ, log σ²) of p(z | t).
    pub fn forward(&self, cond: &Tensor) -> (Tensor, Tensor) {
        let parts = self.net.forward(cond).chunk(2, 1);
        (parts[0].shallow_clone(), parts[1].clamp(-10.0, 10.0))
    }

    /// The latent a standard-normal draw `eps` stands for under p(z | t).
    pub fn reparameterize(&self, cond: &Tensor, eps: &Tensor) -> Tensor {
        let (mu, logvar) = self.forward(cond);
        mu + (logvar * 0.5).exp() * eps
    }
}

/// KL(N(μq, σq²) ‖ N(μp, σp²)) per sample, summed over latent dimensions.
pub fn kl_between(mu_q: &Tensor, lv_q: &Tensor, mu_p: &Tensor, lv_p: &Tensor) -> Tensor {
    ((lv_p - lv_q + (lv_q.exp() + (mu_q - mu_p).square()) / lv_p.exp() - 1.0) * 0.5)
        .sum_dim_intlist(1, false, Kind::Float)
}

/// KL(q ‖ N(0, I)) per sample, summed over latent dimensions.
pub fn kl_to_standard_normal(mu: &Tensor, logvar: &Tensor) -> Tensor {
    ((mu.square() + logvar.exp() - logvar - 1.0) * 0.5).sum_dim_intlist(1, false, Kind::Float)
}

/// The VAE loss pieces for a batch: (pixel loss, KL), both per image.
pub fn vae_terms(
    posterior: &Posterior,
    prior: Option<&LearnedPrior>,
    generator: &Generator,
    x: &Tensor,
    cond: &Tensor,
    tokens: &Tensor,
    mask: &Tensor,
) -> (Tensor, Tensor) {
    let (mu, logvar) = posterior.forward(x, cond);
    let z = &mu + (&logvar * 0.5).exp() * draws::normal_like(&mu);
    let recon = generator.forward(&z, cond, tokens, mask);
    // Summed squared error per image (a Gaussian decoder with σ² = ½ on [-1, 1]),
    // so the KL keeps its natural weight against it.
    let pixel = (recon - x)
        .square()
        .sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float);
    let kl = match prior {
        Some(prior) => {
            let (mu_p, lv_p) = prior.forward(cond);
            kl_between(&mu, &logvar, &mu_p, &lv_p)
        }
        None => kl_to_standard_normal(&mu, &logvar),
    };
    (pixel, kl)
}
