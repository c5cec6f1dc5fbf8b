//! The text → image stage: `train t2i`, `draw` and `eval t2i`. Generated images are
//! graded by the separately trained evaluators (contrastive model and probe), never by
//! the generator's own text encoder (TISE, Dinh et al. 2021).

use super::evaluators::{
    embed_images, embed_tokens, load_clip, load_probe, probe_predict, scene_targets, scenes_of,
    stored_side, tokenize_batch, LoadedClip, LoadedProbe,
};
use crate::data::layout::{Dataset, Split};
use crate::data::loader::{batch_rows, load_split, micro_batch, to_float, to_u8, SplitData};
use crate::data::tokenizer::TextTokenizer;
use crate::eval::embedding::{
    clip_score, frechet_distance, inception_style_score, kid, mean_pairwise_distance,
    r_precision_grouped,
};
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
    c.text.set_tokenizer(tok)?;
    let vs = nn::VarStore::new(device);
    let m = TextToImage::new(&vs.root(), &c)?;
    Ok((vs, m))
}

/// What drawing needs from a text → image model. The trainer's model and the exported
/// TorchScript one both implement it, so they draw through the same code.
pub trait Painter {
    /// The condition of caption token rows (`pad` is the tokenizer's padding id).
    fn condition_of(&self, tokens: &Tensor, pad: i64) -> Result<Condition>;
    /// The starting noise of `n` samples.
    fn noise_of(&self, n: i64, device: Device) -> Tensor;
    /// Images in [-1, 1], one per row of `cond`, from the noise `z`.
    fn paint(&self, cond: &Condition, z: &Tensor) -> Result<Tensor>;
}

impl Painter for TextToImage {
    fn condition_of(&self, tokens: &Tensor, pad: i64) -> Result<Condition> {
        Ok(self.condition(tokens, pad, false))
    }
    fn noise_of(&self, n: i64, device: Device) -> Tensor {
        self.noise(n, device)
    }
    fn paint(&self, cond: &Condition, z: &Tensor) -> Result<Tensor> {
        Ok(self.sample(cond, z))
    }
}

/// Draws one image per caption row of `tokens` (uint8 out), with noise seeded by `seed`.
pub fn draw_tokens(
    model: &TextToImage,
    tokens: &Tensor,
    pad: i64,
    per_caption: i64,
    seed: i64,
    device: Device,
) -> Tensor {
    paint_tokens(model, tokens, pad, per_caption, seed, device)
        .expect("the trainer's generator returns no errors while drawing")
}

/// [`draw_tokens`] for any [`Painter`]: `per_caption` images per caption row, in
/// batches of 64 captions, noise seeded by `seed`.
pub fn paint_tokens(
    model: &impl Painter,
    tokens: &Tensor,
    pad: i64,
    per_caption: i64,
    seed: i64,
    device: Device,
) -> Result<Tensor> {
    tch::no_grad(|| {
        let n = tokens.size()[0];
        let mut out = vec![];
        let mut s = 0;
        tch::manual_seed(seed);
        while s < n {
            let len = 64.min(n - s);
            let cond = model
                .condition_of(&tokens.narrow(0, s, len).to_device(device), pad)?
                .repeat(per_caption);
            let z = model.noise_of(len * per_caption, device);
            out.push(to_u8(&model.paint(&cond, &z)?));
            s += len;
        }
        Ok(Tensor::cat(&out, 0))
    })
}

/// uint8 images `(N, 3, S, S)` resized to side `side` for an evaluator trained at another
/// resolution than the generator draws, by the same filter that loads dataset images
/// (area averaging when shrinking): a drawn image and a real one reach it alike.
pub fn resized(x: &Tensor, side: i64) -> Tensor {
    crate::data::images::resize_batch(x, side as u32)
}

