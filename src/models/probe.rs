//! The attribute probe: a CNN classifier that reads the embedded set's attributes (sky,
//! ground, style, which kinds are present and each present object's colour, size,
//! position and detail) off an image. Trained on real training images only, it grades
//! generated images ("probe attribute accuracy") and its kind posteriors give an
//! Inception-Score-style score.

use crate::data::synth::scene::{Detail, Scene, COLOURS, GROUNDS, KINDS, SIZES, SKIES, STYLES};
use crate::nn::conv::ConvEncoder;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    pub image_size: i64,
    pub channels: Vec<i64>,
    pub hidden: i64,
}

/// Number of detail classes per kind (0: the kind has no detail).
fn detail_classes(kind: usize) -> i64 {
    match KINDS[kind] {
        "house" | "boat" | "tower" => COLOURS.len() as i64,
        "tree" | "mountain" | "sun" | "moon" => 2,
        _ => 0,
    }
}

fn detail_index(d: Detail) -> Option<i64> {
    Some(match d {
        Detail::None => return None,
        Detail::Door(c) | Detail::Sail(c) | Detail::Flag(c) => c as i64,
        Detail::Pointed(b) | Detail::SnowCap(b) | Detail::Rays(b) | Detail::Crescent(b) => b as i64,
    })
}

/// The output layout: (offset, width) of each head in the logit vector.
#[derive(Clone, Debug)]
pub struct Heads {
    pub sky: (i64, i64),
    pub ground: (i64, i64),
    pub style: (i64, i64),
    /// Per kind: presence (2), colour, size, position, detail.
    pub kinds: Vec<[(i64, i64); 5]>,
    pub total: i64,
}

impl Heads {
    pub fn new() -> Self {
        let mut off = 0;
        let mut take = |w: i64| {
            let r = (off, w);
            off += w;
            r
        };
        let sky = take(SKIES.len() as i64);
        let ground = take(GROUNDS.len() as i64);
        let style = take(STYLES.len() as i64);
        let kinds = (0..KINDS.len())
            .map(|k| {
                [
                    take(2),
                    take(COLOURS.len() as i64),
                    take(SIZES.len() as i64),
                    take(9),
                    take(detail_classes(k)),
                ]
            })
            .collect();
        Heads {
            sky,
            ground,
            style,
            kinds,
            total: off,
        }
    }
}

impl Default for Heads {
    fn default() -> Self {
        Self::new()
    }
}

/// Class targets of a scene, -1 where a head does not apply: one row per head, in the
/// order sky, ground, style, then per kind presence, colour, size, position, detail.
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

fn head_list(h: &Heads) -> Vec<(i64, i64)> {
    let mut v = vec![h.sky, h.ground, h.style];
    for k in &h.kinds {
        v.extend(k.iter().copied());
    }
    v
}

pub struct Probe {
    pub cfg: ProbeConfig,
    pub heads: Heads,
    conv: ConvEncoder,
    fc: nn::Linear,
    out: nn::Linear,
}

impl Probe {
    pub fn new(p: &nn::Path, cfg: &ProbeConfig) -> Result<Self> {
        let down = 1i64 << cfg.channels.len();
        if cfg.channels.is_empty() || cfg.image_size % down != 0 {
            bail!(
                "probe: image_size {} must be divisible by 2^{}",
                cfg.image_size,
                cfg.channels.len()
            );
        }
        let g = cfg.image_size / down;
        let heads = Heads::new();
        Ok(Probe {
            cfg: cfg.clone(),
            conv: ConvEncoder::new(p / "cnn", &cfg.channels),
            fc: nn::linear(
                p / "fc",
                cfg.channels.last().unwrap() * g * g,
                cfg.hidden,
                Default::default(),
            ),
            out: nn::linear(p / "out", cfg.hidden, heads.total, Default::default()),
            heads,
        })
    }

