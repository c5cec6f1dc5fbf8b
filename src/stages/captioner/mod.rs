//! The captioner stage: `train captioner` and `eval captioner`. The scores on the
//! embedded scene set are in `scene_scores`, the scene-supervised encoder pretraining in
//! `encoder_pretrain`.

use crate::data::augment::augment;
use crate::data::layout::{Dataset, Split};
use crate::data::loader::{batch_indices, batch_rows, load_split, to_float, Prefetcher, SplitData};
use crate::data::tokenizer::TextTokenizer;
use crate::eval::text::{caption_metrics, caption_metrics_multi};
use crate::models::captioner::decode::DecodeOptions;
use crate::models::captioner::{Captioner, CaptionerConfig, ENCODER_PREFIXES};
use crate::scenes::fact_words::FactWords;
use crate::scenes::probe::{attribute_accuracy, facts_of_row, is_probe_fact, rows_from_logits};
use crate::scenes::{parse, scene_of};
use crate::stages::evaluators::{attribute_training_set, scene_targets};
use crate::train::checkpoint;
use crate::train::runner::{self, BestMetric, Group, RunOptions, TrainConfig, Trainable};
use crate::util::tensorboard::EventWriter;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Tensor};

mod encoder_pretrain;
mod scene_scores;
use encoder_pretrain::*;
pub use scene_scores::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    #[serde(default)]
    pub label_smoothing: f64,
    /// Scheduled sampling (Bengio et al. 2015): from this fraction of training on
    /// (default: teacher forcing for the first 80 %), feed back the model's own tokens…
    #[serde(default = "d_ss_start")]
    pub sampling_start: f64,
    /// …for up to this share of input tokens (ramped linearly to the end). 0 disables.
    #[serde(default)]
    pub sampling_fraction: f64,
}
fn d_ss_start() -> f64 {
    0.8
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Validation images decoded at each evaluation during training.
    pub subset: usize,
    pub decode: DecodeOptions,
}

/// `pretrain:`: the CNN and its attribute heads first learn the scene's facts alone,
/// then are frozen while the decoder learns to write them. An encoder-only step costs a
/// fraction of a captioning step (no 150-token decoder), so the encoder sees many more
/// images for the same time; the decoder then attends to features that already hold
/// the facts. Needs `model.attribute_weight` > 0 (the heads) and the embedded set.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    pub train: TrainConfig,
    /// Scenes rendered in memory beside the training split for this phase only (their
    /// facts, never their paragraphs), as the probe does; 0 keeps to the split.
    #[serde(default)]
    pub extra_renders: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptionerStageConfig {
    pub data: PathBuf,
    pub seed: u64,
    pub model: CaptionerConfig,
    pub train: TrainConfig,
    pub loss: LossConfig,
    /// Random shift in pixels ([`crate::data::augment`]).
    #[serde(default)]
    pub augment_shift: i64,
    /// Random crops of at least this share of the side (0.1–1), resized back; unset is
    /// off ([`crate::data::augment`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment_crop: Option<f64>,
    pub eval: EvalConfig,
    pub best: BestMetric,
    /// Use only this many training images (tests use tiny runs).
    #[serde(default)]
    pub limit_train: Option<usize>,
    /// Pretrain the encoder on the attribute facts, then freeze it (see [`PretrainConfig`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain: Option<PretrainConfig>,
    /// The general path's first phase: a finished `train align` run whose image encoder
    /// the captioner reads (its `channels`, `stem` and `image_size` must match
    /// `model`'s): frozen, or fine-tuned with `encoder_lr_scale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_from: Option<PathBuf>,
    /// With `encoder_from`: 0 (the default) keeps the align run's encoder frozen; a
    /// positive value fine-tunes it with the decoder at `train.lr × encoder_lr_scale`,
    /// its batch norms keeping their statistics.
    #[serde(default, skip_serializing_if = "crate::config::is_default")]
    pub encoder_lr_scale: f64,
}

