//! One seed, two outputs (after the Multimodal Art Generator): a VAE-style shared latent from which an image
//! decoder paints and an autoregressive caption decoder writes. The posterior reads the
//! captioner's image grid; the latent becomes a few memory tokens that both decoders
//! attend to. The Multimodal Art Generator's two failures are fixed by construction: its non-autoregressive
//! caption decoder fell back to stock phrases (here: the captioner's Transformer decoder,
//! token by token), and its MSE image decoder drew dark gradients (here: the t2i
//! generator's FiLM + cross-attention blocks, and a summed pixel likelihood that keeps its
//! weight against the KL).
//!
//! With `facts` (embedded set) the latent is read as a scene first: a head reads the
//! facts (sky, ground, style, each 3×3 cell's object) off the latent, and both decoders
//! are told those facts beside the latent, so the picture and the paragraph of one seed
//! describe the same scene. Without it the two decoders each read the latent their own
//! way, and agree on 9 % of the facts (docs/results.md).
//!
//! With `align` (the general path, any dataset) the latent is read the same way, as
//! what a caption says rather than as facts: a head regresses the frozen align model's
//! features of the image's caption (its sentence vector and its grid of place vectors,
//! [`crate::models::align`]) off the latent, and both decoders are told those features,
//! the painter place by place as the aligned text-to-image generator is.

use super::captioner::{Captioner, CaptionerConfig};
use super::t2i::generator::{Generator, GeneratorConfig};
use super::t2i::vae::kl_to_standard_normal;
use super::t2i::AlignedText;
use crate::scenes::facts::{most_likely_rows, FactEmbedding, Facts};
use crate::scenes::heads::{attribute_loss, CELL_WIDTH, GLOBAL_WIDTH};
use crate::util::draws;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnifiedConfig {
    /// Width of the shared latent (the Multimodal Art Generator: 1024).
    #[serde(default = "d_latent")]
    pub latent_dim: i64,
    /// Memory tokens the latent is unfolded into for the decoders to attend to.
    #[serde(default = "d_memory")]
    pub memory_tokens: i64,
    /// The image encoder (posterior features) and the caption decoder.
    pub captioner: CaptionerConfig,
    /// The image decoder; its z_dim is the latent width.
    pub generator: GeneratorConfig,
    /// Final KL weight, reached linearly over `beta_warmup` steps.
    #[serde(default = "d_beta")]
    pub beta: f64,
    #[serde(default)]
    pub beta_warmup: u64,
    /// Weight of the caption's summed log-likelihood against the image's.
    #[serde(default = "d_beta")]
    pub caption_weight: f64,
    /// Read the scene's facts off the latent and tell both decoders (embedded set).
    /// Training tells them the image's true facts (teacher forcing) and teaches the head
    /// by cross-entropy; sampling tells them the head's most likely scene, or a scene
    /// drawn from it (`eval.scene`). The generator then takes its condition from the
    /// facts, not from the latent's `cond` projection.
    #[serde(default)]
    pub facts: bool,
    /// Weight of the fact head's cross-entropy. It must outweigh the KL the facts cost
    /// in the latent (β × some 30 nats), or the posterior drops them.
    #[serde(default = "d_beta")]
    pub fact_weight: f64,
    /// With `facts` or `align`: whether the caption decoder also attends to the latent's
    /// memory tokens. Without them it writes from what it is told alone, and cannot pick
    /// up, from a prior sample's latent, a scene other than the one the painter is told.
    #[serde(default = "d_true")]
    pub caption_memory: bool,
    /// Read the caption's align-model features off the latent and tell both decoders
    /// (the general path): `{run: runs/align/demo}`. Training tells them the features of
    /// the image's true caption (teacher forcing) and teaches the head by squared error;
    /// sampling tells them the head's reading of the latent. Its text width must be
    /// `captioner.dim`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub align: Option<AlignedText>,
    /// Weight of the `align` head's squared error (summed over the features).
    #[serde(default = "d_beta")]
    pub align_weight: f64,
}
fn d_true() -> bool {
    true
}
fn d_latent() -> i64 {
    1024
}
fn d_memory() -> i64 {
    16
}
fn d_beta() -> f64 {
    1.0
}

