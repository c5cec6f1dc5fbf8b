//! The conditional image generator shared by the VAE decoder and the GAN generator: a
//! noise vector and the caption's global vector are projected to a 4×4 map, then
//! upsampling blocks double the resolution. Every block is modulated by the caption
//! (FiLM, the channel-wise affine "fusion" of DF-GAN, Tao et al. 2022), and blocks at
//! low resolution also cross-attend to the caption's tokens, so words like "top left"
//! can bind to places. A generator built [`Generator::painting_from_places`] takes its
//! condition's tokens as a grid of place vectors (the facts of [`crate::scenes::facts`])
//! and every block is modulated by them, place by place.

use super::layout::LayoutModulation;
use crate::nn::attention::Attention;
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Tensor};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    pub z_dim: i64,
    /// Channels after each ×2 upsampling from 4×4: the output side is 4·2^len.
    pub channels: Vec<i64>,
    /// Blocks whose output side is at most this cross-attend to the caption tokens.
    #[serde(default = "d_attn")]
    pub attention_max_side: i64,
    /// Tell every block where each pixel lies inside its layout cell (CoordConv, Liu et
    /// al. 2018): a learned projection of [`cell_coordinates`] is added to the block's
    /// input. Needs a generator painting from places.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cell_coordinates: bool,
    /// Read each place vector through a residual two-layer MLP before the blocks do
    /// ([`PlaceMlp`]). Needs a generator painting from places.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub place_mlp: bool,
}
fn d_attn() -> i64 {
    16
}

fn groups(ch: i64) -> i64 {
    [8, 4, 2, 1]
        .into_iter()
        .find(|g| ch % g == 0)
        .expect("1 divides everything")
}

/// Channel-wise scale and shift predicted from the caption vector.
#[derive(Debug)]
struct Film {
    lin: nn::Linear,
}

impl Film {
    fn new(p: nn::Path, cond: i64, ch: i64) -> Self {
        let cfg = nn::LinearConfig {
            ws_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        Film {
            lin: nn::linear(p, cond, 2 * ch, cfg),
        }
    }
    fn forward(&self, x: &Tensor, c: &Tensor) -> Tensor {
        let ss = self.lin.forward(c).unsqueeze(-1).unsqueeze(-1); // (B, 2C, 1, 1)
        let parts = ss.chunk(2, 1);
        x * (&parts[0] + 1.0) + &parts[1]
    }
}

#[derive(Debug)]
struct UpBlock {
    conv1: nn::Conv2D,
    norm1: nn::GroupNorm,
    film1: Film,
    conv2: nn::Conv2D,
    norm2: nn::GroupNorm,
    film2: Film,
    attn: Option<(nn::LayerNorm, Attention)>,
    /// The layout's modulation after each convolution.
    layout1: Option<LayoutModulation>,
    layout2: Option<LayoutModulation>,
    /// Projects [`cell_coordinates`] to the block's input channels.
    coordinates: Option<nn::Linear>,
}

/// The shape of one [`UpBlock`].
struct BlockSpec {
    cin: i64,
    cout: i64,
    /// Cross-attend to the caption tokens.
    attend: bool,
    /// Modulated by the caption's layout.
    layout: bool,
    /// Told where each pixel lies inside its layout cell.
    coordinates: bool,
}

/// What every block reads from the caption.
struct Caption<'a> {
    cond: &'a Tensor,
    tokens: &'a Tensor,
    mask: &'a Tensor,
    /// The layout's place vectors `(B, G², D)` and G.
    layout: Option<(Tensor, i64)>,
}

impl UpBlock {
    fn new(p: nn::Path, spec: BlockSpec, cond: i64, text_dim: i64) -> Self {
        let BlockSpec {
            cin,
            cout,
            attend,
            layout,
            coordinates,
        } = spec;
        let c3 = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let (conv1, conv2) = (
            nn::conv2d(&p / "conv1", cin, cout, 3, c3),
            nn::conv2d(&p / "conv2", cout, cout, 3, c3),
        );
        // With a group per channel the GroupNorm after each conv cancels its bias, whose
        // true gradient is then zero: frozen, so AdamW does not step on rounding noise
        // (kept in the checkpoint, so runs trained with it still load).
        if groups(cout) == cout {
            for c in [&conv1, &conv2] {
                if let Some(b) = &c.bs {
                    let _ = b.set_requires_grad(false);
                }
            }
        }
        UpBlock {
            conv1,
            norm1: nn::group_norm(&p / "norm1", groups(cout), cout, Default::default()),
            film1: Film::new(&p / "film1", cond, cout),
            conv2,
            norm2: nn::group_norm(&p / "norm2", groups(cout), cout, Default::default()),
            film2: Film::new(&p / "film2", cond, cout),
            attn: attend.then(|| {
                let heads = if cout % 4 == 0 { 4 } else { 1 };
                (
                    nn::layer_norm(&p / "attn_ln", vec![cout], Default::default()),
                    Attention::new(&p / "attn", cout, text_dim, heads, 0.0),
                )
            }),
            layout1: layout.then(|| LayoutModulation::new(&p / "layout1", text_dim, cout)),
            layout2: layout.then(|| LayoutModulation::new(&p / "layout2", text_dim, cout)),
            coordinates: coordinates.then(|| {
                nn::linear(
                    &p / "coordinates",
                    COORDINATE_FEATURES,
                    cin,
                    Default::default(),
                )
            }),
        }
    }

