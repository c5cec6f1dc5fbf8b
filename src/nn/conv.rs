//! Convolutional blocks: conv–norm–activation stages with downsampling (the captioner's
//! and the evaluators' image encoders).
//!
//! BatchNorm, not GroupNorm: on the embedded set a probe with BatchNorm reached 0.65
//! attribute accuracy in 300 steps where GroupNorm reached 0.52 in 600.

use super::sync_batch_norm::{batch_norm2d, BatchNorm2d};
use tch::{nn, nn::Module, Tensor};

/// A stride-2 3×3 conv–BatchNorm–GELU that halves the resolution, then a residual 3×3
/// conv–BatchNorm–GELU at the new resolution. Downsampling first keeps the costly
/// convolutions off the full-resolution grid (most of the FLOPs on a CPU).
#[derive(Debug)]
pub struct DownStage {
    down: nn::Conv2D,
    n1: BatchNorm2d,
    conv: nn::Conv2D,
    n2: BatchNorm2d,
}

impl DownStage {
    pub fn new(p: nn::Path, cin: i64, cout: i64) -> Self {
        Self::with_stride(p, cin, cout, 2)
    }

    /// A stage whose downsampling divides the resolution by `stride`: stride 2 is a 3×3
    /// convolution, a larger stride a patchify convolution (kernel = stride, no overlap).
    pub fn with_stride(p: nn::Path, cin: i64, cout: i64, stride: i64) -> Self {
        let c3 = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let (kernel, down) = match stride {
            2 => (
                3,
                nn::ConvConfig {
                    padding: 1,
                    stride: 2,
                    ..Default::default()
                },
            ),
            s => (
                s,
                nn::ConvConfig {
                    stride: s,
                    ..Default::default()
                },
            ),
        };
        let (down, conv) = (
            nn::conv2d(&p / "down", cin, cout, kernel, down),
            nn::conv2d(&p / "conv", cout, cout, 3, c3),
        );
        // A bias before a BatchNorm is cancelled by its mean: its true gradient is zero,
        // and AdamW would turn the rounding noise in it into full-size steps (which also
        // made data-parallel ranks drift from one process). Frozen, it stays in the
        // checkpoint so runs trained with it still load.
        for c in [&down, &conv] {
            if let Some(b) = &c.bs {
                let _ = b.set_requires_grad(false);
            }
        }
        DownStage {
            down,
            n1: batch_norm2d(&p / "norm1", cout),
            conv,
            n2: batch_norm2d(&p / "norm2", cout),
        }
    }

    /// `train` selects batch statistics (and updates the running ones) or running ones.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let h = self.n1.forward_t(&self.down.forward(x), train).gelu("tanh");
        &h + self.n2.forward_t(&h.apply(&self.conv), train).gelu("tanh")
    }
}

/// The first stage's default downsampling: a stride-2 3×3 convolution.
pub fn default_stem() -> i64 {
    2
}

/// Whether a config's `stem` is the default (left out when a config is written, so the
/// architecture of runs made before the option existed still matches on resume).
pub fn is_default_stem(stem: &i64) -> bool {
    *stem == default_stem()
}

/// How many times a [`ConvEncoder`] of `stages` stages with this `stem` shrinks an image.
pub fn total_stride(stages: usize, stem: i64) -> i64 {
    stem << stages.saturating_sub(1)
}

/// A stack of [`DownStage`]s: `(B, 3, S, S)` → `(B, C, S/2^n, S/2^n)`, or with a patchify
/// stem of stride s, `S/(s·2^(n-1))`.
#[derive(Debug)]
pub struct ConvEncoder {
    stages: Vec<DownStage>,
}

impl ConvEncoder {
    pub fn new(p: nn::Path, channels: &[i64]) -> Self {
        Self::with_stem(p, channels, default_stem())
    }

    /// The first stage downsamples by `stem` (see [`DownStage::with_stride`]): a stem of 4
    /// halves a CPU step's cost by skipping the costliest, full-width stage.
    pub fn with_stem(p: nn::Path, channels: &[i64], stem: i64) -> Self {
        let mut cin = 3;
        let stages = channels
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let stride = if i == 0 { stem } else { 2 };
                let s = DownStage::with_stride(&p / format!("stage{i}"), cin, c, stride);
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