pub struct Unified {
    pub cfg: UnifiedConfig,
    pub captioner: Captioner,
    posterior: nn::Linear,
    memory: nn::Linear,
    memory_pos: Tensor,
    cond: nn::Linear,
    generator: Generator,
    /// With `facts` or `align`: how the latent is read before both decoders are told it.
    reading: Option<Reading>,
}

/// What a latent is read as, by a head over it.
enum Reading {
    /// The scene's facts: the head's logits, and the facts' embedding the decoders are
    /// told.
    Facts(nn::Sequential, FactEmbedding),
    /// The align model's features of a caption: the head regresses the sentence vector
    /// and the `places` place vectors, `(1 + places, D)` per latent.
    Aligned(nn::Sequential, i64),
}

/// Gumbel noise from uniform noise in [0, 1).
pub fn gumbel(uniform: &Tensor) -> Tensor {
    -(-uniform.clamp(1e-9, 1.0 - 1e-9).log()).log()
}

/// The loss terms of a batch, each a scalar.
pub struct UnifiedLoss {
    pub pixel: Tensor,
    pub caption: Tensor,
    pub kl: Tensor,
    /// The head's term: the facts' cross-entropy (with `facts`) or the align features'
    /// squared error (with `align`).
    pub head: Option<Tensor>,
}

fn latent_head(p: nn::Path, latent: i64, hidden: i64, out: i64) -> nn::Sequential {
    nn::seq()
        .add(nn::linear(&p / "fc", latent, hidden, Default::default()))
        .add_fn(|x| x.gelu("tanh"))
        .add(nn::linear(&p / "out", hidden, out, Default::default()))
}

impl Unified {
    pub fn new(p: &nn::Path, cfg: &UnifiedConfig) -> Result<Self> {
        let c = &cfg.captioner;
        if cfg.latent_dim < 1 || cfg.memory_tokens < 1 {
            bail!("model.latent_dim and model.memory_tokens must be positive");
        }
        if c.channels.is_empty() || c.image_size % (1 << c.channels.len()) != 0 {
            bail!(
                "model.captioner.channels: {} halvings do not divide {} px",
                c.channels.len(),
                c.image_size
            );
        }
        if cfg.facts && cfg.align.is_some() {
            bail!("model.facts and model.align are two readings of the latent: keep one");
        }
        let places = match &cfg.align {
            Some(a) if a.places < 1 => {
                bail!("model.align.places is not set (it comes from the align run)")
            }
            Some(a) => Some(a.places),
            None => None,
        };
        if cfg.generator.cell_coordinates && !cfg.facts && places.is_none() {
            bail!("model.generator.cell_coordinates needs the places model.facts or model.align paints from");
        }
        let captioner = Captioner::new(&(p / "captioner"), c)?;
        let g = c.image_size >> c.channels.len();
        let mut gcfg = cfg.generator.clone();
        gcfg.z_dim = cfg.latent_dim;
        let generator = match (cfg.facts, places) {
            // The nine cells' fact vectors are the layout it paints from.
            (true, _) => Generator::painting_from_places(p / "generator", &gcfg, c.dim, c.dim, 3),
            (false, Some(side)) => {
                Generator::painting_from_places(p / "generator", &gcfg, c.dim, c.dim, side)
            }
            (false, None) => Generator::new(p / "generator", &gcfg, c.dim, c.dim),
        };
        if generator.output_side() != c.image_size {
            bail!(
                "model.generator.channels draws {} px images but model.captioner.image_size is {}",
                generator.output_side(),
                c.image_size
            );
        }
        Ok(Unified {
            posterior: nn::linear(
                p / "posterior",
                g * g * c.dim,
                2 * cfg.latent_dim,
                Default::default(),
            ),
            memory: nn::linear(
                p / "memory",
                cfg.latent_dim,
                cfg.memory_tokens * c.dim,
                Default::default(),
            ),
            memory_pos: p.var(
                "memory_pos",
                &[cfg.memory_tokens, c.dim],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            ),
            cond: nn::linear(p / "cond", cfg.latent_dim, c.dim, Default::default()),
            generator,
            captioner,
            reading: match (cfg.facts, places) {
                (true, _) => Some(Reading::Facts(
                    latent_head(
                        p / "fact_head",
                        cfg.latent_dim,
                        2 * c.dim,
                        GLOBAL_WIDTH + 9 * CELL_WIDTH,
                    ),
                    FactEmbedding::new(p / "facts", c.dim),
                )),
                (false, Some(side)) => {
                    let tokens = 1 + side * side;
                    Some(Reading::Aligned(
                        latent_head(p / "align_head", cfg.latent_dim, 4 * c.dim, tokens * c.dim),
                        side * side,
                    ))
                }
                (false, None) => None,
            },
            cfg: cfg.clone(),
        })
    }

