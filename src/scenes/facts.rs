//! Painting from the scene's facts (`model.facts`, embedded set): a reader that learns
//! the paragraph's facts (sky, ground, style, and each 3×3 cell's kind, colour, size
//! and detail) from the caption tokens, and the embedding of those facts that the
//! generator paints from: a global vector and one vector per cell, which modulate the
//! generator place by place.
//!
//! Why: on the embedded set (docs/results.md), a generator trained end to end from
//! the caption does not learn, in a CPU budget, which words describe which place: the
//! pixel loss drowns the text side's gradient. Splitting the job (Hong et al. 2018,
//! "Inferring Semantic Layout for Hierarchical Text-to-Image Synthesis") gives each half
//! a loss it can learn from: the reader is taught the facts by cross-entropy, and the
//! generator paints from a small, exact, spatially arranged condition.

use crate::models::text_encoder::Encoded;
use crate::nn::place_reader::LayoutReader;
use crate::scenes::heads::{
    CELL_HEADS, CELL_KINDS, CELL_WIDTH, DETAIL_WIDTH, GLOBAL_HEADS, GLOBAL_WIDTH,
};
use crate::scenes::scene::{detail_classes, is_sky_kind, KINDS, MAX_OBJECTS};
use tch::{nn, nn::Module, Kind, Tensor};

/// The facts as per-head distributions: `global` `(B, 12)` (sky, ground, style) and
/// `cells` `(B, 9, 34)` (kind or empty, colour, size, detail), in the layout of
/// [`crate::scenes::heads::AttributeLogits`].
pub struct Facts {
    pub global: Tensor,
    pub cells: Tensor,
}