    fn forward(&self, x: &Tensor, c: &Caption) -> Tensor {
        let (_, _, h, w) = x.size4().expect("images are (N, C, H, W)");
        let x = x.upsample_nearest2d([h * 2, w * 2], None, None);
        let x = match (&self.coordinates, &c.layout) {
            (Some(proj), Some((_, grid))) => {
                let at = cell_coordinates(*grid, h * 2, x.device()).apply(proj); // (S², C)
                x + at.transpose(0, 1).unflatten(1, [h * 2, w * 2]).unsqueeze(0)
            }
            _ => x,
        };
        let modulate = |m: &Option<LayoutModulation>, x: Tensor| match (m, &c.layout) {
            (Some(m), Some((places, grid))) => m.forward(&x, places, *grid),
            _ => x,
        };
        let h1 = modulate(
            &self.layout1,
            self.film1
                .forward(&x.apply(&self.conv1).apply(&self.norm1), c.cond),
        )
        .leaky_relu();
        let mut out = &h1
            + modulate(
                &self.layout2,
                self.film2
                    .forward(&h1.apply(&self.conv2).apply(&self.norm2), c.cond),
            )
            .leaky_relu();
        if let Some((ln, attn)) = &self.attn {
            let (_, _, hh, ww) = out.size4().expect("images are (N, C, H, W)");
            let seq = out.flatten(2, 3).transpose(1, 2); // (B, H·W, C)
            let q = ln.forward(&seq);
            let a = attn.forward_masked(&q, Some(c.tokens), false, None, Some(c.mask), false);
            out = (seq + a).transpose(1, 2).unflatten(2, [hh, ww]);
        }
        out
    }
}

/// Width of a pixel's [`cell_coordinates`].
pub const COORDINATE_FEATURES: i64 = 18;

/// Where each pixel of a `side`×`side` map lies inside its cell of a `grid`×`grid`
/// layout, `(side², COORDINATE_FEATURES)` row-major: its offsets (u, v) from the cell's
/// centre in cell widths, its distance r from it, and sines and cosines of u, v and r at
/// three frequencies.
///
/// Why: the blocks are modulated cell by cell, and a convolution sees only a small
/// neighbourhood, so without this a block cannot tell a cell's centre from its border:
/// a shape centred in its cell (the embedded set's renderer puts every object there)
/// must be learned from the blur of the modulation's edges. With it, "a disc of this
/// size" is a function of r.
pub fn cell_coordinates(grid: i64, side: i64, device: tch::Device) -> Tensor {
    // Built from tensor operations, not from host data: a traced generator (export)
    // records operations, and a tensor filled from host memory would not replay.
    let t = (Tensor::arange(side, (tch::Kind::Float, device)) + 0.5) * (grid as f64 / side as f64);
    let offset = &t - t.floor() - 0.5; // (side,)
    let u = offset.view([1, side]).expand([side, side], false);
    let v = offset.view([side, 1]).expand([side, side], false);
    let r = (u.square() + v.square()).sqrt();
    let mut f = vec![u.shallow_clone(), v.shallow_clone(), r.shallow_clone()];
    for k in 1..=3 {
        let w = std::f64::consts::TAU * k as f64;
        f.extend([
            (&u * w).sin(),
            (&u * w).cos(),
            (&v * w).sin(),
            (&v * w).cos(),
            (&r * w).cos(),
        ]);
    }
    Tensor::stack(&f, -1).view([side * side, COORDINATE_FEATURES])
}

