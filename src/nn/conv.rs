//! Convolutional blocks: conv–norm–activation stages with downsampling (the captioner's
//! and the evaluators' image encoders).
//!
//! BatchNorm, not GroupNorm: on the embedded set a probe with BatchNorm reached 0.65
//! attribute accuracy in 300 steps where GroupNorm reached 0.52 in 600.

use tch::{nn, nn::Module, nn::ModuleT, Tensor};

/// A stride-2 3×3 conv–BatchNorm–GELU that halves the resolution, then a residual 3×3
/// conv–BatchNorm–GELU at the new resolution. Downsampling first keeps the costly
/// convolutions off the full-resolution grid (most of the FLOPs on a CPU).
#[derive(Debug)]
pub struct DownStage {
    down: nn::Conv2D,
    n1: nn::BatchNorm,
    conv: nn::Conv2D,
    n2: nn::BatchNorm,
}

impl DownStage {
    pub fn new(p: nn::Path, cin: i64, cout: i64) -> Self {
        let c3 = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let down = nn::ConvConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        DownStage {
            down: nn::conv2d(&p / "down", cin, cout, 3, down),
            n1: nn::batch_norm2d(&p / "norm1", cout, Default::default()),
            conv: nn::conv2d(&p / "conv", cout, cout, 3, c3),
            n2: nn::batch_norm2d(&p / "norm2", cout, Default::default()),
        }
    }

    /// `train` selects batch statistics (and updates the running ones) or running ones.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let h = self.n1.forward_t(&self.down.forward(x), train).gelu("tanh");
        &h + self.n2.forward_t(&h.apply(&self.conv), train).gelu("tanh")
    }
}

/// A stack of [`DownStage`]s: `(B, 3, S, S)` → `(B, C, S/2^n, S/2^n)`.
#[derive(Debug)]
pub struct ConvEncoder {
    stages: Vec<DownStage>,
}

impl ConvEncoder {
    pub fn new(p: nn::Path, channels: &[i64]) -> Self {
        let mut cin = 3;
        let stages = channels
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let s = DownStage::new(&p / format!("stage{i}"), cin, c);
                cin = c;
                s
            })
            .collect();
        ConvEncoder { stages }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.stages
            .iter()
            .fold(x.shallow_clone(), |h, s| s.forward(&h, train))
    }
}