impl Facts {
    /// The facts of target rows `(B, 39)` (rows of [`crate::scenes::probe::cell_targets`])
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

/// The most likely facts of logits `(B, 12)` and `(B, 9, 34)`, as target rows `(B, 39)`
/// (the layout [`Facts::one_hot`] reads): each head's argmax, with -1 where a head does
/// not apply (the colour, size and detail of an empty cell, the detail of a kind without
/// one), and kept to the rules every scene of the embedded set follows: a kind's detail
/// among that kind's own values, sky kinds in the top two rows and the others in the
/// bottom two, each kind once (in the cell surest of it), at most
/// [`MAX_OBJECTS`] objects (the surest).
/// Sampling a scene this way gives the decoders facts of the kind they were trained on.
pub fn most_likely_rows(global: &Tensor, cells: &Tensor) -> Tensor {
    let device = global.device();
    let global = per_head(&GLOBAL_HEADS, 1, |_, o, w| {
        global.narrow(1, o, w).argmax(1, true)
    });
    let head = |j: usize| {
        let (o, w) = CELL_HEADS[j];
        cells.narrow(2, o, w)
    };
    // Sky kinds live in the top two rows, the others in the bottom two.
    let allowed: Vec<bool> = (0..9)
        .flat_map(|cell| {
            (0..CELL_KINDS as usize).map(move |k| {
                let sky_row = cell / 3 < 2;
                let ground_row = cell / 3 > 0;
                k == KINDS.len() || if is_sky_kind(k) { sky_row } else { ground_row }
            })
        })
        .collect();
    let allowed = Tensor::from_slice(&allowed)
        .view([9, CELL_KINDS])
        .to_device(device);
    let kinds = head(0).masked_fill(&allowed.logical_not(), f64::NEG_INFINITY);
    // How sure each cell is of its kind, and the kind: (B, 9) each.
    let (sure, kind) = kinds.softmax(-1, Kind::Float).max_dim(2, false);
    // Cell i is beaten by cell j when j is surer (or as sure and earlier in reading
    // order): (B, 9 this, 9 other).
    let (this, other) = (sure.unsqueeze(2), sure.unsqueeze(1));
    let earlier = Tensor::ones([9, 9], (Kind::Bool, device)).tril(-1);
    let beaten = other
        .gt_tensor(&this)
        .logical_or(&other.eq_tensor(&this).logical_and(&earlier));
    // A kind read in two cells stays in the surer one.
    let same = kind.unsqueeze(2).eq_tensor(&kind.unsqueeze(1));
    let repeated = same.logical_and(&beaten).any_dim(2, false);
    let kind = kind.masked_fill(&repeated, CELL_KINDS - 1);
    // At most MAX_OBJECTS objects: the surest.
    let occupied = kind.ne(CELL_KINDS - 1);
    let surer_objects =
        beaten
            .logical_and(&occupied.unsqueeze(1))
            .sum_dim_intlist(2, false, Kind::Int64);
    let kind = kind.masked_fill(&surer_objects.ge(MAX_OBJECTS as i64), CELL_KINDS - 1);
    let empty = kind.eq(CELL_KINDS - 1);
    // Detail classes per kind class; "empty" has none.
    let classes: Vec<i64> = (0..CELL_KINDS as usize)
        .map(|k| detail_classes(k) as i64)
        .collect();
    let n = Tensor::from_slice(&classes)
        .to_device(device)
        .index_select(0, &kind.flatten(0, -1))
        .view_as(&kind);
    let valid = Tensor::arange(DETAIL_WIDTH, (Kind::Int64, device)).lt_tensor(&n.unsqueeze(-1));
    let detail = head(3)
        .masked_fill(&valid.logical_not(), f64::NEG_INFINITY)
        .argmax(2, false)
        .masked_fill(&n.eq(0), -1);
    let colour = head(1).argmax(2, false).masked_fill(&empty, -1);
    let size = head(2).argmax(2, false).masked_fill(&empty, -1);
    let cells = Tensor::stack(&[kind, colour, size, detail], 2).flatten(1, 2);
    Tensor::cat(&[global, cells], 1)
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
    fn most_likely_rows_keep_to_facts_a_scene_can_have() {
        // Sky 2, ground 0, style 1; cell 0 holds a sun (kind 0, detail yes/no) whose
        // detail logits favour class 7, which a sun's detail cannot take; cell 4 holds a
        // cloud (kind 2, no detail); the other cells are empty but favour colour 3.
        let global = Tensor::zeros([1, GLOBAL_WIDTH], (Kind::Float, tch::Device::Cpu));
        for (i, c) in [(0, 2), (1, 0), (2, 1)] {
            let _ = global.narrow(1, GLOBAL_HEADS[i].0 + c, 1).fill_(5.0);
        }
        let cells = Tensor::zeros([1, 9, CELL_WIDTH], (Kind::Float, tch::Device::Cpu));
        let set = |cell: i64, head: usize, class: i64, v: f64| {
            let _ = cells
                .get(0)
                .get(cell)
                .narrow(0, CELL_HEADS[head].0 + class, 1)
                .fill_(v);
        };
        for cell in 0..9 {
            set(cell, 0, CELL_KINDS - 1, 1.0);
            set(cell, 1, 3, 1.0);
        }
        set(0, 0, 0, 5.0);
        set(0, 1, 6, 5.0);
        set(0, 2, 2, 5.0);
        set(0, 3, 7, 9.0);
        set(0, 3, 1, 2.0);
        set(4, 0, 2, 5.0);
        set(4, 3, 4, 9.0);
        // A second, less sure cloud (cell 1): each kind is kept once.
        set(1, 0, 2, 4.0);
        // A sun in the bottom row (cell 6), where no sun can be: the cell stays empty.
        set(6, 0, 0, 9.0);
        // A bird (cell 2) and a moon (cell 3) surer than the sun and the cloud, and a
        // tree (cell 5) and a house (cell 7) less sure: six objects, the surest four kept.
        set(2, 0, 3, 6.0);
        set(3, 0, 1, 6.0);
        set(5, 0, 4, 3.0);
        set(7, 0, 5, 3.5);
        let rows: Vec<i64> = Vec::try_from(most_likely_rows(&global, &cells).view([-1])).unwrap();
        let mut want = vec![2i64, 0, 1, 0, 6, 2, 1];
        for cell in 1..9 {
            want.extend(match cell {
                2 => [3, 3, 0, -1],
                3 => [1, 3, 0, 0],
                4 => [2, 3, 0, -1],
                _ => [CELL_KINDS - 1, -1, -1, -1],
            });
        }
        assert_eq!(rows, want);
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