    pub fn image_size(&self) -> i64 {
        self.cfg.captioner.image_size
    }

    /// (μ, log σ²) of q(z | x).
    pub fn posterior(&self, images: &Tensor, train: bool) -> (Tensor, Tensor) {
        let grid = self.captioner.encode(images, train).flatten(1, -1);
        let out = self.posterior.forward(&grid);
        let parts = out.chunk(2, 1);
        (parts[0].shallow_clone(), parts[1].clamp(-10.0, 10.0))
    }

    /// The memory tokens `(B, K, D)` both decoders attend to.
    pub fn memory(&self, z: &Tensor) -> Tensor {
        let b = z.size()[0];
        let (k, d) = (self.cfg.memory_tokens, self.cfg.captioner.dim);
        self.memory.forward(z).view([b, k, d]) + &self.memory_pos
    }

    /// The fact head's logits `(B, 12)` and `(B, 9, 34)` for latents; `None` without
    /// `facts`.
    pub fn fact_logits(&self, z: &Tensor) -> Option<(Tensor, Tensor)> {
        let Some(Reading::Facts(head, _)) = &self.reading else {
            return None;
        };
        let out = z.apply(head);
        Some((
            out.narrow(1, 0, GLOBAL_WIDTH),
            out.narrow(1, GLOBAL_WIDTH, 9 * CELL_WIDTH)
                .unflatten(1, [9, CELL_WIDTH]),
        ))
    }

    /// Width of the noise [`Unified::latent_facts`] draws a scene with: one Gumbel
    /// variable per logit of the fact head.
    pub const SCENE_NOISE: i64 = GLOBAL_WIDTH + 9 * CELL_WIDTH;

    /// The scene a latent stands for, as target rows `(B, 39)`: the fact head's most
    /// likely facts, or, given Gumbel noise `(B, SCENE_NOISE)`, a draw from its
    /// distributions (the Gumbel-max trick, head by head); `None` without `facts`.
    pub fn latent_facts(&self, z: &Tensor, gumbel: Option<&Tensor>) -> Option<Tensor> {
        let (global, cells) = self.fact_logits(z)?;
        let (global, cells) = match gumbel {
            Some(g) => (
                global + g.narrow(1, 0, GLOBAL_WIDTH),
                cells
                    + g.narrow(1, GLOBAL_WIDTH, 9 * CELL_WIDTH)
                        .unflatten(1, [9, CELL_WIDTH]),
            ),
            None => (global, cells),
        };
        Some(most_likely_rows(&global, &cells))
    }

    /// With `align`: the head's reading of latents, `(B, 1 + places, D)` (the sentence
    /// vector, then the place vectors row-major from the top left).
    pub fn aligned_features(&self, z: &Tensor) -> Option<Tensor> {
        let Some(Reading::Aligned(head, places)) = &self.reading else {
            return None;
        };
        Some(z.apply(head).unflatten(1, [1 + places, -1]))
    }

    /// What the decoders are told, global `(B, D)` and per place `(B, P, D)`: the facts'
    /// embedding of target rows, or align features `(B, 1 + P, D)` split (`None`
    /// without a reading).
    fn told(&self, targets: Option<&Tensor>) -> Option<(Tensor, Tensor)> {
        let targets = targets?;
        match self.reading.as_ref()? {
            Reading::Facts(_, embedding) => Some(embedding.forward(&Facts::one_hot(targets))),
            Reading::Aligned(_, places) => {
                Some((targets.select(1, 0), targets.narrow(1, 1, *places)))
            }
        }
    }

    /// Images in [-1, 1] from latents and, with a reading, what the decoders are told:
    /// the scenes' rows with `facts`, the features with `align` (the latent's own
    /// reading when `None`).
    pub fn paint(&self, z: &Tensor, scene: Option<&Tensor>) -> Tensor {
        self.paint_told(z, self.told_scene(z, scene))
    }