#[allow(clippy::too_many_arguments)] // each input is a distinct role; a struct would only rename them
/// Every generation score for images drawn from `captions` (one per caption), against
/// the real `reference` images of the same split.
pub fn generation_scores(
    images: &Tensor,
    captions: &[String],
    caption_ids: &[String],
    reference: &Tensor,
    clip: &LoadedClip,
    probe: Option<&LoadedProbe>,
    ds: &Dataset,
    device: Device,
) -> Result<BTreeMap<String, f64>> {
    let tokens = tokenize_batch(&clip.tok, captions, clip.cfg.model.text.max_len as usize)?;
    let txt = embed_tokens(&clip.model, &tokens, clip.tok.pad, device);
    let clip_size = clip.cfg.model.image_size;
    let (img, feat) = embed_images(&clip.model, &resized(images, clip_size), device);
    let (_, real_feat) = embed_images(&clip.model, &resized(reference, clip_size), device);
    let mut m = BTreeMap::new();
    m.insert("clip_score".into(), clip_score(&img, &txt));
    // Another caption of the same picture is not a distractor.
    let groups = crate::data::loader::image_groups(caption_ids, &ds.image_of_items()?);
    m.insert(
        "r_precision".into(),
        r_precision_grouped(&img, &txt, &groups, 99, 0),
    );
    m.insert("fd_own".into(), frechet_distance(&feat, &real_feat));
    m.insert("kid_own".into(), kid(&feat, &real_feat));
    if let Some(p) = probe {
        let truth = scene_targets(ds, caption_ids)?;
        // The probe grades at its own resolution (a generator may draw smaller).
        let images = &resized(images, p.cfg.model.image_size);
        let pred = probe_predict(&p.model, images, device);
        m.insert(
            "probe_attr_accuracy".into(),
            attribute_accuracy(&pred, &truth),
        );
        // Per slot, as `eval probe` reports them, to see which facts the pictures lose.
        for (slot, acc) in slot_accuracies(&pred, &truth) {
            m.insert(format!("probe_acc_{slot}"), acc);
        }
        let post = tch::no_grad(|| p.model.kind_posteriors(&to_float(images, device)));
        m.insert("is_style".into(), inception_style_score(&post));
    }
    Ok(m)
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
        self.model
            .gan_losses(g, &x, &t, self.tok.pad)
            .context("optimizer groups are only used by a GAN")
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
    let ds = Dataset::open(&cfg.data)?;
    super::refuse_scene_options(&ds, &cfg.scene_options())?;
    let tok = TextTokenizer::load(&ds.tokenizer_path())?;
    tch::manual_seed(cfg.seed as i64);
    let (vs, model) = build(&cfg.model, &tok, device)?;
    let size = cfg.model.image_size as u32;
    let train = load_split(&ds, Split::Train, size, cfg.limit_train)?;
    let val = load_split(&ds, Split::Val, size, Some(cfg.eval.subset))?;
    if train.tokens.is_none() {
        bail!(
            "{} has no tokenized_captions.json; run `ekphrasis tokenizer train` first",
            cfg.data.display()
        );
    }
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

/// The text side's pretraining phase: the encoder and the fact reader on the facts.
struct TextPretrain<'a> {
    vs: &'a nn::VarStore,
    model: &'a TextToImage,
    tokens: &'a Tensor,
    targets: &'a Tensor,
    val_tokens: &'a Tensor,
    val_truth: Vec<Vec<i64>>,
    pad: i64,
    batch: usize,
    seed: u64,
    device: Device,
}

impl Trainable for TextPretrain<'_> {
    fn var_store(&self) -> &nn::VarStore {
        self.vs
    }

    fn groups(&self) -> Vec<Group> {
        vec![Group {
            name: "text".into(),
            prefixes: vec!["text.".into()],
            lr_scale: 1.0,
        }]
    }

    fn loss(&mut self, micro: u64) -> Result<Tensor> {
        let t = trim_padding(
            &batch_rows(self.tokens, self.batch, self.seed, micro, self.device),
            self.pad,
        );
        let a = batch_rows(self.targets, self.batch, self.seed, micro, self.device);
        self.model
            .fact_loss(&t, &a, self.pad)
            .context("pretrain needs model.facts")
    }

    fn evaluate(&mut self, _step: u64, _tb: &mut EventWriter) -> Result<BTreeMap<String, f64>> {
        let pred = read_facts(self.model, self.val_tokens, self.pad, self.device)?;
        Ok(BTreeMap::from([(
            "fact_accuracy".into(),
            attribute_accuracy(&pred, &self.val_truth),
        )]))
    }
}