/// Checks that the align run `run` holds an image encoder of the captioner's shape; its
/// weights are loaded by [`read_aligned_encoder`].
fn check_aligned_encoder(cfg: &CaptionerStageConfig, run: &Path) -> Result<()> {
    if cfg.pretrain.is_some() {
        bail!("encoder_from and pretrain both give the encoder its first phase: keep one");
    }
    if !(0.0..=1.0).contains(&cfg.encoder_lr_scale) {
        bail!(
            "encoder_lr_scale {}: give 0 (frozen) up to 1 (the decoder's rate)",
            cfg.encoder_lr_scale
        );
    }
    let a = crate::stages::align::finished_config(run)?;
    let m = &cfg.model;
    if m.encoder != crate::models::captioner::EncoderKind::Cnn
        || (m.channels.as_slice(), m.stem, m.image_size)
            != (a.channels.as_slice(), a.stem, a.image_size)
    {
        bail!(
            "encoder_from {}: its image encoder has channels {:?}, stem {}, image_size {}; give model.encoder: cnn with the same (model has {:?}, {}, {})",
            run.display(),
            a.channels,
            a.stem,
            a.image_size,
            m.channels,
            m.stem,
            m.image_size
        );
    }
    Ok(())
}

/// The captioner's model config with the `encoder_from` run's filled in (its tokenizer
/// checked: the words it reads are token ids).
pub fn resolved_model(cfg: &CaptionerStageConfig, tok: &TextTokenizer) -> Result<CaptionerConfig> {
    let mut m = cfg.model.clone();
    if let Some(run) = &cfg.encoder_from {
        m.aligned = Some(
            crate::stages::align::aligned_config(run, tok)
                .with_context(|| format!("encoder_from {}", run.display()))?,
        );
    }
    Ok(m)
}

/// Loads the align run's image encoder (and, for `context_words`, its image heads) into
/// the captioner, and freezes them unless `encoder_lr_scale` fine-tunes them.
fn read_aligned_encoder(stage: &mut CaptionerStage, run: &Path) -> Result<()> {
    crate::stages::align::load_aligned_part(&stage.vs, run, "image.cnn.", "cnn.")?;
    if stage.model.cfg.context_words > 0 || stage.model.cfg.context_places {
        crate::stages::align::load_aligned_part(&stage.vs, run, "image.", "image.")?;
    }
    if stage.cfg.encoder_lr_scale > 0.0 {
        stage.model.fine_tune_encoder();
    } else {
        stage.model.freeze_encoder(&stage.vs);
    }
    Ok(())
}

pub struct CaptionerStage {
    pub vs: nn::VarStore,
    pub model: Captioner,
    pub tok: TextTokenizer,
    cfg: CaptionerStageConfig,
    train: SplitData,
    val: SplitData,
    truth: Option<HashMap<String, Vec<String>>>,
    /// Targets of the auxiliary attribute loss per training row, when the model has it.
    attribute_targets: Option<Tensor>,
    device: Device,
    prefetch: Option<Prefetcher>,
}