    /// What the decoders are told for `scene`, or for the latent's own reading (its most
    /// likely scene, or its align features).
    fn told_scene(&self, z: &Tensor, scene: Option<&Tensor>) -> Option<(Tensor, Tensor)> {
        match (scene, &self.reading) {
            (Some(targets), _) => self.told(Some(targets)),
            (None, Some(Reading::Aligned(..))) => self.told(self.aligned_features(z).as_ref()),
            (None, _) => self.told(self.latent_facts(z, None).as_ref()),
        }
    }

    fn paint_told(&self, z: &Tensor, told: Option<(Tensor, Tensor)>) -> Tensor {
        let (cond, tokens) = match told {
            Some((global, cells)) => (global, cells),
            None => (self.cond.forward(z), self.memory(z)),
        };
        let mask = tokens.select(2, 0).ones_like().to_kind(Kind::Bool);
        self.generator.forward(z, &cond, &tokens, &mask)
    }

    /// The tokens `(B, K', D)` the caption decoder attends to: the memory tokens, or with
    /// a reading what it is told (global, then the places), before the memory tokens
    /// when `caption_memory`. `scene` as for [`Unified::paint`].
    pub fn caption_context(&self, z: &Tensor, scene: Option<&Tensor>) -> Tensor {
        self.context_told(z, self.told_scene(z, scene))
    }

    fn context_told(&self, z: &Tensor, told: Option<(Tensor, Tensor)>) -> Tensor {
        let Some((global, cells)) = told else {
            return self.memory(z);
        };
        let facts = Tensor::cat(&[global.unsqueeze(1), cells], 1);
        if self.cfg.caption_memory {
            Tensor::cat(&[facts, self.memory(z)], 1)
        } else {
            facts
        }
    }

