//! The attribute probe: a CNN classifier that reads the embedded set's attributes (sky,
//! ground, style, which kinds are present and each present object's colour, size,
//! position and detail) off an image. Trained on real training images only, it grades
//! generated images ("probe attribute accuracy") and its kind posteriors give an
//! Inception-Score-style score.

use crate::nn::conv::{default_stem, is_default_stem, total_stride, ConvEncoder};
use crate::scenes::heads::{AttributeHeads, AttributeLogits, CELL_HEADS, CELL_KINDS, GLOBAL_HEADS};
use crate::scenes::scene::{
    detail_classes, position_name, Detail, Scene, COLOURS, GROUNDS, KINDS, SIZES, SKIES, STYLES,
};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    pub image_size: i64,
    pub channels: Vec<i64>,
    pub hidden: i64,
    /// Downsampling of the first stage: 2 (a 3×3 convolution, the default) or a larger
    /// patchify stride.
    #[serde(default = "default_stem", skip_serializing_if = "is_default_stem")]
    pub stem: i64,
}

pub(crate) fn detail_index(d: Detail) -> Option<i64> {
    Some(match d {
        Detail::None => return None,
        Detail::Door(c) | Detail::Sail(c) | Detail::Flag(c) => c as i64,
        Detail::Pointed(b) | Detail::SnowCap(b) | Detail::Rays(b) | Detail::Crescent(b) => b as i64,
    })
}

/// The facts (as the caption parser writes them) that a row in the [`targets`] layout
/// asserts, details left out: sky, ground, style, and each present kind's colour, size
/// and position. Lets a probe's reading of an image be compared with a caption.
pub fn facts_of_row(row: &[i64]) -> Vec<String> {
    let name = |table: &[&str], i: i64| table.get(i as usize).map(|s| s.to_string());
    let mut f = vec![];
    for (key, table, i) in [
        ("sky", &SKIES, 0),
        ("ground", &GROUNDS, 1),
        ("style", &STYLES, 2),
    ] {
        if let Some(v) = row.get(i).and_then(|&x| name(table.as_slice(), x)) {
            f.push(format!("{key}={v}"));
        }
    }
    for (k, kind) in KINDS.iter().enumerate() {
        let c = &row[(3 + 5 * k).min(row.len())..(8 + 5 * k).min(row.len())];
        if c.len() < 4 || c[0] != 1 {
            continue;
        }
        if let Some((colour, _)) = COLOURS.get(c[1] as usize) {
            f.push(format!("{kind}.colour={colour}"));
        }
        if let Some(size) = SIZES.get(c[2] as usize) {
            f.push(format!("{kind}.size={size}"));
        }
        if (0..9).contains(&c[3]) {
            f.push(format!("{kind}.position={}", position_name(c[3] as usize)));
        }
    }
    f.sort();
    f
}

/// Whether a fact is one [`facts_of_row`] can assert (not a detail).
pub fn is_probe_fact(fact: &str) -> bool {
    let attr = fact.split('=').next().unwrap_or_default();
    matches!(attr, "sky" | "ground" | "style")
        || [".colour", ".size", ".position"]
            .iter()
            .any(|a| attr.ends_with(a))
}

/// Rows of [`targets`] have this many columns: sky, ground, style, then five per kind.
pub const TARGET_COLUMNS: usize = 3 + 5 * KINDS.len();
/// Training targets: sky, ground, style, then per cell of the 3×3 grid its kind (10 =
/// empty), colour, size and detail (-1 where they do not apply).
pub fn cell_targets(scene: &Scene) -> Vec<i64> {
    let mut t = vec![scene.sky as i64, scene.ground as i64, scene.style as i64];
    for cell in 0..9 {
        match scene.objects.iter().find(|o| o.pos == cell) {
            Some(o) => t.extend([
                o.kind as i64,
                o.colour as i64,
                o.size as i64,
                detail_index(o.detail).unwrap_or(-1),
            ]),
            None => t.extend([KINDS.len() as i64, -1, -1, -1]),
        }
    }
    t
}

