//! Painting from the scene's facts (`model.facts`, embedded set): a reader that learns
//! the paragraph's facts (sky, ground, style, and each 3×3 cell's kind, colour, size
//! and detail) from the caption tokens, and the embedding of those facts that the
//! generator paints from: a global vector and one vector per cell, which modulate the
//! generator place by place.
//!
//! Why: sessions 6–8 (docs/results.md) showed that a generator trained end to end from
//! the caption does not learn, in a CPU budget, which words describe which place: the
//! pixel loss drowns the text side's gradient. Splitting the job (Hong et al. 2018,
//! "Inferring Semantic Layout for Hierarchical Text-to-Image Synthesis") gives each half
//! a loss it can learn from: the reader is taught the facts by cross-entropy, and the
//! generator paints from a small, exact, spatially arranged condition.

use super::layout::LayoutReader;
use crate::models::attribute_heads::{CELL_HEADS, CELL_WIDTH, GLOBAL_HEADS, GLOBAL_WIDTH};
use crate::models::text_encoder::Encoded;
use tch::{nn, nn::Module, Kind, Tensor};

/// The facts as per-head distributions: `global` `(B, 12)` (sky, ground, style) and
/// `cells` `(B, 9, 34)` (kind or empty, colour, size, detail), in the layout of
/// [`crate::models::attribute_heads::AttributeLogits`].
pub struct Facts {
    pub global: Tensor,
    pub cells: Tensor,
}

impl Facts {
    /// The facts of target rows `(B, 39)` (rows of [`crate::models::probe::cell_targets`])
    /// as one-hot distributions; a head that does not apply (-1: the colour of an empty
    /// cell, the detail of a kind without one) is all zeros.
    pub fn one_hot(targets: &Tensor) -> Facts {
        let one_hot = |t: &Tensor, width: i64| {
            // -1 → class 0 of a zero row: one_hot cannot take negative classes.
            let valid = t.ge(0);
            t.clamp_min(0).one_hot(width).to_kind(Kind::Float) * valid.unsqueeze(-1)
        };
        let global = per_head(&GLOBAL_HEADS, 1, |i, _, w| {
            one_hot(&targets.select(1, i), w)
        });
        let cell_t = targets.narrow(1, 3, 36).unflatten(1, [9, 4]);
        let cells = per_head(&CELL_HEADS, 2, |j, _, w| one_hot(&cell_t.select(2, j), w));
        Facts { global, cells }
    }

    /// The facts a reader's logits stand for: a softmax per head, with a cell's colour,
    /// size and detail scaled by the probability that the cell holds an object, as the
    /// one-hot facts of an empty cell carry none.
    pub fn from_logits(global: &Tensor, cells: &Tensor) -> Facts {
        let softmax = |x: &Tensor, dim: i64, heads: &[(i64, i64)]| {
            per_head(heads, dim, |_, o, w| {
                x.narrow(dim, o, w).softmax(-1, Kind::Float)
            })
        };
        let global = softmax(global, 1, &GLOBAL_HEADS);
        let cells = softmax(cells, 2, &CELL_HEADS);
        let (_, kinds) = CELL_HEADS[0];
        // The last kind class is "empty".
        let occupied = cells.narrow(2, kinds - 1, 1).neg() + 1.0; // (B, 9, 1)
        let cells = Tensor::cat(
            &[
                cells.narrow(2, 0, kinds),
                cells.narrow(2, kinds, CELL_WIDTH - kinds) * occupied,
            ],
            2,
        );
        Facts { global, cells }
    }
}

/// One piece per head `(index, offset, width)`, joined along `dim` in the heads' order.
fn per_head(heads: &[(i64, i64)], dim: i64, piece: impl Fn(i64, i64, i64) -> Tensor) -> Tensor {
    let pieces: Vec<Tensor> = heads
        .iter()
        .enumerate()
        .map(|(i, &(o, w))| piece(i as i64, o, w))
        .collect();
    Tensor::cat(&pieces, dim)
}

/// The text side's fact reader: the caption's pooled vector gives the global facts, and
/// nine place queries (a [`LayoutReader`]) each read their cell's.
pub struct FactReader {
    places: LayoutReader,
    global_head: nn::Sequential,
    cell_head: nn::Sequential,
}