    /// All head logits `(B, total)`.
    pub fn logits(&self, images: &Tensor, train: bool) -> Tensor {
        let h = self.conv.forward(images).flatten(1, -1);
        self.fc
            .forward(&h)
            .gelu("tanh")
            .dropout(0.1, train)
            .apply(&self.out)
    }

    /// Sum over heads of the cross-entropy of the heads that apply; `targets` `(B, H)`.
    pub fn loss(&self, images: &Tensor, targets: &Tensor, train: bool) -> Tensor {
        let logits = self.logits(images, train);
        let mut total = Tensor::zeros([], (Kind::Float, logits.device()));
        for (i, (off, w)) in head_list(&self.heads).into_iter().enumerate() {
            if w == 0 {
                continue;
            }
            let t = targets.select(1, i as i64);
            let l = logits.narrow(1, off, w);
            let ce = l.cross_entropy_loss::<Tensor>(&t, None, tch::Reduction::Sum, -1, 0.0);
            total += ce;
        }
        total / targets.size()[0] as f64
    }

    /// Predicted class per head `(B, H)` (-1 for heads with no classes).
    pub fn predict(&self, images: &Tensor) -> Tensor {
        let logits = tch::no_grad(|| self.logits(images, false));
        let cols: Vec<Tensor> = head_list(&self.heads)
            .into_iter()
            .map(|(off, w)| {
                if w == 0 {
                    Tensor::full([logits.size()[0]], -1, (Kind::Int64, logits.device()))
                } else {
                    logits.narrow(1, off, w).argmax(1, false)
                }
            })
            .collect();
        Tensor::stack(&cols, 1)
    }

    /// Kind posteriors `(B, 10)`: presence probabilities normalised to sum to one (the
    /// class distribution of the IS-style score).
    pub fn kind_posteriors(&self, images: &Tensor) -> Tensor {
        let logits = tch::no_grad(|| self.logits(images, false));
        let present: Vec<Tensor> = self
            .heads
            .kinds
            .iter()
            .map(|k| {
                logits
                    .narrow(1, k[0].0, 2)
                    .softmax(1, Kind::Float)
                    .select(1, 1)
            })
            .collect();
        let p = Tensor::stack(&present, 1);
        &p / p.sum_dim_intlist(1, true, Kind::Float).clamp_min(1e-8)
    }
}

/// Slot accuracy of predictions against truth targets (rows of [`targets`]): every image
/// counts sky, ground, style and the presence of each kind; each truly present object
/// also counts its colour, size, position and detail.
pub fn attribute_accuracy(pred: &[Vec<i64>], truth: &[Vec<i64>]) -> f64 {
    let (mut ok, mut n) = (0usize, 0usize);
    for (p, t) in pred.iter().zip(truth) {
        for i in 0..3 {
            ok += usize::from(p[i] == t[i]);
            n += 1;
        }
        for k in 0..KINDS.len() {
            let b = 3 + 5 * k;
            ok += usize::from(p[b] == t[b]);
            n += 1;
            if t[b] == 1 {
                for j in 1..5 {
                    if t[b + j] >= 0 {
                        // A missed object gets none of its attributes.
                        ok += usize::from(p[b] == 1 && p[b + j] == t[b + j]);
                        n += 1;
                    }
                }
            }
        }
    }
    ok as f64 / n.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn targets_fit_heads_and_perfect_predictions_score_one() {
        let heads = Heads::new();
        let list = head_list(&heads);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let scenes: Vec<Scene> = (0..50).map(|_| Scene::sample(&mut rng)).collect();
        let t: Vec<Vec<i64>> = scenes.iter().map(targets).collect();
        for row in &t {
            assert_eq!(row.len(), list.len());
            for (v, (_, w)) in row.iter().zip(&list) {
                assert!(*v < *w, "target {v} outside head of width {w}");
            }
        }
        assert_eq!(attribute_accuracy(&t, &t), 1.0);
        let shuffled: Vec<Vec<i64>> = t.iter().rev().cloned().collect();
        assert!(attribute_accuracy(&shuffled, &t) < 0.8);
    }
}