/// Class targets of a scene in the evaluation layout, -1 where a head does not apply:
/// sky, ground, style, then per kind presence, colour, size, position, detail.
pub fn targets(scene: &Scene) -> Vec<i64> {
    let mut t = vec![scene.sky as i64, scene.ground as i64, scene.style as i64];
    for k in 0..KINDS.len() {
        match scene.objects.iter().find(|o| o.kind == k) {
            Some(o) => t.extend([
                1,
                o.colour as i64,
                o.size as i64,
                o.pos as i64,
                detail_index(o.detail).unwrap_or(-1),
            ]),
            None => t.extend([0, -1, -1, -1, -1]),
        }
    }
    t
}

/// The probe: a CNN under the [`AttributeHeads`], reading the scene the way it is built.
pub struct Probe {
    pub cfg: ProbeConfig,
    conv: ConvEncoder,
    heads: AttributeHeads,
}

impl Probe {
    pub fn new(p: &nn::Path, cfg: &ProbeConfig) -> Result<Self> {
        if cfg.stem < 2 {
            bail!("probe: stem {} must be at least 2", cfg.stem);
        }
        let down = total_stride(cfg.channels.len(), cfg.stem);
        if cfg.channels.is_empty() || cfg.image_size % down != 0 || cfg.image_size / down < 3 {
            bail!(
                "probe: image_size {} must be divisible by {down} (stem {} then 2 per further stage) and leave a grid of at least 3×3",
                cfg.image_size,
                cfg.stem,
            );
        }
        let c = *cfg.channels.last().expect("channels checked non-empty");
        Ok(Probe {
            cfg: cfg.clone(),
            conv: ConvEncoder::with_stem(p / "cnn", &cfg.channels, cfg.stem),
            heads: AttributeHeads::new(p, c, cfg.hidden, true),
        })
    }

    fn logits(&self, images: &Tensor, train: bool) -> AttributeLogits {
        self.heads.logits(&self.conv.forward(images, train), train)
    }

    /// The heads' logits for inference: global `(B, 12)` (sky 4, ground 4, style 4) and
    /// per cell `(B, 9, 34)` (kind, colour, size, detail); what the export traces.
    pub fn head_logits(&self, images: &Tensor) -> (Tensor, Tensor) {
        let l = self.logits(images, false);
        (l.global, l.cells)
    }

    /// Cross-entropy of every head that applies; `targets` `(B, 39)` from [`cell_targets`].
    pub fn loss(&self, images: &Tensor, targets: &Tensor, train: bool) -> Tensor {
        self.heads
            .loss(&self.conv.forward(images, train), targets, train)
    }

    /// Predictions in the evaluation layout of [`targets`], one row per image.
    pub fn predict_rows(&self, images: &Tensor) -> Vec<Vec<i64>> {
        rows_from_logits(&tch::no_grad(|| self.logits(images, false)))
    }

    /// Kind posteriors `(B, 10)`: for each kind the largest probability any cell gives
    /// it, normalised to sum to one (the class distribution of the IS-style score).
    pub fn kind_posteriors(&self, images: &Tensor) -> Tensor {
        let l = tch::no_grad(|| self.logits(images, false));
        let p = l
            .cells
            .narrow(2, 0, CELL_KINDS)
            .softmax(2, Kind::Float)
            .narrow(2, 0, KINDS.len() as i64);
        let p = p.amax([1i64].as_slice(), false); // (B, 10)
        &p / p.sum_dim_intlist(1, true, Kind::Float).clamp_min(1e-8)
    }
}