    /// The loss terms for images in [-1, 1], their caption tokens and, with a reading,
    /// what the decoders are told: the scenes' target rows `(B, 39)` with `facts`, the
    /// captions' align features `(B, 1 + P, D)` with `align`.
    pub fn loss(
        &self,
        images: &Tensor,
        tokens: &Tensor,
        pad: i64,
        targets: Option<&Tensor>,
    ) -> Result<UnifiedLoss> {
        match (&self.reading, targets) {
            (Some(Reading::Facts(..)), None) => bail!(
                "model.facts trains on the embedded set's scene facts, and this batch has none"
            ),
            (Some(Reading::Aligned(..)), None) => {
                bail!("model.align trains on the captions' align features, and this batch has none")
            }
            _ => {}
        }
        let (mu, logvar) = self.posterior(images, true);
        let z = &mu + (&logvar * 0.5).exp() * draws::normal_like(&mu);
        // Both decoders are told the truth (teacher forcing); the head learns it.
        let head = match (&self.reading, targets) {
            (Some(Reading::Facts(..)), Some(t)) => self
                .fact_logits(&z)
                .map(|(global, cells)| attribute_loss(&global, &cells, t)),
            (Some(Reading::Aligned(..)), Some(t)) => self.aligned_features(&z).map(|f| {
                (f - t)
                    .square()
                    .sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Float)
                    .mean(Kind::Float)
            }),
            _ => None,
        };
        let told = || self.told(targets);
        // Summed squared error per image (a Gaussian likelihood), as in the t2i VAE.
        let pixel = (self.paint_told(&z, told()) - images)
            .square()
            .sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float)
            .mean(Kind::Float);
        // The decoder's mean cross-entropy, scaled to a summed log-likelihood per caption.
        let ce = self.captioner.loss_from_context(
            &self.context_told(&z, told()),
            tokens,
            pad,
            0.0,
            0.0,
            true,
        );
        let per_caption = tokens.ne(pad).sum(Kind::Float) / tokens.size()[0] as f64 - 1.0;
        Ok(UnifiedLoss {
            pixel,
            caption: ce * per_caption.clamp_min(1.0),
            kl: kl_to_standard_normal(&mu, &logvar).mean(Kind::Float),
            head,
        })
    }

    /// The training objective at `step` (β warmed up).
    pub fn objective(&self, l: &UnifiedLoss, step: u64) -> Tensor {
        let ramp = if self.cfg.beta_warmup == 0 {
            1.0
        } else {
            (step as f64 / self.cfg.beta_warmup as f64).min(1.0)
        };
        let total =
            &l.pixel + &l.caption * self.cfg.caption_weight + &l.kl * (self.cfg.beta * ramp);
        let weight = match self.reading {
            Some(Reading::Aligned(..)) => self.cfg.align_weight,
            _ => self.cfg.fact_weight,
        };
        match &l.head {
            Some(h) => total + h * weight,
            None => total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::OptimizerConfig, Device};

    /// `steps` of Adam (lr 1e-2) on `loss` over `vs` bring it below a tenth of its start.
    fn assert_falls_tenfold(
        vs: &nn::VarStore,
        steps: usize,
        loss: impl Fn() -> Tensor,
        what: &str,
    ) {
        let mut opt = nn::Adam::default().build(vs, 1e-2).unwrap();
        let l0 = loss().double_value(&[]);
        for _ in 0..steps {
            opt.backward_step(&loss());
        }
        let l1 = loss().double_value(&[]);
        assert!(l1 < 0.1 * l0, "{what} {l0} -> {l1}");
    }

    const TINY: &str = "latent_dim: 24\nmemory_tokens: 3\ncaptioner: {encoder: cnn, channels: [8, 16], dim: 16, layers: 1, heads: 2, mlp: 32, max_len: 16, image_size: 16, vocab_size: 20}\ngenerator: {z_dim: 0, channels: [16, 8], attention_max_side: 8}\n";

    fn tiny(extra: &str) -> (nn::VarStore, Unified) {
        let cfg: UnifiedConfig = serde_yaml::from_str(&format!("{TINY}{extra}")).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Unified::new(&vs.root(), &cfg).unwrap();
        (vs, m)
    }

    #[test]
    fn shapes_and_a_finite_kl() {
        tch::manual_seed(0);
        let (_vs, m) = tiny("");
        let x = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu)) * 2 - 1;
        let (mu, logvar) = m.posterior(&x, false);
        assert_eq!(mu.size(), vec![2, 24]);
        assert_eq!(logvar.size(), vec![2, 24]);
        assert_eq!(m.memory(&mu).size(), vec![2, 3, 16]);
        assert_eq!(m.paint(&mu, None).size(), vec![2, 3, 16, 16]);
        let tokens = Tensor::from_slice(&[1i64, 5, 6, 2, 0, 1, 7, 8, 9, 2]).view([2, 5]);
        let l = m.loss(&x, &tokens, 0, None).unwrap();
        for (name, t) in [("pixel", &l.pixel), ("caption", &l.caption), ("kl", &l.kl)] {
            let v = t.double_value(&[]);
            assert!(v.is_finite() && v >= 0.0, "{name}: {v}");
        }
        assert!(l.head.is_none());
        assert!(m.objective(&l, 0).double_value(&[]).is_finite());
    }

    #[test]
    fn an_aligned_model_tells_both_decoders_the_caption_features() {
        tch::manual_seed(0);
        let both = serde_yaml::from_str::<UnifiedConfig>(&format!(
            "{TINY}facts: true\nalign: {{run: a, places: 2}}\n"
        ))
        .unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let err = Unified::new(&vs.root(), &both).err().unwrap().to_string();
        assert!(err.contains("keep one"), "{err}");

        let (vs, m) = tiny("align: {run: a, places: 2}\nalign_weight: 1\n");
        let x = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu)) * 2 - 1;
        let tokens = Tensor::from_slice(&[1i64, 5, 6, 2, 0, 1, 7, 8, 9, 2]).view([2, 5]);
        let err = m.loss(&x, &tokens, 0, None).err().unwrap().to_string();
        assert!(err.contains("align features"), "{err}");
        // A sentence vector and 2×2 place vectors per caption.
        let targets = Tensor::randn([2, 5, 16], (Kind::Float, Device::Cpu));
        let z = Tensor::randn([2, 24], (Kind::Float, Device::Cpu));
        assert_eq!(m.aligned_features(&z).unwrap().size(), vec![2, 5, 16]);
        assert!(m.latent_facts(&z, None).is_none());
        assert_eq!(m.caption_context(&z, None).size(), vec![2, 5 + 3, 16]);
        assert_eq!(m.paint(&z, None).size(), vec![2, 3, 16, 16]);
        // Told other features, the painter paints another picture.
        let other = Tensor::randn([2, 5, 16], (Kind::Float, Device::Cpu));
        let diff = (m.paint(&z, Some(&targets)) - m.paint(&z, Some(&other)))
            .abs()
            .sum(Kind::Float);
        assert!(diff.double_value(&[]) > 0.0);
        // The head learns the features of a batch from its images.
        let head_loss = || {
            let f = m.aligned_features(&m.posterior(&x, false).0).unwrap();
            (f - &targets).square().mean(Kind::Float)
        };
        let l = m.loss(&x, &tokens, 0, Some(&targets)).unwrap();
        assert!(l.head.unwrap().double_value(&[]) > 0.0);
        assert_falls_tenfold(&vs, 60, head_loss, "align head loss");
    }

    /// A scene's target row: sky, ground, style, then a sun with rays in cell 1 and a
    /// red boat with a sail in cell 7.
    fn scene_row(sky: i64) -> Vec<i64> {
        let mut row = vec![sky, 1, 2];
        for cell in 0..9 {
            row.extend(match cell {
                1 => [0, 3, 1, 1],
                7 => [6, 0, 2, 4],
                _ => [10, -1, -1, -1],
            });
        }
        row
    }

    #[test]
    fn a_facts_model_tells_both_decoders_the_scene() {
        tch::manual_seed(0);
        let (vs, m) = tiny("facts: true\nfact_weight: 5\n");
        let x = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu)) * 2 - 1;
        let tokens = Tensor::from_slice(&[1i64, 5, 6, 2, 0, 1, 7, 8, 9, 2]).view([2, 5]);
        let err = m.loss(&x, &tokens, 0, None).err().unwrap().to_string();
        assert!(err.contains("scene facts"), "{err}");

        let z = Tensor::randn([2, 24], (Kind::Float, Device::Cpu));
        let rows = m.latent_facts(&z, None).unwrap();
        assert_eq!(rows.size(), vec![2, 39]);
        // Drawn scenes differ from the most likely one, and each is a scene.
        let drawn = (0..4)
            .map(|_| {
                let u = Tensor::rand([2, Unified::SCENE_NOISE], (Kind::Float, Device::Cpu));
                m.latent_facts(&z, Some(&gumbel(&u))).unwrap()
            })
            .collect::<Vec<_>>();
        assert!(drawn.iter().any(|d| !d.equal(&rows)));
        for d in &drawn {
            assert_eq!(d.size(), vec![2, 39]);
            let kinds = d.narrow(1, 3, 36).unflatten(1, [9, 4]).select(2, 0);
            assert!(kinds.ge(0).all().int64_value(&[]) == 1);
        }
        // The caption decoder attends to the global fact, the nine cells and the memory.
        assert_eq!(m.caption_context(&z, None).size(), vec![2, 1 + 9 + 3, 16]);
        assert_eq!(m.paint(&z, Some(&drawn[0])).size(), vec![2, 3, 16, 16]);
        // The decoders are told the scene: other facts, another picture and context.
        let (a, b) = (
            Tensor::from_slice(&scene_row(0)).view([1, 39]),
            Tensor::from_slice(&scene_row(3)).view([1, 39]),
        );
        let z1 = z.narrow(0, 0, 1);
        let diff = (m.paint_told(&z1, m.told(Some(&a))) - m.paint_told(&z1, m.told(Some(&b))))
            .abs()
            .sum(Kind::Float);
        assert!(diff.double_value(&[]) > 0.0);

        // The loss has the head's term, and the head can learn the facts of a batch.
        let targets = Tensor::cat(&[&a, &b], 0);
        let l = m.loss(&x, &tokens, 0, Some(&targets)).unwrap();
        assert!(l.head.as_ref().unwrap().double_value(&[]).is_finite());
        let fact_loss = || {
            let (global, cells) = m.fact_logits(&m.posterior(&x, false).0).unwrap();
            attribute_loss(&global, &cells, &targets)
        };
        assert_falls_tenfold(&vs, 40, fact_loss, "fact loss");
        let z = m.posterior(&x, false).0;
        let got = m.latent_facts(&z, None).unwrap();
        assert!(got.equal(&targets), "{got} vs {targets}");
    }
}
