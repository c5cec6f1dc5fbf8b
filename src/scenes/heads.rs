//! Cell-structured attribute heads for the embedded set: global heads (sky, ground,
//! style) on the pooled feature map, and one head shared by the nine cells of the 3×3
//! scene grid (kind or empty, colour, size, detail) on features pooled per cell. The
//! probe is a CNN under these heads; the captioner can train its encoder with them as an
//! auxiliary loss (`model.attribute_weight`).

use crate::scenes::scene::{COLOURS, KINDS};
use crate::util::draws;
use tch::{nn, nn::Module, Kind, Tensor};

/// Classes of the per-cell kind head: the ten kinds, then "empty".
pub(crate) const CELL_KINDS: i64 = KINDS.len() as i64 + 1;
/// The per-cell detail head is as wide as the widest detail (a colour).
pub(crate) const DETAIL_WIDTH: i64 = COLOURS.len() as i64;
/// (offset, width) of the sky, ground and style heads in the global logits.
pub(crate) const GLOBAL_HEADS: [(i64, i64); 3] = [(0, 4), (4, 4), (8, 4)];
/// Width of the global logits.
pub(crate) const GLOBAL_WIDTH: i64 = 12;
/// Width of each cell's logits.
pub(crate) const CELL_WIDTH: i64 = CELL_KINDS + 10 + 3 + DETAIL_WIDTH;
/// (offset, width) of the kind, colour, size and detail heads in each cell's logits.
pub(crate) const CELL_HEADS: [(i64, i64); 4] = [
    (0, CELL_KINDS),
    (CELL_KINDS, 10),
    (CELL_KINDS + 10, 3),
    (CELL_KINDS + 13, DETAIL_WIDTH),
];

/// The heads' logits for a batch.
pub struct AttributeLogits {
    /// `(B, 12)`: sky 4, ground 4, style 4.
    pub global: Tensor,
    /// `(B, 9, 11 + 10 + 3 + 10)`: kind, colour, size, detail.
    pub cells: Tensor,
    /// The hidden states the logits are read from: the scene `(B, 1, H)` and each cell
    /// `(B, 9, H)`, joined `(B, 10, H)`. The captioner can attend to them.
    pub hidden: Tensor,
}

/// Sharing the cell head across positions is what lets it generalise from a few
/// thousand images.
pub struct AttributeHeads {
    mix: Option<nn::Conv2D>,
    cell_pos: Tensor,
    global_fc: nn::Linear,
    global_out: nn::Linear,
    cell_fc: nn::Linear,
    cell_out: nn::Linear,
}

impl AttributeHeads {
    /// Heads over a feature map of `channels` channels with hidden layers of `hidden`;
    /// `mix` adds a residual 3×3 convolution before pooling. Their variables sit directly
    /// under `p` (the probe's checkpoint names).
    pub fn new(p: &nn::Path, channels: i64, hidden: i64, mix: bool) -> Self {
        let c = channels;
        AttributeHeads {
            // A wider view before pooling: objects overflow their cell.
            mix: mix.then(|| {
                nn::conv2d(
                    p / "mix",
                    c,
                    c,
                    3,
                    nn::ConvConfig {
                        padding: 1,
                        ..Default::default()
                    },
                )
            }),
            cell_pos: p.var(
                "cell_pos",
                &[9, c],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            ),
            global_fc: nn::linear(p / "global_fc", c, hidden, Default::default()),
            global_out: nn::linear(p / "global_out", hidden, GLOBAL_WIDTH, Default::default()),
            cell_fc: nn::linear(p / "cell_fc", c, hidden, Default::default()),
            cell_out: nn::linear(p / "cell_out", hidden, CELL_WIDTH, Default::default()),
        }
    }

    /// Logits from a feature map `(B, C, g, g)` with g ≥ 3.
    pub fn logits(&self, f: &Tensor, train: bool) -> AttributeLogits {
        let f = match &self.mix {
            Some(mix) => (f + f.apply(mix).gelu("tanh")).gelu("tanh"),
            None => f.shallow_clone(),
        };
        let global = f.mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        let global_h = self.global_fc.forward(&global).gelu("tanh");
        let global = draws::dropout(&global_h, 0.1, train).apply(&self.global_out);
        let cells = f.adaptive_avg_pool2d([3, 3]).flatten(2, 3).transpose(1, 2) + &self.cell_pos; // (B, 9, C)
        let cells_h = self.cell_fc.forward(&cells).gelu("tanh");
        let cells = draws::dropout(&cells_h, 0.1, train).apply(&self.cell_out);
        AttributeLogits {
            global,
            cells,
            hidden: Tensor::cat(&[global_h.unsqueeze(1), cells_h], 1),
        }
    }

    /// Cross-entropy of every head that applies, summed; `targets` `(B, 39)` are rows of
    /// [`crate::scenes::probe::cell_targets`] (-1 where a head does not apply).
    pub fn loss(&self, f: &Tensor, targets: &Tensor, train: bool) -> Tensor {
        let l = self.logits(f, train);
        attribute_loss(&l.global, &l.cells, targets)
    }
}

/// The loss of [`AttributeHeads::loss`] for logits computed elsewhere: `global` `(B, 12)`
/// and `cells` `(B, 9, 34)` in the layout of [`AttributeLogits`].
pub fn attribute_loss(global: &Tensor, cells: &Tensor, targets: &Tensor) -> Tensor {
    // Mean over the rows where a head applies (ignored targets are -1); a batch where
    // none does adds zero, not the NaN of an empty mean.
    let masked_mean = |logits: &Tensor, t: &Tensor| {
        let n = t.ge(0).sum(Kind::Float);
        let sum = logits.cross_entropy_loss::<Tensor>(t, None, tch::Reduction::Sum, -1, 0.0);
        crate::distributed::global_mean(&sum, &n)
    };
    let mut total = Tensor::zeros([], (Kind::Float, global.device()));
    for (i, (off, w)) in GLOBAL_HEADS.iter().enumerate() {
        total += masked_mean(&global.narrow(1, *off, *w), &targets.select(1, i as i64));
    }
    let cell_t = targets.narrow(1, 3, 36).view([-1, 9, 4]);
    for (j, (off, w)) in CELL_HEADS.iter().enumerate() {
        let logits = cells.narrow(2, *off, *w).reshape([-1, *w]);
        total += masked_mean(&logits, &cell_t.select(2, j as i64).reshape([-1]));
    }
    total
}