/// Heads' logits read as predictions in the evaluation layout of [`targets`], one row
/// per image: what the probe grades with, and how the captioner's own heads are checked.
pub fn rows_from_logits(l: &AttributeLogits) -> Vec<Vec<i64>> {
    let b = l.global.size()[0];
    let global: Vec<Vec<i64>> = Vec::try_from(
        Tensor::stack(
            &GLOBAL_HEADS.map(|(o, w)| l.global.narrow(1, o, w).argmax(1, false)),
            1,
        )
        .to_device(tch::Device::Cpu),
    )
    .expect("argmax gives int64");
    let kind_p = l
        .cells
        .narrow(2, 0, CELL_KINDS)
        .softmax(2, Kind::Float)
        .to_device(tch::Device::Cpu); // (B, 9, 11)
    let kind_p: Vec<Vec<Vec<f32>>> = Vec::try_from(kind_p).expect("a tensor of the kind we made");
    let arg = |j: usize| -> Vec<Vec<i64>> {
        let (o, w) = CELL_HEADS[j];
        Vec::try_from(
            l.cells
                .narrow(2, o, w)
                .argmax(2, false)
                .to_device(tch::Device::Cpu),
        )
        .expect("a tensor of the kind we made")
    };
    let (colour, size) = (arg(1), arg(2));
    let binary: Vec<Vec<i64>> = Vec::try_from(
        l.cells
            .narrow(2, CELL_HEADS[3].0, 2)
            .argmax(2, false)
            .to_device(tch::Device::Cpu),
    )
    .expect("a tensor of the kind we made");
    let detail_colour = arg(3);
    (0..b as usize)
        .map(|i| {
            let mut row = global[i].clone();
            for k in 0..KINDS.len() {
                // The cell most confident that it holds kind k, if any cell's best guess is k.
                let best = (0..9)
                    .filter(|&c| {
                        let p = &kind_p[i][c];
                        (0..CELL_KINDS as usize).max_by(|&a, &b| p[a].total_cmp(&p[b])) == Some(k)
                    })
                    .max_by(|&a, &b| kind_p[i][a][k].total_cmp(&kind_p[i][b][k]));
                match best {
                    Some(c) => {
                        let detail = match detail_classes(k) as i64 {
                            0 => -1,
                            2 => binary[i][c],
                            _ => detail_colour[i][c],
                        };
                        row.extend([1, colour[i][c], size[i][c], c as i64, detail]);
                    }
                    None => row.extend([0, -1, -1, -1, -1]),
                }
            }
            row
        })
        .collect()
}

/// Slot accuracy of predictions against truth targets (rows of [`targets`]): every image
/// counts sky, ground, style and the presence of each kind; each truly present object
/// also counts its colour, size, position and detail.
pub fn attribute_accuracy(pred: &[Vec<i64>], truth: &[Vec<i64>]) -> f64 {
    let counts = slot_counts(pred, truth);
    let ok: usize = counts.iter().map(|c| c.0).sum();
    let n: usize = counts.iter().map(|c| c.1).sum();
    ok as f64 / n.max(1) as f64
}

/// The slots of [`attribute_accuracy`], in the order [`slot_counts`] counts them.
pub const SLOTS: [&str; 8] = [
    "sky", "ground", "style", "presence", "colour", "size", "position", "detail",
];

/// Accuracy of each slot of [`SLOTS`] (attributes of truly present objects; a missed
/// object gets none of its attributes), to see where the probe errs.
pub fn slot_accuracies(pred: &[Vec<i64>], truth: &[Vec<i64>]) -> Vec<(&'static str, f64)> {
    SLOTS
        .iter()
        .zip(slot_counts(pred, truth))
        .map(|(name, (ok, n))| (*name, ok as f64 / n.max(1) as f64))
        .collect()
}