impl CaptionerStageConfig {
    /// The options set here that read the embedded set's scene facts.
    pub fn scene_options(&self) -> Vec<&'static str> {
        let m = &self.model;
        [
            (m.attribute_weight > 0.0, "model.attribute_weight"),
            (m.attribute_context, "model.attribute_context"),
            (m.attribute_words, "model.attribute_words"),
            (
                self.pretrain.is_some(),
                "pretrain (the encoder learns the scene facts)",
            ),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

/// Builds the model for `cfg` on `device` with the dataset's tokenizer.
pub fn build_model(
    cfg: &CaptionerConfig,
    tok: &TextTokenizer,
    device: Device,
) -> Result<(nn::VarStore, Captioner)> {
    let mut mcfg = cfg.clone();
    mcfg.vocab_size = tok.vocab_size() as i64;
    if mcfg.aligned.is_some() && mcfg.context_words == 0 && !mcfg.context_places {
        // Only the words read the align run's heads.
        mcfg.aligned = None;
    }
    let vs = nn::VarStore::new(device);
    let words = if cfg.attribute_words {
        let encode = |text: &str| -> Result<Vec<i64>> {
            let ids = tok.encode(text, 64)?;
            Ok(ids[1..ids.len() - 1].to_vec())
        };
        Some(FactWords::new(encode, mcfg.vocab_size, device)?)
    } else {
        None
    };
    let model = Captioner::with_words(&vs.root(), &mcfg, words)?;
    Ok((vs, model))
}

impl CaptionerStage {
    pub fn new(mut cfg: CaptionerStageConfig, device: Device) -> Result<Self> {
        let (ds, tok) = super::open_training_data(&cfg.data, &cfg.scene_options())?;
        tch::manual_seed(cfg.seed as i64);
        let (vs, model) = build_model(&resolved_model(&cfg, &tok)?, &tok, device)?;
        let size = cfg.model.image_size as u32;
        let train = load_split(&ds, Split::Train, size, cfg.limit_train)?;
        cfg.train.resolve_epochs(train.ids.len(), "train")?;
        if let Some(pre) = cfg.pretrain.as_mut() {
            pre.train
                .resolve_epochs(train.ids.len(), "pretrain.train")?;
        }
        let val = load_split(&ds, Split::Val, size, Some(cfg.eval.subset.max(1)))?;
        train.check_token_room(cfg.model.max_len, "model.max_len")?;
        let truth = synth_facts(&ds)?;
        let attribute_targets = if model.wants_attributes() {
            Some(
                crate::stages::evaluators::cell_target_tensor(&ds, &train.ids).context(
                    "model.attribute_weight > 0 needs the embedded set's scene metadata",
                )?,
            )
        } else {
            None
        };
        Ok(CaptionerStage {
            vs,
            model,
            tok,
            cfg,
            train,
            val,
            truth,
            attribute_targets,
            device,
            prefetch: None,
        })
    }

    fn sampled_fraction(&self, micro: u64) -> f64 {
        let l = &self.cfg.loss;
        let total = (self.cfg.train.steps * self.cfg.train.accumulate) as f64;
        let progress = micro as f64 / total;
        if l.sampling_fraction <= 0.0 || progress < l.sampling_start {
            return 0.0;
        }
        l.sampling_fraction * (progress - l.sampling_start) / (1.0 - l.sampling_start).max(1e-9)
    }
}

/// Decodes `images` (uint8) in batches and returns the captions.
pub fn caption_images(
    model: &Captioner,
    tok: &TextTokenizer,
    images: &Tensor,
    opts: &DecodeOptions,
    device: Device,
    batch: i64,
) -> Vec<String> {
    let n = images.size()[0];
    let mut out = Vec::with_capacity(n as usize);
    let mut start = 0;
    while start < n {
        // Minutes of decoding: take the cores a finished neighbour frees.
        crate::util::cores::rebalance();
        let len = batch.min(n - start);
        let x = to_float(&images.narrow(0, start, len), device);
        for ids in model.generate(&x, opts, tok.bos, tok.eos, tok.pad) {
            out.push(tok.decode(&ids));
        }
        start += len;
    }
    out
}

/// Teacher-forced mean loss over a split's rows (for perplexity).
pub fn teacher_forced_loss(model: &Captioner, data: &SplitData, pad: i64, device: Device) -> f64 {
    let tokens = data.tokens.as_ref().expect("tokenized");
    let n = data.images.size()[0];
    let mut total = 0.0;
    let mut count = 0.0;
    tch::no_grad(|| {
        let mut start = 0;
        while start < n {
            let len = 32.min(n - start);
            let x = to_float(&data.images.narrow(0, start, len), device);
            let t = tokens.narrow(0, start, len).to_device(device);
            total += model
                .loss(&x, &t, None, pad, 0.0, 0.0, false)
                .double_value(&[])
                * len as f64;
            count += len as f64;
            start += len;
        }
    });
    total / count.max(1.0)
}

impl Trainable for CaptionerStage {
    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn lr_scales(&self) -> Vec<(String, f64)> {
        let scale = self.cfg.encoder_lr_scale;
        if self.cfg.encoder_from.is_none() || scale == 0.0 {
            return vec![];
        }
        let names: Vec<String> = self.vs.variables().into_keys().collect();
        ["cnn.", crate::models::captioner::ALIGNED_PREFIX]
            .into_iter()
            .filter(|p| names.iter().any(|n| n.starts_with(p)))
            .map(|p| (p.to_string(), scale))
            .collect()
    }

    fn loss(&mut self, micro: u64) -> Result<Tensor> {
        // Started at the first micro-batch asked for, so a resumed run keeps the order.
        let (images, tokens) = (&self.train.images, self.train.tokens.as_ref());
        let (batch, seed) = (self.cfg.train.batch_size, self.cfg.seed);
        let p = self
            .prefetch
            .get_or_insert_with(|| Prefetcher::new(images, tokens, batch, seed, micro, 4));
        let (x, tokens) = p.get(micro)?;
        let x = augment(
            &to_float(&x, self.device),
            self.cfg.augment_shift,
            self.cfg.augment_crop,
        );
        let tokens = tokens.context("tokenized captions")?.to_device(self.device);
        let frac = self.sampled_fraction(micro);
        let attributes = self
            .attribute_targets
            .as_ref()
            .map(|t| batch_rows(t, batch, seed, micro, self.device));
        Ok(self.model.loss(
            &x,
            &tokens,
            attributes.as_ref(),
            self.tok.pad,
            self.cfg.loss.label_smoothing,
            frac,
            true,
        ))
    }

    fn evaluate(&mut self, step: u64, tb: &mut EventWriter) -> Result<BTreeMap<String, f64>> {
        let loss = teacher_forced_loss(&self.model, &self.val, self.tok.pad, self.device);
        let captions = caption_images(
            &self.model,
            &self.tok,
            &self.val.images,
            &self.cfg.eval.decode,
            self.device,
            64,
        );
        let mut m = caption_metrics(&captions, &self.val.captions);
        m.retain(|k, _| ["bleu4", "cider_d", "repeated_trigrams"].contains(&k.as_str()));
        m.insert("loss".into(), loss);
        m.insert("perplexity".into(), loss.exp());
        if let Some(truth) = &self.truth {
            m.extend(attribute_scores(&captions, &self.val.ids, truth));
        }
        for (i, c) in captions.iter().take(3).enumerate() {
            tb.text(
                &format!("captions/val_{i}"),
                step as i64,
                &format!(
                    "**generated:** {c}\n\n**reference:** {}",
                    self.val.captions[i]
                ),
            )?;
        }
        Ok(m)
    }
}

pub fn train(
    cfg: CaptionerStageConfig,
    config_yaml: String,
    run_dir: &Path,
    resume: bool,
    device: Device,
) -> Result<runner::RunSummary> {
    if let Some(run) = &cfg.encoder_from {
        check_aligned_encoder(&cfg, run)?;
    } else if cfg.encoder_lr_scale != 0.0 {
        bail!("encoder_lr_scale fine-tunes the encoder_from run's encoder: give encoder_from too");
    }
    let mut stage = CaptionerStage::new(cfg, device)?;
    // The stage's copy, with `epochs` turned into steps.
    let cfg = stage.cfg.clone();
    if let Some(run) = &cfg.encoder_from {
        read_aligned_encoder(&mut stage, run)?;
    }
    let opts = RunOptions {
        run_dir: run_dir.to_path_buf(),
        // A run stopped between its two phases resumes its second from the start.
        resume: resume && (cfg.pretrain.is_none() || checkpoint::exists(run_dir, "latest")),
        seed: cfg.seed,
        arch: serde_json::to_value(&stage.model.cfg)?,
        tokenizer_hash: stage.tok.hash.clone(),
        best: cfg.best.clone(),
        config_yaml,
    };
    if let Some(pre) = &cfg.pretrain {
        pretrain_encoder(&mut stage, pre, &opts, resume)?;
    }
    let params = runner::parameters(&stage.vs);
    crate::util::progress::note(format!(
        "captioner: {:.2}M trainable parameters, {} training images, {} steps of {} on {:?}",
        params as f64 / 1e6,
        stage.train.ids.len(),
        cfg.train.steps,
        cfg.train.batch_size,
        device
    ));
    let summary = runner::run(&mut stage, &cfg.train, &opts)?;
    super::write_done(run_dir, &summary)?;
    Ok(summary)
}

/// A trained captioner read back from its run folder (config + chosen checkpoint; EMA
/// weights when the run kept them).
pub struct LoadedCaptioner {
    pub cfg: CaptionerStageConfig,
    pub vs: nn::VarStore,
    pub model: Captioner,
    pub tok: TextTokenizer,
    pub step: u64,
}

pub fn load_run(run_dir: &Path, checkpoint: &str, device: Device) -> Result<LoadedCaptioner> {
    let cfg: CaptionerStageConfig = super::run_config(run_dir, "captioner")?;
    let ds = Dataset::open(&cfg.data)?;
    let tok = TextTokenizer::load(&ds.tokenizer_path())?;
    let (vs, model) = build_model(&resolved_model(&cfg, &tok)?, &tok, device)?;
    let state = crate::train::checkpoint::load_weights(&vs, run_dir, checkpoint, Some(&tok.hash))?;
    Ok(LoadedCaptioner {
        cfg,
        vs,
        model,
        tok,
        step: state.step,
    })
}

/// `eval captioner`: decodes a split, scores it, writes metrics.json and a page.
pub fn evaluate(
    run_dir: &Path,
    split: Split,
    checkpoint: &str,
    decode: Option<DecodeOptions>,
    limit: Option<usize>,
    device: Device,
) -> Result<BTreeMap<String, f64>> {
    let lc = load_run(run_dir, checkpoint, device)?;
    let ds = Dataset::open(&lc.cfg.data)?;
    let data = load_split(&ds, split, lc.cfg.model.image_size as u32, limit)?;
    let opts = decode.unwrap_or(lc.cfg.eval.decode.clone());
    // Each image is captioned once and scored against all of its captions.
    let (keep, refs) =
        crate::data::loader::references_by_image(&data.ids, &data.captions, &ds.image_of_items()?);
    let images = data.images.index_select(0, &Tensor::from_slice(&keep));
    let start = std::time::Instant::now();
    let captions = caption_images(&lc.model, &lc.tok, &images, &opts, device, 64);
    let secs = start.elapsed().as_secs_f64();
    let loss = teacher_forced_loss(&lc.model, &data, lc.tok.pad, device);
    let mut m = caption_metrics_multi(&captions, &refs);
    m.insert(
        "references_per_image".into(),
        data.ids.len() as f64 / keep.len() as f64,
    );
    m.insert("loss".into(), loss);
    m.insert("perplexity".into(), loss.exp());
    m.insert("images".into(), captions.len() as f64);
    m.insert("images_per_sec".into(), captions.len() as f64 / secs);
    // The embedded set has one caption per image, so `keep` is every row there.
    if let (Some(truth), true) = (synth_facts(&ds)?, keep.len() == data.ids.len()) {
        m.extend(attribute_scores(&captions, &data.ids, &truth));
        if let Some(heads) = heads_vs_caption(&lc.model, &captions, &data, &truth, device)? {
            m.extend(heads);
        }
    }
    let out = run_dir.join(format!("eval_{}", split.name()));
    crate::util::fsio::write_json(&out.join("metrics.json"), &m)?;
    let rows: Vec<(String, String, String)> = keep
        .iter()
        .zip(&captions)
        .take(24)
        .map(|(&i, g)| {
            let i = i as usize;
            (data.ids[i].clone(), g.clone(), data.captions[i].clone())
        })
        .collect();
    crate::report::caption_page(&out, &ds, &rows, &m).context("writing the caption page")?;
    Ok(m)
}
