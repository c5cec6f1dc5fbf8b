//! The invertible bridge of Menon et al. (ICVGIP 2024): square linear layers W = L·U
//! with unit-diagonal L and U's diagonal fixed non-zero (or a learned sign·exp(s) diagonal,
//! as in Glow, Kingma & Dhariwal 2018), invertible leaky ReLUs between them, biases; an
//! exact inverse by two triangular solves per layer and a log-determinant. Also the image
//! autoencoder whose flattened latent is as wide as the sentence embedding.

use crate::nn::conv::ConvEncoder;
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Diagonal {
    /// U's diagonal is the constant 1 (Menon et al.'s k_i): det W = 1 always.
    Fixed,
    /// U's diagonal is sign·exp(s) with s learned and the sign fixed at creation.
    Learned,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InvertibleConfig {
    pub dim: i64,
    pub layers: i64,
    #[serde(default = "d_slope")]
    pub slope: f64,
    #[serde(default = "d_diag")]
    pub diagonal: Diagonal,
}
fn d_slope() -> f64 {
    0.5
}
fn d_diag() -> Diagonal {
    Diagonal::Learned
}

/// One invertible square layer y = W x + b, W = L·U.
#[derive(Debug)]
pub struct InvertibleLinear {
    lower: Tensor,
    upper: Tensor,
    log_scale: Option<Tensor>,
    sign: Tensor,
    bias: Tensor,
    dim: i64,
}

impl InvertibleLinear {
    pub fn new(p: nn::Path, dim: i64, diagonal: Diagonal) -> Self {
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.3 / (dim as f64).sqrt(),
        };
        let kind = p.kind();
        let sign = match diagonal {
            // Random signs let the product reach matrices of either orientation.
            Diagonal::Learned => {
                let s = Tensor::randint(2, [dim], (Kind::Int64, p.device())) * 2 - 1;
                p.var_copy("sign", &s.to_kind(kind))
                    .set_requires_grad(false)
            }
            Diagonal::Fixed => p
                .var("sign", &[dim], nn::Init::Const(1.0))
                .set_requires_grad(false),
        };
        InvertibleLinear {
            lower: p.var("lower", &[dim, dim], init),
            upper: p.var("upper", &[dim, dim], init),
            log_scale: (diagonal == Diagonal::Learned)
                .then(|| p.var("log_scale", &[dim], nn::Init::Const(0.0))),
            sign,
            bias: p.var("bias", &[dim], nn::Init::Const(0.0)),
            dim,
        }
    }

    fn diag(&self) -> Tensor {
        match &self.log_scale {
            Some(s) => &self.sign * s.exp(),
            None => self.sign.shallow_clone(),
        }
    }

    fn lu(&self) -> (Tensor, Tensor) {
        let eye = Tensor::eye(self.dim, (self.lower.kind(), self.lower.device()));
        let l = self.lower.tril(-1) + &eye;
        let u = self.upper.triu(1) + self.diag().diag_embed(0, -2, -1);
        (l, u)
    }

    /// The weight matrix W = L·U.
    pub fn weight(&self) -> Tensor {
        let (l, u) = self.lu();
        l.matmul(&u)
    }

    /// log |det W| = Σ log |diag U| (L has a unit diagonal).
    pub fn log_abs_det(&self) -> Tensor {
        match &self.log_scale {
            Some(s) => s.sum(s.kind()),
            None => Tensor::zeros([], (self.sign.kind(), self.sign.device())),
        }
    }

    /// Rows of `x` `(B, D)` → W x + b.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.weight().tr()) + &self.bias
    }

    /// The exact inverse: solve L·U·x = y − b with two triangular solves.
    pub fn inverse(&self, y: &Tensor) -> Tensor {
        let (l, u) = self.lu();
        let rhs = (y - &self.bias).tr(); // (D, B)
        let w = l.linalg_solve_triangular(&rhs, false, true, true);
        u.linalg_solve_triangular(&w, true, true, false).tr()
    }
}

fn leaky(x: &Tensor, slope: f64) -> Tensor {
    x.maximum(&(x * slope))
}

fn leaky_inverse(y: &Tensor, slope: f64) -> Tensor {
    y.minimum(&(y / slope))
}