/// (correct, counted) per slot of [`SLOTS`].
fn slot_counts(pred: &[Vec<i64>], truth: &[Vec<i64>]) -> [(usize, usize); 8] {
    let mut c = [(0usize, 0usize); 8];
    let mut count = |slot: usize, right: bool| {
        c[slot].0 += usize::from(right);
        c[slot].1 += 1;
    };
    for (p, t) in pred.iter().zip(truth) {
        for i in 0..3 {
            count(i, p[i] == t[i]);
        }
        for k in 0..KINDS.len() {
            let b = 3 + 5 * k;
            count(3, p[b] == t[b]);
            if t[b] == 1 {
                for j in 1..5 {
                    if t[b + j] >= 0 {
                        count(3 + j, p[b] == 1 && p[b + j] == t[b + j]);
                    }
                }
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenes::heads::DETAIL_WIDTH;
    use rand::SeedableRng;

    #[test]
    fn targets_fit_heads_and_perfect_predictions_score_one() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let scenes: Vec<Scene> = (0..50).map(|_| Scene::sample(&mut rng)).collect();
        let t: Vec<Vec<i64>> = scenes.iter().map(targets).collect();
        for (scene, row) in scenes.iter().zip(&t) {
            assert_eq!(row.len(), TARGET_COLUMNS);
            let c = cell_targets(scene);
            assert_eq!(c.len(), 3 + 36);
            for cell in 0..9 {
                assert!(c[3 + 4 * cell] < CELL_KINDS && c[3 + 4 * cell + 3] < DETAIL_WIDTH);
            }
        }
        assert_eq!(attribute_accuracy(&t, &t), 1.0);
        let shuffled: Vec<Vec<i64>> = t.iter().rev().cloned().collect();
        assert!(attribute_accuracy(&shuffled, &t) < 0.8);
    }

    #[test]
    fn predictions_have_the_evaluation_layout() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let p = Probe::new(
            &vs.root(),
            &ProbeConfig {
                image_size: 32,
                channels: vec![8, 16],
                hidden: 16,
                stem: 2,
            },
        )
        .unwrap();
        let rows = p.predict_rows(&Tensor::zeros(
            [2, 3, 32, 32],
            (Kind::Float, tch::Device::Cpu),
        ));
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.len() == TARGET_COLUMNS));
        let post = p.kind_posteriors(&Tensor::zeros(
            [2, 3, 32, 32],
            (Kind::Float, tch::Device::Cpu),
        ));
        assert!((post.sum(Kind::Float).double_value(&[]) - 2.0).abs() < 1e-4);
    }
}

#[cfg(test)]
mod stem_tests {
    use super::*;

    fn config(image_size: i64, stem: i64) -> ProbeConfig {
        ProbeConfig {
            image_size,
            channels: vec![8, 16],
            hidden: 16,
            stem,
        }
    }

    #[test]
    fn a_patchify_stem_reads_the_grid_and_impossible_strides_are_refused() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let p = Probe::new(&vs.root(), &config(48, 4)).unwrap();
        let (global, cells) = p.head_logits(&Tensor::zeros(
            [2, 3, 48, 48],
            (Kind::Float, tch::Device::Cpu),
        ));
        assert_eq!(global.size(), [2, 12]);
        assert_eq!(cells.size(), [2, 9, 34]);
        // The stem is one 4×4 patchify convolution, not a 3×3 one.
        let stem = vs
            .variables()
            .into_iter()
            .find(|(n, _)| n == "cnn.stage0.down.weight")
            .unwrap()
            .1;
        assert_eq!(stem.size(), [8, 3, 4, 4]);
        for (size, stem, why) in [(48, 1, "stem 1"), (44, 4, "divisible by 8"), (16, 4, "3×3")] {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let err = Probe::new(&vs.root(), &config(size, stem)).err().unwrap();
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
    }
}

#[cfg(test)]
mod fact_tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_scenes_target_row_asserts_its_facts_minus_details() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..50 {
            let scene = Scene::sample(&mut rng);
            let want: Vec<String> = scene
                .facts()
                .into_iter()
                .filter(|f| is_probe_fact(f))
                .collect();
            assert_eq!(facts_of_row(&targets(&scene)), want);
        }
    }
}
