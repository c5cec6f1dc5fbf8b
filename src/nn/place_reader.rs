//! A grid of place vectors read off a caption by learned place queries (the queries of
//! DETR, Carion et al. 2020, asking the caption's tokens instead of an image): each place
//! asks the paragraph what stands there ("a big pink sun … in the top right"). The
//! general path's align model learns each place's vector from pixels; the embedded
//! set's fact reader reads facts off it.

use crate::nn::attention::Attention;
use tch::{nn, Tensor};

/// Learned place queries, then `LAYERS` rounds of cross-attention to the caption tokens
/// and an MLP (pre-norm, residual). Two rounds: the first finds the words that name the
/// place, the second reads what those words describe.
#[derive(Debug)]
pub struct LayoutReader {
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
