//! The text → image stage: `train t2i`, `draw` and `eval t2i`. Generated images are
//! graded by the separately trained evaluators (contrastive model and probe), never by
//! the generator's own text encoder (TISE, Dinh et al. 2021). This file builds, trains
//! and loads; drawing is in `paint`, grading in `scores`, and the scene-supervised text
//! pretraining in `facts_pretrain`.

use super::evaluators::{
    embed_images, embed_tokens, load_clip, load_probe, probe_predict, scene_targets, scenes_of,
    stored_side, tokenize_batch, LoadedClip, LoadedProbe,
};
use crate::data::layout::{Dataset, Split};
use crate::data::loader::{
    batch_rows, load_split, micro_batch, to_float, to_u8, trim_padding, SplitData,
};
use crate::data::tokenizer::TextTokenizer;
use crate::eval::embedding::{
    clip_score, frechet_distance, inception_style_score, kid, mean_pairwise_distance,
    r_precision_grouped,
};
use crate::models::t2i::critic::MatchCritic;
use crate::models::t2i::diffusion::{DiffusionConfig, Sampler};
use crate::models::t2i::{sum_terms, Condition, T2IConfig, TextToImage, DISCRIMINATOR_PREFIX};
use crate::scenes::paint::paint;
use crate::scenes::probe::{attribute_accuracy, slot_accuracies};
use crate::train::runner::{
    self, BestMetric, Group, RunOptions, RunSummary, TrainConfig, Trainable,
};
use crate::util::tensorboard::EventWriter;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

mod facts_pretrain;
mod paint;
mod scores;
pub use facts_pretrain::*;
pub use paint::*;
pub use scores::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct T2IEvalConfig {
    /// The separately trained evaluators.
    pub clip: PathBuf,
    pub probe: Option<PathBuf>,
    /// Validation captions drawn at each evaluation during training.
    pub subset: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct T2IStageConfig {
    pub data: PathBuf,
    pub seed: u64,
    pub model: T2IConfig,
    pub train: TrainConfig,
    pub eval: T2IEvalConfig,
    pub best: BestMetric,
    #[serde(default)]
    pub limit_train: Option<usize>,
    /// `pretrain:` (with `model.facts`): the text side first learns the facts alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain: Option<TextPretrainConfig>,
}

/// `pretrain:`: the text encoder and the fact reader learn the paragraphs' facts
/// before the generator trains, then are frozen. A text-only step costs a fraction of
/// a generator step, and the generator then paints from facts that are already right
/// instead of from a reader that is still learning (docs/results.md, text → image).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextPretrainConfig {
    pub train: TrainConfig,
}