/// Caption token rows cut after the batch's longest caption: the padding beyond it is
/// masked anyway, and a text step costs in proportion to the length it runs over.
fn trim_padding(tokens: &Tensor, pad: i64) -> Tensor {
    let longest = tokens
        .ne(pad)
        .sum_dim_intlist(1, false, Kind::Int64)
        .max()
        .int64_value(&[]);
    tokens.narrow(1, 0, longest.max(1))
}

/// The facts a model's reader takes from caption token rows, as prediction rows in the
/// probe's evaluation layout.
pub fn read_facts(
    model: &TextToImage,
    tokens: &Tensor,
    pad: i64,
    device: Device,
) -> Result<Vec<Vec<i64>>> {
    let mut rows = vec![];
    let n = tokens.size()[0];
    for start in (0..n).step_by(128) {
        let t = trim_padding(
            &tokens
                .narrow(0, start, 128.min(n - start))
                .to_device(device),
            pad,
        );
        let (global, cells) = tch::no_grad(|| model.fact_logits(&t, pad, false))
            .context("the model has no fact reader (model.facts)")?;
        rows.extend(crate::scenes::probe::rows_from_logits(
            &crate::scenes::heads::AttributeLogits {
                hidden: global.zeros_like(),
                global,
                cells,
            },
        ));
    }
    Ok(rows)
}

