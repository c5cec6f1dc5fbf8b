//! The diffusion process around a denoiser (Ho et al. 2020; Nichol & Dhariwal 2021): the cosine noise
//! schedule (Nichol & Dhariwal 2021), ε- or v-prediction targets (Salimans & Ho 2022),
//! classifier-free guidance (Ho & Salimans 2022), and two samplers over a strided subset
//! of the time steps: DDPM's ancestral posterior (Ho et al. 2020, respaced as in improved
//! DDPM) and DDIM (Song et al. 2021, η = 0 deterministic).

use crate::util::draws;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Prediction {
    Eps,
    V,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Sampler {
    Ddpm,
    Ddim,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiffusionConfig {
    /// Training time steps T.
    #[serde(default = "d_steps")]
    pub timesteps: i64,
    #[serde(default = "d_pred")]
    pub prediction: Prediction,
    /// Fraction of training captions replaced by the null condition (for guidance).
    #[serde(default = "d_drop")]
    pub caption_dropout: f64,
    #[serde(default = "d_sampler")]
    pub sampler: Sampler,
    /// Denoising steps at sampling time (a strided subset of the T steps).
    #[serde(default = "d_sample_steps")]
    pub sample_steps: i64,
    /// Classifier-free guidance scale; 1 is the plain conditional model.
    #[serde(default = "d_guidance")]
    pub guidance: f64,
    /// DDIM's η: 0 is deterministic, 1 adds DDPM-like noise.
    #[serde(default)]
    pub eta: f64,
}
fn d_steps() -> i64 {
    1000
}
fn d_pred() -> Prediction {
    Prediction::V
}
fn d_drop() -> f64 {
    0.1
}
fn d_sampler() -> Sampler {
    Sampler::Ddim
}
fn d_sample_steps() -> i64 {
    25
}
fn d_guidance() -> f64 {
    2.0
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        DiffusionConfig {
            timesteps: d_steps(),
            prediction: d_pred(),
            caption_dropout: d_drop(),
            sampler: d_sampler(),
            sample_steps: d_sample_steps(),
            guidance: d_guidance(),
            eta: 0.0,
        }
    }
}

/// ᾱ_t for t = 0..T−1 under the cosine schedule, with β clipped at 0.999.
pub fn cosine_alpha_bars(timesteps: i64) -> Vec<f64> {
    let s = 0.008;
    let f = |t: f64| {
        (((t / timesteps as f64 + s) / (1.0 + s)) * std::f64::consts::FRAC_PI_2)
            .cos()
            .powi(2)
    };
    let mut out = Vec::with_capacity(timesteps as usize);
    let mut prod = 1.0;
    for t in 0..timesteps {
        let beta = (1.0 - f(t as f64 + 1.0) / f(t as f64)).min(0.999);
        prod *= 1.0 - beta;
        out.push(prod);
    }
    out
}

/// What the network outputs, turned into (x̂₀, ε̂) at ᾱ for noisy `x`.
fn split_prediction(pred: Prediction, out: &Tensor, x: &Tensor, ab: &Tensor) -> (Tensor, Tensor) {
    let (sa, sb) = (ab.sqrt(), (ab.neg() + 1.0).sqrt());
    let x0 = match pred {
        Prediction::Eps => (x - &sb * out) / &sa,
        Prediction::V => &sa * x - &sb * out,
    };
    // Clipping x̂₀ to the data range and re-deriving ε̂ keeps few-step sampling stable.
    let x0 = x0.clamp(-1.0, 1.0);
    let eps = (x - &sa * &x0) / sb.clamp_min(1e-8);
    (x0, eps)
}

pub struct Schedule {
    pub cfg: DiffusionConfig,
    alpha_bars: Vec<f64>,
}

impl Schedule {
    pub fn new(cfg: &DiffusionConfig) -> Self {
        Schedule {
            cfg: cfg.clone(),
            alpha_bars: cosine_alpha_bars(cfg.timesteps),
        }
    }

    fn gather(&self, t: &Tensor) -> Tensor {
        let table = Tensor::from_slice(&self.alpha_bars)
            .to_kind(Kind::Float)
            .to_device(t.device());
        table.index_select(0, t).view([-1, 1, 1, 1])
    }

    /// A training example: random steps `t`, the noisy images and the target the network
    /// should output there.
    pub fn training_example(&self, x0: &Tensor) -> (Tensor, Tensor, Tensor) {
        let b = x0.size()[0];
        let t = draws::randint(self.cfg.timesteps, b, x0.device());
        let ab = self.gather(&t);
        let eps = draws::normal_like(x0);
        let xt = ab.sqrt() * x0 + (ab.neg() + 1.0).sqrt() * &eps;
        let target = match self.cfg.prediction {
            Prediction::Eps => eps,
            Prediction::V => ab.sqrt() * &eps - (ab.neg() + 1.0).sqrt() * x0,
        };
        (t, xt, target)
    }

    /// The strided time steps used at sampling, from high noise down.
    pub fn sampling_steps(&self) -> Vec<i64> {
        let n = self.cfg.sample_steps.clamp(1, self.cfg.timesteps);
        let t = self.cfg.timesteps;
        let mut steps: Vec<i64> = (0..n).map(|i| (i * t) / n + (t / n) - 1).collect();
        steps.dedup();
        steps.reverse();
        steps
    }

    /// Runs the sampler from noise `x` (B, 3, S, S). `denoise(x, t)` gives the network's
    /// (guided) output at integer step `t` for the whole batch.
    pub fn sample(&self, mut x: Tensor, mut denoise: impl FnMut(&Tensor, i64) -> Tensor) -> Tensor {
        let steps = self.sampling_steps();
        for (i, &t) in steps.iter().enumerate() {
            let ab = self.alpha_bars[t as usize];
            let ab_prev = steps
                .get(i + 1)
                .map_or(1.0, |&p| self.alpha_bars[p as usize]);
            let out = denoise(&x, t);
            let abt = Tensor::from(ab as f32).to_device(x.device());
            let (x0, eps) = split_prediction(self.cfg.prediction, &out, &x, &abt);
            let last = i + 1 == steps.len();
            x = match self.cfg.sampler {
                Sampler::Ddim => {
                    let sigma = self.cfg.eta
                        * ((1.0 - ab_prev) / (1.0 - ab)).sqrt()
                        * (1.0 - ab / ab_prev).max(0.0).sqrt();
                    let dir = (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt();
                    let mut next = x0 * ab_prev.sqrt() + eps * dir;
                    if sigma > 0.0 && !last {
                        next += x.randn_like() * sigma;
                    }
                    next
                }
                Sampler::Ddpm => {
                    // The posterior q(x_prev | x_t, x̂₀) of the respaced chain.
                    let alpha = ab / ab_prev;
                    let beta = 1.0 - alpha;
                    let c0 = ab_prev.sqrt() * beta / (1.0 - ab);
                    let ct = alpha.sqrt() * (1.0 - ab_prev) / (1.0 - ab);
                    let var = beta * (1.0 - ab_prev) / (1.0 - ab);
                    let mean = x0 * c0 + &x * ct;
                    if last {
                        mean
                    } else {
                        mean + x.randn_like() * var.sqrt()
                    }
                }
            };
        }
        x.clamp(-1.0, 1.0)
    }
}

/// Classifier-free guidance: ε̂ = ε̂_uncond + w·(ε̂_cond − ε̂_uncond).
pub fn guide(cond: &Tensor, uncond: &Tensor, scale: f64) -> Tensor {
    uncond + (cond - uncond) * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_schedule_falls_from_one_to_near_zero() {
        let ab = cosine_alpha_bars(1000);
        assert!(ab[0] > 0.999 && ab[999] < 1e-3);
        assert!(ab.windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn sampling_steps_are_strided_and_end_at_zero_noise_step() {
        let s = Schedule::new(&DiffusionConfig {
            sample_steps: 4,
            ..Default::default()
        });
        assert_eq!(s.sampling_steps(), vec![999, 749, 499, 249]);
    }

    #[test]
    fn a_perfect_denoiser_recovers_the_image() {
        // With the true x₀ known, both predictions and both samplers land on it.
        tch::manual_seed(0);
        let x0 = Tensor::rand([2, 3, 8, 8], (Kind::Float, tch::Device::Cpu)) * 1.6 - 0.8;
        for prediction in [Prediction::Eps, Prediction::V] {
            for sampler in [Sampler::Ddim, Sampler::Ddpm] {
                let s = Schedule::new(&DiffusionConfig {
                    prediction,
                    sampler,
                    sample_steps: 10,
                    ..Default::default()
                });
                let oracle = |x: &Tensor, t: i64| {
                    let ab = s.alpha_bars[t as usize];
                    let eps = (x - &x0 * ab.sqrt()) / (1.0 - ab).sqrt();
                    match prediction {
                        Prediction::Eps => eps,
                        Prediction::V => eps * ab.sqrt() - &x0 * (1.0 - ab).sqrt(),
                    }
                };
                let out = s.sample(x0.randn_like(), oracle);
                let err = (out - &x0).abs().max().double_value(&[]);
                assert!(err < 1e-3, "{prediction:?} {sampler:?}: {err}");
            }
        }
    }
}
