//! Place-by-place modulation (SPADE, Park et al. 2019): a generator painting from a grid
//! of place vectors scales and shifts every pixel by the vector of the place it lies in.

use tch::{nn, nn::Module, Tensor};

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