/// Runs (or, on resume, reloads) the text side's pretraining in `<run>/text`, then
/// freezes it for the generator's phase.
fn pretrain_text(
    stage: &mut T2IStage,
    pre: &TextPretrainConfig,
    opts: &RunOptions,
    resume: bool,
) -> Result<()> {
    if !stage.model.reads_facts() {
        bail!("pretrain: trains the fact reader of model.facts, which this model has not");
    }
    let targets = stage
        .attribute_targets
        .as_ref()
        .context("pretrain needs the embedded set's scene facts")?;
    let phase = super::FirstPhase {
        folder: "text",
        name: "t2i text side",
        metric: "fact_accuracy",
        trains: &["text."],
        train: &pre.train,
        config_yaml: serde_yaml::to_string(pre)?,
    };
    let s = &*stage;
    super::run_first_phase(&s.vs, opts, resume, phase, || {
        Ok(TextPretrain {
            vs: &s.vs,
            model: &s.model,
            tokens: s.train.tokens.as_ref().context("tokenized captions")?,
            targets,
            val_tokens: s.val.tokens.as_ref().context("tokenized captions")?,
            val_truth: scene_targets(&s.ds, &s.val.ids)?,
            pad: s.tok.pad,
            batch: pre.train.batch_size,
            seed: s.cfg.seed,
            device: s.device,
        })
    })?;
    stage.model.freeze_text(&stage.vs);
    Ok(())
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

/// Mean pairwise distance of the contrastive features within each group of `per`
/// consecutive images, averaged over the groups: 0 when the images of a group are alike.
fn group_diversity(images: &Tensor, per: i64, clip: &LoadedClip, device: Device) -> f64 {
    let (_, feats) = embed_images(
        &clip.model,
        &resized(images, clip.cfg.model.image_size),
        device,
    );
    let groups = feats.size()[0] / per;
    (0..groups)
        .map(|i| mean_pairwise_distance(&feats.narrow(0, i * per, per)))
        .sum::<f64>()
        / groups.max(1) as f64
}

/// The embedded set's scenes of `ids` painted again, `per` times each with another seed,
/// at the dataset's size `(ids·per, 3, S, S)`: the renderer varies the stars, the waves
/// and the styles' textures, and keeps every fact. Their [`group_diversity`] is the
/// data's own: what a generator that models all of p(x | t) would reach.
fn repainted_scenes(ds: &Dataset, ids: &[String], per: u64) -> Result<Tensor> {
    let scenes = scenes_of(ds, ids)?;
    let side = stored_side(ds, ids.first().context("no images to repaint")?)?;
    let pixels: Vec<u8> = scenes
        .iter()
        .flat_map(|s| (0..per).flat_map(move |seed| paint(s, side as usize, seed)))
        .collect();
    let n = (scenes.len() as u64 * per) as i64;
    Ok(crate::data::images::nchw_batch(&pixels, n, side))
}

/// `eval t2i`: test captions → images → every generation score, plus the "mean
/// training image" baseline for FD-own and a diversity figure.
pub fn evaluate(
    run_dir: &Path,
    split: Split,
    limit: Option<usize>,
    device: Device,
) -> Result<BTreeMap<String, f64>> {
    let lt = load_run(run_dir, device)?;
    let ds = Dataset::open(&lt.cfg.data)?;
    let data = load_split(&ds, split, lt.cfg.model.image_size as u32, limit)?;
    let (clip, probe) = load_evaluators(&lt.cfg.eval, &ds, device)?;
    let tokens = data.tokens.as_ref().context("tokenized captions")?;
    let start = std::time::Instant::now();
    let images = draw_tokens(&lt.model, tokens, lt.tok.pad, 1, 0, device);
    let secs = start.elapsed().as_secs_f64();
    let mut m = generation_scores(
        &images,
        &data.captions,
        &data.ids,
        &data.images,
        &clip,
        probe.as_ref(),
        &ds,
        device,
    )?;
    m.insert("images_per_sec".into(), data.ids.len() as f64 / secs);
    if lt.model.reads_facts() {
        // What the generator was told: the ceiling of its probe accuracy.
        let read = read_facts(&lt.model, tokens, lt.tok.pad, device)?;
        let truth = scene_targets(&ds, &data.ids)?;
        m.insert(
            "reader_fact_accuracy".into(),
            attribute_accuracy(&read, &truth),
        );
    }
    // Diversity: 5 noises for each of the first 20 captions, mean pairwise distance of
    // their contrastive features (0 means the noise is ignored: mode collapse).
    let k = 20.min(tokens.size()[0]);
    let many = draw_tokens(&lt.model, &tokens.narrow(0, 0, k), lt.tok.pad, 5, 7, device);
    m.insert("diversity".into(), group_diversity(&many, 5, &clip, device));
    if probe.is_some() {
        // A probe grades the embedded set alone, whose scenes can be painted again.
        let renders = repainted_scenes(&ds, &data.ids[..k as usize], 5)?;
        m.insert(
            "diversity_data".into(),
            group_diversity(&renders, 5, &clip, device),
        );
    }
    let clip_size = clip.cfg.model.image_size;
    // Baseline: a generator that always draws the mean training image.
    let train = load_split(
        &ds,
        Split::Train,
        lt.cfg.model.image_size as u32,
        Some(1000),
    )?;
    let mean_img = train
        .images
        .to_kind(Kind::Float)
        .mean_dim(0, true, Kind::Float)
        .round()
        .to_kind(Kind::Uint8);
    let constant = mean_img
        .expand([data.ids.len() as i64, -1, -1, -1], false)
        .contiguous();
    let (_, const_feat) = embed_images(&clip.model, &resized(&constant, clip_size), device);
    let (_, real_feat) = embed_images(&clip.model, &resized(&data.images, clip_size), device);
    m.insert(
        "fd_own_mean_image_baseline".into(),
        frechet_distance(&const_feat, &real_feat),
    );
    m.insert("images".into(), data.ids.len() as f64);
    let out = run_dir.join(format!("eval_{}", split.name()));
    crate::util::fsio::write_json(&out.join("metrics.json"), &m)?;
    let (rgb, h, w) = crate::report::grid::grid_rgb(&many.narrow(0, 0, many.size()[0].min(25)), 5);
    crate::util::fsio::atomic_write(
        &out.join("grid_5x5.png"),
        &crate::report::grid::png(&rgb, w, h)?,
    )?;
    Ok(m)
}

/// `draw`'s diffusion sampling options; each replaces the run's setting when given.
#[derive(Debug, Default)]
pub struct SamplingOverrides {
    pub sampler: Option<Sampler>,
    pub sample_steps: Option<i64>,
    pub guidance: Option<f64>,
    pub eta: Option<f64>,
}

impl SamplingOverrides {
    /// Applies the overrides to a diffusion model's settings (`None`: not diffusion).
    pub fn apply(&self, settings: Option<&mut DiffusionConfig>) -> Result<()> {
        let given = self.sampler.is_some()
            || self.sample_steps.is_some()
            || self.guidance.is_some()
            || self.eta.is_some();
        let Some(d) = settings else {
            if given {
                bail!("--sampler/--sample-steps/--guidance/--eta apply to diffusion runs only");
            }
            return Ok(());
        };
        if let Some(s) = self.sampler {
            d.sampler = s;
        }
        if let Some(n) = self.sample_steps {
            if !(1..=d.timesteps).contains(&n) {
                bail!(
                    "--sample-steps {n}: give 1 to {} (the timesteps the model was trained with)",
                    d.timesteps
                );
            }
            d.sample_steps = n;
        }
        if let Some(g) = self.guidance {
            if !(0.0..=crate::config::MAX_GUIDANCE).contains(&g) {
                bail!(
                    "--guidance {g}: give a scale from 0 to {} (1 = the conditional model alone)",
                    crate::config::MAX_GUIDANCE
                );
            }
            d.guidance = g;
        }
        if let Some(e) = self.eta {
            if !(0.0..=1.0).contains(&e) {
                bail!("--eta {e}: give a number from 0 (deterministic DDIM) to 1");
            }
            d.eta = e;
        }
        Ok(())
    }
}

/// What `draw` paints: each text `n` times, noise seeded by `seed`, with the diffusion
/// sampling overrides.
pub struct DrawRequest<'a> {
    pub texts: &'a [String],
    pub n: i64,
    pub seed: i64,
    pub sampling: &'a SamplingOverrides,
}