/// A residual MLP over each place vector (pre-norm; its output layer's weights start at
/// zero, so it begins as the identity plus a small shift, its output bias).
///
/// Why: every block reads a place through one linear map to its scale and shift. A
/// fact vector (the scene-supervised path) is near one-hot, so a linear read suffices;
/// the align model's place vectors are contrastive embeddings, in which "a red tower"
/// and "a red house" need not differ along any one direction a linear map can pick.
#[derive(Debug)]
struct PlaceMlp {
    norm: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl PlaceMlp {
    fn new(p: nn::Path, dim: i64) -> Self {
        let zero = nn::LinearConfig {
            ws_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        PlaceMlp {
            norm: nn::layer_norm(&p / "norm", vec![dim], Default::default()),
            fc1: nn::linear(&p / "fc1", dim, 2 * dim, Default::default()),
            fc2: nn::linear(&p / "fc2", 2 * dim, dim, zero),
        }
    }

    fn forward(&self, places: &Tensor) -> Tensor {
        places
            + places
                .apply(&self.norm)
                .apply(&self.fc1)
                .gelu("tanh")
                .apply(&self.fc2)
    }
}

#[derive(Debug)]
pub struct Generator {
    pub cfg: GeneratorConfig,
    fc: nn::Linear,
    blocks: Vec<UpBlock>,
    to_rgb: nn::Conv2D,
    c0: i64,
    /// The side of the grid the condition's tokens are laid out on, when they are the
    /// place vectors themselves.
    given_layout: Option<i64>,
    place_mlp: Option<PlaceMlp>,
}

impl Generator {
    /// `cond` is the width of the caption vector, `text_dim` of its tokens.
    pub fn new(p: nn::Path, cfg: &GeneratorConfig, cond: i64, text_dim: i64) -> Self {
        Self::build(p, cfg, cond, text_dim, None)
    }

    /// A generator whose condition tokens `(B, G², D)` are the place vectors of a
    /// `grid`×`grid` layout, row-major from the top left: every block is modulated by
    /// them place by place (and attends to them where `attention_max_side` allows).
    /// Tokens after the G² places (`(B, G² + L, D)`) are attended to, not laid out.
    pub fn painting_from_places(
        p: nn::Path,
        cfg: &GeneratorConfig,
        cond: i64,
        dim: i64,
        grid: i64,
    ) -> Self {
        Self::build(p, cfg, cond, dim, Some(grid))
    }

    fn build(
        p: nn::Path,
        cfg: &GeneratorConfig,
        cond: i64,
        text_dim: i64,
        given_layout: Option<i64>,
    ) -> Self {
        let c0 = cfg.channels[0];
        let mut cin = c0;
        let mut side = 4;
        let blocks = cfg
            .channels
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                side *= 2;
                let spec = BlockSpec {
                    cin,
                    cout: c,
                    attend: side <= cfg.attention_max_side,
                    layout: given_layout.is_some(),
                    coordinates: cfg.cell_coordinates,
                };
                let b = UpBlock::new(&p / "blocks" / i, spec, cond, text_dim);
                cin = c;
                b
            })
            .collect();
        Generator {
            cfg: cfg.clone(),
            fc: nn::linear(&p / "fc", cfg.z_dim + cond, c0 * 16, Default::default()),
            blocks,
            to_rgb: nn::conv2d(
                &p / "to_rgb",
                cin,
                3,
                3,
                nn::ConvConfig {
                    padding: 1,
                    ..Default::default()
                },
            ),
            c0,
            given_layout,
            place_mlp: (cfg.place_mlp && given_layout.is_some())
                .then(|| PlaceMlp::new(&p / "place_mlp", text_dim)),
        }
    }

    pub fn output_side(&self) -> i64 {
        4 << self.cfg.channels.len()
    }

    /// Images in [-1, 1] `(B, 3, S, S)` from noise `(B, z)`, the caption vector `(B, C)`
    /// and the caption tokens `(B, L, D)` with their mask.
    pub fn forward(
        &self,
        z: &Tensor,
        cond: &Tensor,
        tokens: &Tensor,
        token_mask: &Tensor,
    ) -> Tensor {
        // unflatten, not view([b, …]): a traced copy keeps the batch size free.
        let mut x = self
            .fc
            .forward(&Tensor::cat(&[z, cond], 1))
            .unflatten(1, [self.c0, 4, 4]);
        // With a layout the first G² tokens are its places, read as the blocks read them
        // (through the MLP), modulating and attended to alike; any tokens after them
        // (the align run's words) are attended to only.
        let (attended, layout) = match self.given_layout {
            Some(grid) => {
                let (n, l) = (grid * grid, tokens.size()[1]);
                let places = tokens.narrow(1, 0, n);
                let places = match &self.place_mlp {
                    Some(m) => m.forward(&places),
                    None => places,
                };
                let attended = if l > n {
                    Tensor::cat(&[&places, &tokens.narrow(1, n, l - n)], 1)
                } else {
                    places.shallow_clone()
                };
                (attended, Some((places, grid)))
            }
            None => (tokens.shallow_clone(), None),
        };
        let caption = Caption {
            cond,
            tokens: &attended,
            mask: token_mask,
            layout,
        };
        for blk in &self.blocks {
            x = blk.forward(&x, &caption);
        }
        x.apply(&self.to_rgb).tanh()
    }
}
