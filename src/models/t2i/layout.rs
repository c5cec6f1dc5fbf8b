//! The caption's layout: a G×G grid of vectors read off the caption tokens by learned
//! place queries, which the generator paints from as a spatially varying modulation
//! (SPADE, Park et al. 2019, with the layout read from text instead of given).
//!
//! Why: a generator that only cross-attends from its pixels must learn, from the pixel
//! loss alone, both where a word sends an object and what to paint there. A grid of
//! place vectors splits that: each place asks the caption what stands there ("a big pink
//! sun … in the top right"), and the generator only has to paint, at each place, what
//! its vector says. On the embedded set the place vectors can also be taught the facts
//! of their cell directly from the paragraph (`model.attribute_weight`).

use crate::nn::attention::Attention;
use tch::{nn, nn::Module, Tensor};

/// Learned place queries, then `LAYERS` rounds of cross-attention to the caption tokens
/// and an MLP (pre-norm, residual). Two rounds: the first finds the words that name the
/// place, the second reads what those words describe.
#[derive(Debug)]
pub struct LayoutReader {
    pub grid: i64,
    places: Tensor,
    layers: Vec<ReaderLayer>,
    out_norm: nn::LayerNorm,
}

#[derive(Debug)]
struct ReaderLayer {
    attn_norm: nn::LayerNorm,
    attn: Attention,
    mlp_norm: nn::LayerNorm,
    mlp: nn::Sequential,
}

const LAYERS: usize = 2;

impl LayoutReader {
    /// A reader of `grid`×`grid` places of width `dim`, over tokens of width `dim`.
    pub fn new(p: nn::Path, grid: i64, dim: i64) -> Self {
        let heads = if dim % 4 == 0 { 4 } else { 1 };
        let layers = (0..LAYERS)
            .map(|i| {
                let q = &p / "layers" / i;
                ReaderLayer {
                    attn_norm: nn::layer_norm(&q / "attn_norm", vec![dim], Default::default()),
                    attn: Attention::new(&q / "attn", dim, dim, heads, 0.0),
                    mlp_norm: nn::layer_norm(&q / "mlp_norm", vec![dim], Default::default()),
                    mlp: nn::seq()
                        .add(nn::linear(&q / "fc1", dim, 2 * dim, Default::default()))
                        .add_fn(|x| x.gelu("tanh"))
                        .add(nn::linear(&q / "fc2", 2 * dim, dim, Default::default())),
                }
            })
            .collect();
        LayoutReader {
            grid,
            places: p.var(
                "places",
                &[grid * grid, dim],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            ),
            layers,
            out_norm: nn::layer_norm(&p / "out_norm", vec![dim], Default::default()),
        }
    }

    /// The place vectors `(B, G², D)`, row-major from the top left, for caption tokens
    /// `(B, L, D)` with their mask `(B, L)` (true = a token).
    pub fn forward(&self, tokens: &Tensor, mask: &Tensor) -> Tensor {
        // Built from a batch-shaped zero, not expand([b, …]): a traced copy keeps the
        // batch size free.
        let zero = tokens.narrow(1, 0, 1).narrow(2, 0, 1).zeros_like(); // (B, 1, 1)
        let mut x = &self.places.unsqueeze(0) + zero;
        for l in &self.layers {
            let q = x.apply(&l.attn_norm);
            x = &x
                + l.attn
                    .forward_masked(&q, Some(tokens), false, None, Some(mask), false);
            x = &x + x.apply(&l.mlp_norm).apply(&l.mlp);
        }
        x.apply(&self.out_norm)
    }
}

/// A per-channel scale and shift at every pixel from the place vectors: each place's
/// vector is projected to `(γ, β)` and the grid is stretched (bilinearly) over the
/// feature map. Starts at zero, i.e. the identity.
#[derive(Debug)]
pub struct LayoutModulation {
    proj: nn::Linear,
}

impl LayoutModulation {
    pub fn new(p: nn::Path, dim: i64, channels: i64) -> Self {
        let zero = nn::LinearConfig {
            ws_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        LayoutModulation {
            proj: nn::linear(p, dim, 2 * channels, zero),
        }
    }

    /// `x` `(B, C, H, W)` modulated by the place vectors `(B, G², D)` of a `grid`×`grid`
    /// layout.
    pub fn forward(&self, x: &Tensor, places: &Tensor, grid: i64) -> Tensor {
        let (_, _, h, w) = x.size4().expect("images are (N, C, H, W)");
        // Projected on the G×G grid, then stretched: cheaper than projecting every pixel.
        let ss = self
            .proj
            .forward(places)
            .transpose(1, 2)
            .unflatten(2, [grid, grid])
            .upsample_bilinear2d([h, w], false, None, None); // (B, 2C, H, W)
        let parts = ss.chunk(2, 1);
        x * (&parts[0] + 1.0) + &parts[1]
    }
}