impl T2IStageConfig {
    /// The options set here that read the embedded set's scene facts.
    pub fn scene_options(&self) -> Vec<&'static str> {
        [
            (self.model.facts.is_some(), "model.facts"),
            (
                self.pretrain.is_some(),
                "pretrain (the text side learns the scene facts)",
            ),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

pub fn build(
    cfg: &T2IConfig,
    tok: &TextTokenizer,
    device: Device,
) -> Result<(nn::VarStore, TextToImage)> {
    let mut c = cfg.clone();
    match &mut c.align {
        Some(a) => {
            let ac = super::align::aligned_config(&a.run, tok)
                .with_context(|| format!("model.align.run {}", a.run.display()))?;
            if c.text.dim != 0 {
                let mut given = c.text.clone();
                given.set_tokenizer(tok)?;
                if given != ac.text {
                    bail!(
                        "model.text differs from the text encoder of model.align.run {}: leave model.text out (it is read from the run)",
                        a.run.display()
                    );
                }
            }
            c.text = ac.text;
            a.places = ac.places;
        }
        None if c.text.dim == 0 => {
            bail!("model.text is missing: give the generator's text encoder, or model.align (an align run's)")
        }
        None => c.text.set_tokenizer(tok)?,
    }
    let vs = nn::VarStore::new(device);
    let m = TextToImage::new(&vs.root(), &c)?;
    Ok((vs, m))
}

struct T2IStage {
    vs: nn::VarStore,
    model: TextToImage,
    tok: TextTokenizer,
    cfg: T2IStageConfig,
    train: SplitData,
    val: SplitData,
    ds: Dataset,
    clip: LoadedClip,
    probe: Option<LoadedProbe>,
    device: Device,
    /// Sample grids are also written here as PNG.
    run_dir: PathBuf,
    /// Targets of the text side's auxiliary attribute loss per training row, when the
    /// model has it.
    attribute_targets: Option<Tensor>,
    /// The named terms of the last training loss, detached: read only when logged, so
    /// a GPU step does not wait for them.
    last_parts: Vec<(&'static str, Tensor)>,
}

impl T2IStage {
    /// Images, caption tokens and (when the model wants them) attribute targets of
    /// micro-batch `micro`.
    fn batch(&self, micro: u64) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let (batch, seed) = (self.cfg.train.batch_size, self.cfg.seed);
        let (x, t) = micro_batch(&self.train, batch, seed, micro, self.device);
        let a = self
            .attribute_targets
            .as_ref()
            .map(|a| batch_rows(a, batch, seed, micro, self.device));
        let t = trim_padding(&t.context("tokenized captions")?, self.tok.pad);
        Ok((x, t, a))
    }
}

impl Trainable for T2IStage {
    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
    fn loss(&mut self, micro: u64) -> Result<Tensor> {
        let (x, t, a) = self.batch(micro)?;
        let terms = self.model.loss_terms(
            &x,
            &t,
            a.as_ref(),
            self.tok.pad,
            micro / self.cfg.train.accumulate,
        )?;
        self.last_parts = terms.iter().map(|(k, v)| (*k, v.detach())).collect();
        Ok(sum_terms(terms))
    }
    fn loss_parts(&self) -> BTreeMap<String, f64> {
        self.last_parts
            .iter()
            .map(|(k, v)| (k.to_string(), v.double_value(&[])))
            .collect()
    }
    fn groups(&self) -> Vec<Group> {
        if !self.model.is_gan() {
            return vec![];
        }
        let lr_d = self.cfg.model.gan.as_ref().map_or(1.0, |g| g.lr_d_scale);
        vec![
            Group {
                name: "d".into(),
                prefixes: vec![DISCRIMINATOR_PREFIX.into()],
                lr_scale: lr_d,
            },
            Group {
                name: "g".into(),
                prefixes: vec!["generator.".into(), "text.".into()],
                lr_scale: 1.0,
            },
        ]
    }
    fn group_loss(&mut self, g: usize, micro: u64) -> Result<Tensor> {
        // Both groups see the same micro-batch: D steps on it, then G against the new D.
        let (x, t, _) = self.batch(micro)?;
        self.model.gan_losses(g, &x, &t, self.tok.pad)
    }
    fn evaluate(&mut self, step: u64, tb: &mut EventWriter) -> Result<BTreeMap<String, f64>> {
        let tokens = self
            .val
            .tokens
            .as_ref()
            .expect("tokenized: checked when the stage was built");
        let images = draw_tokens(&self.model, tokens, self.tok.pad, 1, 1234, self.device);
        let m = generation_scores(
            &images,
            &self.val.captions,
            &self.val.ids,
            &self.val.images,
            &self.clip,
            self.probe.as_ref(),
            &self.ds,
            self.device,
        )?;
        // A fixed grid: 8 fixed validation captions × 4 fixed noises.
        let k = 8.min(tokens.size()[0]);
        let grid = draw_tokens(
            &self.model,
            &tokens.narrow(0, 0, k),
            self.tok.pad,
            4,
            99,
            self.device,
        );
        let (rgb, h, w) = crate::report::grid::grid_rgb(&grid, 4);
        tb.image("samples/val_grid", step as i64, &rgb, h, w)?;
        crate::util::fsio::atomic_write(
            &self.run_dir.join(format!("samples/step_{step:06}.png")),
            &crate::report::grid::png(&rgb, w, h)?,
        )?;
        Ok(m)
    }
}

pub fn load_evaluators(
    cfg: &T2IEvalConfig,
    ds: &Dataset,
    device: Device,
) -> Result<(LoadedClip, Option<LoadedProbe>)> {
    let clip = load_clip(&cfg.clip, device).with_context(|| {
        format!(
            "loading the contrastive evaluator {} (train it with `make train-clip`)",
            cfg.clip.display()
        )
    })?;
    let tok_hash = crate::util::fsio::sha256_file(&ds.tokenizer_path())?;
    if clip.tok.hash != tok_hash {
        bail!(
            "the contrastive evaluator {} was trained with a different tokenizer",
            cfg.clip.display()
        );
    }
    let probe = match &cfg.probe {
        Some(p) => Some(load_probe(p, device).with_context(|| {
            format!(
                "loading the probe {} (train it with `make train-probe`)",
                p.display()
            )
        })?),
        None => None,
    };
    Ok((clip, probe))
}

pub fn train(
    cfg: T2IStageConfig,
    yaml: String,
    run_dir: &Path,
    resume: bool,
    device: Device,
) -> Result<RunSummary> {
    let (ds, tok) = super::open_training_data(&cfg.data, &cfg.scene_options())?;
    tch::manual_seed(cfg.seed as i64);
    let (vs, mut model) = build(&cfg.model, &tok, device)?;
    if let Some(a) = &cfg.model.align {
        // The general path's text side was trained by the align run, and stays frozen.
        super::align::load_aligned_part(&vs, &a.run, "text.", "text.")?;
        model.freeze_text(&vs);
        if model.wants_critic() {
            // The whole align model, frozen, scores the painted pictures; it grades
            // nothing (the evaluators below were trained apart from it).
            let (weights, aligner) = super::align::load_aligner(&a.run, &tok, device)?;
            model.attach_critic(MatchCritic::new(
                weights,
                aligner,
                vec![tok.pad, tok.bos, tok.eos],
                tok.sentence_end_ids(),
                a.match_weight,
            ))?;
        }
    }
    // Downstream reads the text config the align run filled in.
    let mut cfg = cfg;
    cfg.model = model.cfg.clone();
    let size = cfg.model.image_size as u32;
    let train = load_split(&ds, Split::Train, size, cfg.limit_train)?;
    cfg.train.resolve_epochs(train.ids.len(), "train")?;
    let val = load_split(&ds, Split::Val, size, Some(cfg.eval.subset))?;
    let (clip, probe) = load_evaluators(&cfg.eval, &ds, device)?;
    let attribute_targets = if model.wants_attributes() {
        Some(
            super::evaluators::cell_target_tensor(&ds, &train.ids)
                .context("model.facts needs the embedded set's scene metadata")?,
        )
    } else {
        None
    };
    let opts = RunOptions {
        run_dir: run_dir.to_path_buf(),
        // A run stopped between its two phases resumes its second from the start.
        resume: resume
            && (cfg.pretrain.is_none() || crate::train::checkpoint::exists(run_dir, "latest")),
        seed: cfg.seed,
        arch: serde_json::to_value(&model.cfg)?,
        tokenizer_hash: tok.hash.clone(),
        best: cfg.best.clone(),
        config_yaml: yaml,
    };
    let params = runner::parameters(&vs);
    crate::util::progress::note(format!(
        "t2i ({:?}): {:.2}M parameters, {} training images, {} steps of {}",
        cfg.model.kind,
        params as f64 / 1e6,
        train.ids.len(),
        cfg.train.steps,
        cfg.train.batch_size
    ));
    let mut stage = T2IStage {
        vs,
        model,
        tok,
        cfg: cfg.clone(),
        train,
        val,
        ds,
        clip,
        probe,
        device,
        run_dir: run_dir.to_path_buf(),
        attribute_targets,
        last_parts: vec![],
    };
    if let Some(pre) = &cfg.pretrain {
        pretrain_text(&mut stage, pre, &opts, resume)?;
    }
    let s = runner::run(&mut stage, &cfg.train, &opts)?;
    super::write_done(run_dir, &s)?;
    Ok(s)
}

pub struct LoadedT2I {
    pub cfg: T2IStageConfig,
    pub vs: nn::VarStore,
    pub model: TextToImage,
    pub tok: TextTokenizer,
}

pub fn load_run(run_dir: &Path, device: Device) -> Result<LoadedT2I> {
    let cfg: T2IStageConfig = super::run_config(run_dir, "t2i")?;
    let ds = Dataset::open(&cfg.data)?;
    let tok = TextTokenizer::load(&ds.tokenizer_path())?;
    let (vs, model) = build(&cfg.model, &tok, device)?;
    crate::train::checkpoint::load_weights(&vs, run_dir, "best", Some(&tok.hash))?;
    let mut cfg = cfg;
    cfg.model = model.cfg.clone();
    Ok(LoadedT2I {
        cfg,
        vs,
        model,
        tok,
    })
}

/// Tokenises texts for a generator, refusing empty ones and warning about truncation.
pub fn tokens_for(tok: &TextTokenizer, texts: &[String], max_len: usize) -> Result<Tensor> {
    for (i, t) in texts.iter().enumerate() {
        if t.trim().is_empty() {
            bail!("caption {} is empty: there is nothing to draw", i + 1);
        }
        let n = tok.token_count(t)?;
        if n > max_len {
            crate::util::progress::note(format!(
                "warning: caption {} has {n} tokens; only the first {max_len} are used",
                i + 1
            ));
        }
    }
    tokenize_batch(tok, texts, max_len)
}