/// `draw --run`: the uint8 images of `req` from a trained run, `n` per text in order.
pub fn draw(run_dir: &Path, req: &DrawRequest, device: Device) -> Result<Tensor> {
    let mut lt = load_run(run_dir, device)?;
    req.sampling.apply(lt.model.diffusion_mut())?;
    let tokens = tokens_for(&lt.tok, req.texts, lt.cfg.model.text.max_len as usize)?;
    Ok(draw_tokens(
        &lt.model, &tokens, lt.tok.pad, req.n, req.seed, device,
    ))
}

/// Writes uint8 images `(T·n, 3, S, S)`, n per text, as `caption<T>_noise<i>.png`, and
/// `grid.png` (texts × noises) with `grid`.
pub fn write_drawings(images: &Tensor, n: i64, out: &Path, grid: bool) -> Result<Vec<PathBuf>> {
    let mut paths = vec![];
    let s = images.size()[2] as u32;
    for i in 0..images.size()[0] {
        let rgb: Vec<u8> = Vec::try_from(images.get(i).permute([1, 2, 0]).contiguous().view([-1]))
            .expect("a tensor of the kind we made");
        let p = out.join(format!("caption{:03}_noise{}.png", i / n, i % n));
        crate::util::fsio::atomic_write(&p, &crate::report::grid::png(&rgb, s, s)?)?;
        paths.push(p);
    }
    if grid {
        let (rgb, h, w) = crate::report::grid::grid_rgb(images, n);
        let p = out.join("grid.png");
        crate::util::fsio::atomic_write(&p, &crate::report::grid::png(&rgb, w, h)?)?;
        paths.push(p);
    }
    Ok(paths)
}