fn head(p: nn::Path, dim: i64, out: i64) -> nn::Sequential {
    nn::seq()
        .add(nn::linear(&p / "fc", dim, 2 * dim, Default::default()))
        .add_fn(|x| x.gelu("tanh"))
        .add(nn::linear(&p / "out", 2 * dim, out, Default::default()))
}

impl FactReader {
    pub fn new(p: nn::Path, dim: i64) -> Self {
        FactReader {
            places: LayoutReader::new(&p / "places", 3, dim),
            global_head: head(&p / "global", dim, GLOBAL_WIDTH),
            cell_head: head(&p / "cell", dim, CELL_WIDTH),
        }
    }

    /// Logits `(B, 12)` and `(B, 9, 34)` of the facts of encoded captions.
    pub fn logits(&self, text: &Encoded) -> (Tensor, Tensor) {
        let global = text.pooled.apply(&self.global_head);
        let cells = self
            .places
            .forward(&text.seq, &text.mask)
            .apply(&self.cell_head);
        (global, cells)
    }
}

/// What the generator paints from: a global vector `(B, D)` from the global facts, and
/// a vector per cell `(B, 9, D)` from the cell's facts plus a learned place embedding.
pub struct FactEmbedding {
    global: nn::Linear,
    cell: nn::Linear,
    places: Tensor,
}

impl FactEmbedding {
    pub fn new(p: nn::Path, dim: i64) -> Self {
        FactEmbedding {
            global: nn::linear(&p / "global", GLOBAL_WIDTH, dim, Default::default()),
            cell: nn::linear(&p / "cell", CELL_WIDTH, dim, Default::default()),
            places: p.var(
                "places",
                &[9, dim],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.5,
                },
            ),
        }
    }

    pub fn forward(&self, facts: &Facts) -> (Tensor, Tensor) {
        (
            self.global.forward(&facts.global),
            self.cell.forward(&facts.cells) + &self.places,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_hot_marks_each_fact_and_leaves_missing_heads_empty() {
        // Sky 1, ground 2, style 3; cell 0 holds kind 4, colour 5, size 1, no detail;
        // the other cells are empty (kind 10).
        let mut row = vec![1i64, 2, 3, 4, 5, 1, -1];
        for _ in 1..9 {
            row.extend([10, -1, -1, -1]);
        }
        let f = Facts::one_hot(&Tensor::from_slice(&row).unsqueeze(0));
        assert_eq!(f.global.size(), [1, GLOBAL_WIDTH]);
        assert_eq!(f.cells.size(), [1, 9, CELL_WIDTH]);
        let g: Vec<f32> = Vec::try_from(f.global.view([-1])).unwrap();
        assert_eq!(g.iter().sum::<f32>(), 3.0);
        assert_eq!(g[1] + g[4 + 2] + g[8 + 3], 3.0);
        let c0: Vec<f32> = Vec::try_from(f.cells.get(0).get(0)).unwrap();
        assert_eq!(
            c0.iter().sum::<f32>(),
            3.0,
            "kind, colour and size; no detail"
        );
        assert_eq!(c0[4] + c0[11 + 5] + c0[21 + 1], 3.0);
        let c1: Vec<f32> = Vec::try_from(f.cells.get(0).get(1)).unwrap();
        assert_eq!(
            c1.iter().sum::<f32>(),
            1.0,
            "an empty cell is its kind only"
        );
        assert_eq!(c1[10], 1.0);
    }

    #[test]
    fn confident_logits_give_the_one_hot_facts() {
        let mut row = vec![0i64, 3, 2, 7, 9, 2, 4];
        for _ in 1..9 {
            row.extend([10, -1, -1, -1]);
        }
        let truth = Facts::one_hot(&Tensor::from_slice(&row).unsqueeze(0));
        // Logits far apart where the truth is one-hot; the heads that do not apply
        // (an empty cell's colour) get arbitrary logits.
        let global = (&truth.global * 40.0) - 20.0;
        let cells = (&truth.cells * 40.0) - 20.0 + truth.cells.rand_like();
        let read = Facts::from_logits(&global, &cells);
        assert!(read.global.allclose(&truth.global, 1e-6, 1e-6, false));
        let diff = (&read.cells - &truth.cells).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "an empty cell's colour is scaled away: {diff}");
    }
}