/// f = A_n ∘ σ ∘ … ∘ σ ∘ A_1: invertible layers with leaky ReLUs between them (the last
/// layer is linear, so f reaches all of R^D).
#[derive(Debug)]
pub struct InvertibleMlp {
    pub cfg: InvertibleConfig,
    layers: Vec<InvertibleLinear>,
}

impl InvertibleMlp {
    pub fn new(p: nn::Path, cfg: &InvertibleConfig) -> Self {
        // The stage refuses a non-positive slope in the config before building.
        debug_assert!(
            cfg.slope > 0.0,
            "a leaky ReLU needs a positive slope to be invertible"
        );
        InvertibleMlp {
            cfg: cfg.clone(),
            layers: (0..cfg.layers)
                .map(|i| InvertibleLinear::new(&p / "layers" / i, cfg.dim, cfg.diagonal))
                .collect(),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let n = self.layers.len();
        let mut h = x.shallow_clone();
        for (i, l) in self.layers.iter().enumerate() {
            h = l.forward(&h);
            if i + 1 < n {
                h = leaky(&h, self.cfg.slope);
            }
        }
        h
    }

    pub fn inverse(&self, y: &Tensor) -> Tensor {
        let n = self.layers.len();
        let mut h = y.shallow_clone();
        for (i, l) in self.layers.iter().enumerate().rev() {
            if i + 1 < n {
                h = leaky_inverse(&h, self.cfg.slope);
            }
            h = l.inverse(&h);
        }
        h
    }

    pub fn layers(&self) -> &[InvertibleLinear] {
        &self.layers
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AutoencoderConfig {
    pub image_size: i64,
    /// Channels of the encoder's stride-2 stages (mirrored by the decoder).
    pub channels: Vec<i64>,
    /// Channels of the latent grid; latent width = this × (side / 2^stages)².
    pub latent_channels: i64,
}

impl AutoencoderConfig {
    pub fn latent_side(&self) -> i64 {
        self.image_size >> self.channels.len()
    }
    pub fn latent_dim(&self) -> i64 {
        self.latent_channels * self.latent_side() * self.latent_side()
    }
}

/// A convolutional autoencoder from scratch: E_I(image) → flat latent, D_I(latent) → image.
#[derive(Debug)]
pub struct Autoencoder {
    pub cfg: AutoencoderConfig,
    enc: ConvEncoder,
    to_latent: nn::Conv2D,
    from_latent: nn::Conv2D,
    up: Vec<(nn::Conv2D, nn::GroupNorm)>,
    to_rgb: nn::Conv2D,
}

impl Autoencoder {
    pub fn new(p: nn::Path, cfg: &AutoencoderConfig) -> Self {
        let c3 = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let last = *cfg.channels.last().expect("channels checked non-empty");
        let mut cin = last;
        let up = cfg
            .channels
            .iter()
            .rev()
            .enumerate()
            .map(|(i, &c)| {
                let out = cfg.channels.len() - 1 - i;
                let cout = if out == 0 {
                    c.max(16)
                } else {
                    cfg.channels[out - 1]
                };
                let conv = nn::conv2d(&p / "up" / i, cin, cout, 3, c3);
                let g = [8, 4, 2, 1]
                    .into_iter()
                    .find(|g| cout % g == 0)
                    .unwrap_or(1);
                cin = cout;
                (
                    conv,
                    nn::group_norm(&p / "up_norm" / i, g, cout, Default::default()),
                )
            })
            .collect();
        Autoencoder {
            cfg: cfg.clone(),
            enc: ConvEncoder::new(&p / "enc", &cfg.channels),
            to_latent: nn::conv2d(
                &p / "to_latent",
                last,
                cfg.latent_channels,
                1,
                Default::default(),
            ),
            from_latent: nn::conv2d(&p / "from_latent", cfg.latent_channels, last, 3, c3),
            up,
            to_rgb: nn::conv2d(&p / "to_rgb", cin, 3, 3, c3),
        }
    }

    /// Images in [-1, 1] → flat latents `(B, latent_dim)`.
    pub fn encode(&self, x: &Tensor, train: bool) -> Tensor {
        self.enc
            .forward(x, train)
            .apply(&self.to_latent)
            .flatten(1, -1)
    }

    /// Flat latents → images in [-1, 1].
    pub fn decode(&self, z: &Tensor) -> Tensor {
        let s = self.cfg.latent_side();
        let b = z.size()[0];
        let mut h = z
            .view([b, self.cfg.latent_channels, s, s])
            .apply(&self.from_latent)
            .gelu("tanh");
        for (conv, norm) in &self.up {
            let (_, _, hh, ww) = h.size4().expect("images are (N, C, H, W)");
            h = h
                .upsample_nearest2d([hh * 2, ww * 2], None, None)
                .apply(conv)
                .apply(norm)
                .gelu("tanh");
        }
        h.apply(&self.to_rgb).tanh()
    }

    pub fn reconstruction_loss(&self, x: &Tensor) -> Tensor {
        (self.decode(&self.encode(x, true)) - x)
            .square()
            .mean(Kind::Float)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn mlp(diagonal: Diagonal) -> (nn::VarStore, InvertibleMlp) {
        tch::manual_seed(0);
        let mut vs = nn::VarStore::new(Device::Cpu);
        vs.set_kind(Kind::Double);
        let cfg = InvertibleConfig {
            dim: 16,
            layers: 4,
            slope: 0.3,
            diagonal,
        };
        let m = InvertibleMlp::new(vs.root() / "f", &cfg);
        // Random, not initial, weights: perturb every trainable variable.
        tch::no_grad(|| {
            for (_, mut v) in vs.variables() {
                if v.requires_grad() {
                    let _ = v.g_add_(&(v.randn_like() * 0.5));
                }
            }
        });
        (vs, m)
    }

    #[test]
    fn inverse_undoes_forward_for_random_weights() {
        for diagonal in [Diagonal::Fixed, Diagonal::Learned] {
            let (_vs, m) = mlp(diagonal);
            let x = Tensor::randn([32, 16], (Kind::Double, Device::Cpu)) * 3.0;
            let fx = m.forward(&x);
            // Relative to the largest value the layers produced: some random weights
            // (parallel tests share the RNG) stretch the space by orders of magnitude
            // and are ill-conditioned enough to lose 8 digits; a wrong inverse errs by O(1).
            let scale = 1.0 + fx.abs().max().double_value(&[]);
            let err = (m.inverse(&fx) - &x).abs().max().double_value(&[]);
            assert!(err < 1e-6 * scale, "{diagonal:?}: {err} (scale {scale})");
            let y = Tensor::randn([32, 16], (Kind::Double, Device::Cpu));
            let err = (m.forward(&m.inverse(&y)) - &y)
                .abs()
                .max()
                .double_value(&[]);
            assert!(err < 1e-5, "{diagonal:?}: {err}");
        }
    }

    #[test]
    fn determinant_is_never_zero_by_construction() {
        for diagonal in [Diagonal::Fixed, Diagonal::Learned] {
            let (_vs, m) = mlp(diagonal);
            for l in m.layers() {
                let det = Tensor::linalg_det(&l.weight()).double_value(&[]);
                let expect = l.log_abs_det().double_value(&[]).exp();
                assert!(det.abs() > 0.0);
                assert!(
                    (det.abs() - expect).abs() < 1e-6 * expect,
                    "{det} vs {expect}"
                );
            }
        }
    }

    #[test]
    fn gradients_reach_every_factor() {
        let (vs, m) = mlp(Diagonal::Learned);
        let x = Tensor::randn([8, 16], (Kind::Double, Device::Cpu));
        (m.forward(&x).square().mean(Kind::Double) + m.inverse(&x).square().mean(Kind::Double))
            .backward();
        for (name, v) in vs.variables() {
            if v.requires_grad() {
                let g = v.grad();
                assert!(
                    g.defined() && g.abs().sum(Kind::Double).double_value(&[]) > 0.0,
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn autoencoder_latent_has_the_configured_width() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = AutoencoderConfig {
            image_size: 32,
            channels: [8, 16, 16].to_vec(),
            latent_channels: 4,
        };
        let ae = Autoencoder::new(vs.root(), &cfg);
        let x = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let z = ae.encode(&x, false);
        assert_eq!(z.size(), vec![2, cfg.latent_dim()]);
        assert_eq!(ae.decode(&z).size(), vec![2, 3, 32, 32]);
    }
}
