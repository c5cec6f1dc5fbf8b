//! Convolutional blocks: conv–norm–activation stages with downsampling (the captioner's
//! and the evaluators' image encoders).

use tch::{nn, nn::Module, Tensor};

fn groups(ch: i64) -> i64 {
    [8, 4, 2, 1].into_iter().find(|g| ch % g == 0).unwrap()
}

/// A stride-2 3×3 conv–GroupNorm–GELU that halves the resolution, then a residual 3×3
/// conv–GroupNorm–GELU at the new resolution. Downsampling first keeps the costly
/// convolutions off the full-resolution grid (most of the FLOPs on a CPU).
#[derive(Debug)]
pub struct DownStage {
    down: nn::Conv2D,
    n1: nn::GroupNorm,
    conv: nn::Conv2D,
    n2: nn::GroupNorm,
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
            n1: nn::group_norm(&p / "norm1", groups(cout), cout, Default::default()),
            conv: nn::conv2d(&p / "conv", cout, cout, 3, c3),
            n2: nn::group_norm(&p / "norm2", groups(cout), cout, Default::default()),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.down.forward(x).apply(&self.n1).gelu("tanh");
        &h + h.apply(&self.conv).apply(&self.n2).gelu("tanh")
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

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.stages
            .iter()
            .fold(x.shallow_clone(), |h, s| s.forward(&h))
    }
}
