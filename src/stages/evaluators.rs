//! The evaluator stages: `train clip` / `eval clip` (the contrastive embedding) and
//! `train probe` (the attribute classifier). Both train on the training split only and
//! are loaded read-only by every stage they grade.

use crate::data::layout::{Dataset, Split};
use crate::data::loader::{
    batch_indices, image_groups, load_split, micro_batch, to_float, SplitData,
};
use crate::data::tokenizer::TextTokenizer;
use crate::eval::embedding::{r_precision_grouped, retrieval_folds, retrieval_grouped};
use crate::models::clip::{Clip, ClipConfig};
use crate::scenes::probe::{attribute_accuracy, cell_targets, targets, Probe, ProbeConfig};
use crate::scenes::scene_of;
use crate::train::runner::{self, BestMetric, RunOptions, RunSummary, TrainConfig, Trainable};
use crate::util::tensorboard::EventWriter;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Tensor};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipStageConfig {
    pub data: PathBuf,
    pub seed: u64,
    pub model: ClipConfig,
    pub train: TrainConfig,
    /// Validation pairs scored at each evaluation.
    pub eval_subset: usize,
    pub best: BestMetric,
    #[serde(default)]
    pub limit_train: Option<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeStageConfig {
    pub data: PathBuf,
    pub seed: u64,
    pub model: ProbeConfig,
    pub train: TrainConfig,
    pub eval_subset: usize,
    pub best: BestMetric,
    #[serde(default)]
    pub limit_train: Option<usize>,
    /// Scenes rendered in memory beside the training split (never a val/test image; see
    /// [`crate::scenes::render_extra`]). The probe memorises 4,000 images within
    /// ~900 steps; fresh scenes keep it learning the attributes instead.
    #[serde(default)]
    pub extra_renders: usize,
}

/// Embeds `images` (uint8) in batches: unit embeddings and pre-projection features.
pub fn embed_images(clip: &Clip, images: &Tensor, device: Device) -> (Tensor, Tensor) {
    tch::no_grad(|| {
        let n = images.size()[0];
        let (mut e, mut f) = (vec![], vec![]);
        let mut s = 0;
        while s < n {
            let len = 128.min(n - s);
            let x = to_float(&images.narrow(0, s, len), device);
            let feat = clip.image_features(&x, false);
            e.push(clip.project_features(&feat));
            f.push(feat);
            s += len;
        }
        (Tensor::cat(&e, 0), Tensor::cat(&f, 0))
    })
}

/// Unit text embeddings of token rows `(N, L)`, in batches.
pub fn embed_tokens(clip: &Clip, tokens: &Tensor, pad: i64, device: Device) -> Tensor {
    tch::no_grad(|| {
        let n = tokens.size()[0];
        let mut out = vec![];
        let mut s = 0;
        while s < n {
            let len = 128.min(n - s);
            out.push(clip.embed_texts(&tokens.narrow(0, s, len).to_device(device), pad, false));
            s += len;
        }
        Tensor::cat(&out, 0)
    })
}

/// Tokenises free text into a padded `(N, L)` tensor.
pub fn tokenize_batch(tok: &TextTokenizer, texts: &[String], max_len: usize) -> Result<Tensor> {
    let mut rows = Vec::with_capacity(texts.len() * max_len);
    for t in texts {
        let mut ids = tok.encode(t, max_len)?;
        ids.resize(max_len, tok.pad);
        rows.extend(ids);
    }
    Ok(Tensor::from_slice(&rows).view([texts.len() as i64, max_len as i64]))
}

struct ClipStage {
    vs: nn::VarStore,
    model: Clip,
    tok: TextTokenizer,
    cfg: ClipStageConfig,
    train: SplitData,
    val: SplitData,
    /// The image of each validation row (several captions may share one).
    val_groups: Vec<usize>,
    device: Device,
}

impl Trainable for ClipStage {
    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
    fn loss(&mut self, micro: u64) -> Result<Tensor> {
        let (x, t) = micro_batch(
            &self.train,
            self.cfg.train.batch_size,
            self.cfg.seed,
            micro,
            self.device,
        );
        let t = t.context("tokenized captions")?;
        Ok(self.model.loss(&x, &t, self.tok.pad, true))
    }
    fn evaluate(&mut self, _step: u64, _tb: &mut EventWriter) -> Result<BTreeMap<String, f64>> {
        let (img, _) = embed_images(&self.model, &self.val.images, self.device);
        let txt = embed_tokens(
            &self.model,
            self.val
                .tokens
                .as_ref()
                .expect("tokenized: checked when the stage was built"),
            self.tok.pad,
            self.device,
        );
        let mut m = retrieval_grouped(&img, &txt, &self.val_groups);
        m.retain(|k, _| k.ends_with("r1") || k.ends_with("r10"));
        m.insert("mean_r1".into(), (m["i2t_r1"] + m["t2i_r1"]) / 2.0);
        m.insert(
            "temperature".into(),
            1.0 / self.model.logit_scale().double_value(&[]),
        );
        Ok(m)
    }
}

fn open_with_tokenizer(data: &Path) -> Result<(Dataset, TextTokenizer)> {
    let ds = Dataset::open(data)?;
    if !ds.tokenized_path().exists() {
        bail!(
            "{} has no tokenized_captions.json; run `ekphrasis tokenizer train` first",
            data.display()
        );
    }
    let tok = TextTokenizer::load(&ds.tokenizer_path())?;
    Ok((ds, tok))
}

pub fn build_clip(
    cfg: &ClipConfig,
    tok: &TextTokenizer,
    device: Device,
) -> Result<(nn::VarStore, Clip)> {
    let mut c = cfg.clone();
    c.text.set_tokenizer(tok)?;
    let vs = nn::VarStore::new(device);
    let m = Clip::new(&vs.root(), &c)?;
    Ok((vs, m))
}

pub fn train_clip(
    cfg: ClipStageConfig,
    yaml: String,
    run_dir: &Path,
    resume: bool,
    device: Device,
) -> Result<RunSummary> {
    let (ds, tok) = open_with_tokenizer(&cfg.data)?;
    tch::manual_seed(cfg.seed as i64);
    let (vs, model) = build_clip(&cfg.model, &tok, device)?;
    let size = cfg.model.image_size as u32;
    let train = load_split(&ds, Split::Train, size, cfg.limit_train)?;
    let val = load_split(&ds, Split::Val, size, Some(cfg.eval_subset))?;
    let val_groups = image_groups(&val.ids, &ds.image_of_items()?);
    let opts = RunOptions {
        run_dir: run_dir.to_path_buf(),
        resume,
        seed: cfg.seed,
        arch: serde_json::to_value(&model.cfg)?,
        tokenizer_hash: tok.hash.clone(),
        best: cfg.best.clone(),
        config_yaml: yaml,
    };
    let mut stage = ClipStage {
        vs,
        model,
        tok,
        cfg: cfg.clone(),
        train,
        val,
        val_groups,
        device,
    };
    let s = runner::run(&mut stage, &cfg.train, &opts)?;
    super::write_done(run_dir, &s)?;
    Ok(s)
}

/// A trained contrastive model (EMA weights when kept), with its tokenizer.
pub struct LoadedClip {
    pub cfg: ClipStageConfig,
    pub vs: nn::VarStore,
    pub model: Clip,
    pub tok: TextTokenizer,
}

pub fn load_clip(run_dir: &Path, device: Device) -> Result<LoadedClip> {
    let cfg: ClipStageConfig = super::run_config(run_dir, "clip")?;
    let (_, tok) = open_with_tokenizer(&cfg.data)?;
    let (vs, model) = build_clip(&cfg.model, &tok, device)?;
    crate::train::checkpoint::load_weights(&vs, run_dir, "best", Some(&tok.hash))?;
    Ok(LoadedClip {
        cfg,
        vs,
        model,
        tok,
    })
}

/// `eval clip`: retrieval both ways on a split, R-precision, plots and projector files.
pub fn eval_clip(
    run_dir: &Path,
    split: Split,
    limit: Option<usize>,
    device: Device,
) -> Result<BTreeMap<String, f64>> {
    let lc = load_clip(run_dir, device)?;
    let ds = Dataset::open(&lc.cfg.data)?;
    let data = load_split(&ds, split, lc.cfg.model.image_size as u32, limit)?;
    let (img, _) = embed_images(&lc.model, &data.images, device);
    let txt = embed_tokens(
        &lc.model,
        data.tokens.as_ref().context("tokenized captions")?,
        lc.tok.pad,
        device,
    );
    // Captions of one picture (`--multi pairs`) are never each other's distractors.
    let groups = image_groups(&data.ids, &ds.image_of_items()?);
    let mut m = retrieval_grouped(&img, &txt, &groups);
    m.insert(
        "r_precision".into(),
        r_precision_grouped(&img, &txt, &groups, 99, 0),
    );
    // The COCO 1k protocol where the split is large enough: folds of 1,000 images.
    if let Some(folds) = retrieval_folds(&img, &txt, &groups, 1000) {
        m.extend(folds.into_iter().map(|(k, v)| (format!("1k_{k}"), v)));
    }
    m.insert(
        "clip_score".into(),
        crate::eval::embedding::clip_score(&img, &txt),
    );
    m.insert("pairs".into(), data.ids.len() as f64);
    let out = run_dir.join(format!("eval_{}", split.name()));
    crate::util::fsio::write_json(&out.join("metrics.json"), &m)?;
    let labels = colour_labels(&ds, &data.ids)?;
    crate::report::plots::embedding_plots(&out, &img, &txt, &labels)?;
    crate::report::projector::write(&out.join("projector"), &img, &data, &labels)?;
    Ok(m)
}

/// A label per image to colour the plots: the style on the embedded set, else the
/// metadata's style/medium.
fn colour_labels(ds: &Dataset, ids: &[String]) -> Result<Vec<String>> {
    let rows: HashMap<String, crate::data::layout::MetadataRow> = ds
        .metadata()?
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    Ok(ids
        .iter()
        .map(|id| match rows.get(id) {
            Some(r) if r.has_scene() => scene_of(r)
                .map(|s| crate::scenes::scene::STYLES[s.style].to_string())
                .unwrap_or_default(),
            Some(r) if !r.style.is_empty() => r.style.clone(),
            Some(r) => r.medium.clone(),
            None => String::new(),
        })
        .collect())
}

struct ProbeStage {
    vs: nn::VarStore,
    model: Probe,
    cfg: ProbeStageConfig,
    train: SplitData,
    train_targets: Tensor,
    val: SplitData,
    val_targets: Vec<Vec<i64>>,
    device: Device,
}

/// Evaluation-layout targets of the given ids, from the embedded set's metadata.
pub fn scene_targets(ds: &Dataset, ids: &[String]) -> Result<Vec<Vec<i64>>> {
    scene_rows(ds, ids, targets)
}

fn scene_rows(
    ds: &Dataset,
    ids: &[String],
    layout: fn(&crate::scenes::scene::Scene) -> Vec<i64>,
) -> Result<Vec<Vec<i64>>> {
    Ok(scenes_of(ds, ids)?.iter().map(layout).collect())
}

/// The embedded set's scenes of images `ids`, from `metadata.csv`; an id that is
/// missing, or not a synthetic scene, is an error that names it.
pub fn scenes_of(ds: &Dataset, ids: &[String]) -> Result<Vec<crate::scenes::scene::Scene>> {
    let rows: HashMap<String, crate::data::layout::MetadataRow> = ds
        .metadata()?
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    ids.iter()
        .map(|id| {
            let r = rows
                .get(id)
                .with_context(|| format!("{id} missing from metadata.csv"))?;
            if !r.has_scene() {
                bail!(
                    "the attribute probe needs the embedded synthetic dataset ({id} is {:?})",
                    r.source
                );
            }
            scene_of(r)
        })
        .collect()
}

/// [`cell_targets`] rows of the embedded set's images `ids`, as one `(N, 39)` tensor:
/// the probe's training targets, and the captioner's auxiliary attribute targets.
pub fn cell_target_tensor(ds: &Dataset, ids: &[String]) -> Result<Tensor> {
    Ok(rows_tensor(&scene_rows(ds, ids, cell_targets)?))
}

/// The images (uint8, the split's size) and [`cell_targets`] rows an attribute reader
/// trains on: the training split, then `extra` scenes from
/// [`crate::scenes::render_extra`]. The renders are drawn at the dataset's own size
/// and resized like its images, so they look alike at any resolution (drawn directly at
/// 48 px they cost the probe 0.02 test accuracy).
pub fn attribute_training_set(
    ds: &Dataset,
    train: &SplitData,
    seed: u64,
    extra: usize,
    who: &str,
) -> Result<(Tensor, Tensor)> {
    let mut rows = scene_rows(ds, &train.ids, cell_targets)?;
    if extra == 0 {
        return Ok((train.images.shallow_clone(), rows_tensor(&rows)));
    }
    let first = train.ids.first().context("the training split is empty")?;
    let native = stored_side(ds, first)?;
    let (scenes, pixels) = crate::scenes::render_extra(seed, extra, native as usize);
    let rendered = crate::data::images::nchw_batch(&pixels, scenes.len() as i64, native);
    let rendered = crate::data::images::resize_batch(&rendered, train.images.size()[2] as u32);
    rows.extend(scenes.iter().map(cell_targets));
    crate::util::progress::note_out(format!(
        "{who}: {} training images + {} rendered scenes",
        train.ids.len(),
        scenes.len()
    ));
    Ok((
        Tensor::cat(&[&train.images, &rendered], 0),
        rows_tensor(&rows),
    ))
}

/// The side of image `id` as the dataset stores it: the size the renderer paints at.
pub fn stored_side(ds: &Dataset, id: &str) -> Result<u32> {
    let path = ds.image_path(id)?;
    let (side, _) = image::image_dimensions(&path)
        .with_context(|| format!("reading the size of {}", path.display()))?;
    Ok(side)
}

fn rows_tensor(rows: &[Vec<i64>]) -> Tensor {
    Tensor::from_slice(&rows.concat()).view([rows.len() as i64, -1])
}

/// Probe predictions for uint8 images, in batches, as rows.
pub fn probe_predict(probe: &Probe, images: &Tensor, device: Device) -> Vec<Vec<i64>> {
    let n = images.size()[0];
    let mut out = vec![];
    let mut s = 0;
    while s < n {
        let len = 128.min(n - s);
        out.extend(probe.predict_rows(&to_float(&images.narrow(0, s, len), device)));
        s += len;
    }
    out
}

impl Trainable for ProbeStage {
    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
    fn loss(&mut self, micro: u64) -> Result<Tensor> {
        let n = self.train.images.size()[0] as usize;
        let idx = Tensor::from_slice(&batch_indices(
            n,
            self.cfg.train.batch_size,
            self.cfg.seed,
            micro,
        ));
        let x = to_float(&self.train.images.index_select(0, &idx), self.device);
        let t = self
            .train_targets
            .index_select(0, &idx)
            .to_device(self.device);
        Ok(self.model.loss(&x, &t, true))
    }
    fn evaluate(&mut self, _step: u64, _tb: &mut EventWriter) -> Result<BTreeMap<String, f64>> {
        let pred = probe_predict(&self.model, &self.val.images, self.device);
        Ok(BTreeMap::from([(
            "attr_accuracy".into(),
            attribute_accuracy(&pred, &self.val_targets),
        )]))
    }
}

pub fn train_probe(
    cfg: ProbeStageConfig,
    yaml: String,
    run_dir: &Path,
    resume: bool,
    device: Device,
) -> Result<RunSummary> {
    let ds = Dataset::open(&cfg.data)?;
    ds.require_scene_facts("the attribute probe")?;
    tch::manual_seed(cfg.seed as i64);
    let vs = nn::VarStore::new(device);
    let model = Probe::new(&vs.root(), &cfg.model)?;
    let size = cfg.model.image_size as u32;
    let mut train = load_split(&ds, Split::Train, size, cfg.limit_train)?;
    let val = load_split(&ds, Split::Val, size, Some(cfg.eval_subset))?;
    let (images, train_targets) =
        attribute_training_set(&ds, &train, cfg.seed, cfg.extra_renders, "probe")?;
    train.images = images;
    let val_targets = scene_targets(&ds, &val.ids)?;
    let hash = if ds.tokenizer_path().exists() {
        crate::util::fsio::sha256_file(&ds.tokenizer_path())?
    } else {
        String::new()
    };
    let opts = RunOptions {
        run_dir: run_dir.to_path_buf(),
        resume,
        seed: cfg.seed,
        arch: serde_json::to_value(&model.cfg)?,
        tokenizer_hash: hash,
        best: cfg.best.clone(),
        config_yaml: yaml,
    };
    let mut stage = ProbeStage {
        vs,
        model,
        cfg: cfg.clone(),
        train,
        train_targets,
        val,
        val_targets,
        device,
    };
    let s = runner::run(&mut stage, &cfg.train, &opts)?;
    super::write_done(run_dir, &s)?;
    Ok(s)
}

pub struct LoadedProbe {
    pub cfg: ProbeStageConfig,
    pub vs: nn::VarStore,
    pub model: Probe,
}

pub fn load_probe(run_dir: &Path, device: Device) -> Result<LoadedProbe> {
    let cfg: ProbeStageConfig = super::run_config(run_dir, "probe")?;
    let vs = nn::VarStore::new(device);
    let model = Probe::new(&vs.root(), &cfg.model)?;
    crate::train::checkpoint::load_weights(&vs, run_dir, "best", None)?;
    Ok(LoadedProbe { cfg, vs, model })
}

/// Probe accuracy on a split of real images.
pub fn eval_probe(run_dir: &Path, split: Split, device: Device) -> Result<BTreeMap<String, f64>> {
    let lp = load_probe(run_dir, device)?;
    let ds = Dataset::open(&lp.cfg.data)?;
    let data = load_split(&ds, split, lp.cfg.model.image_size as u32, None)?;
    let truth = scene_targets(&ds, &data.ids)?;
    let pred = probe_predict(&lp.model, &data.images, device);
    let mut m = BTreeMap::from([
        (
            "attr_accuracy".to_string(),
            attribute_accuracy(&pred, &truth),
        ),
        ("images".to_string(), data.ids.len() as f64),
    ]);
    for (slot, acc) in crate::scenes::probe::slot_accuracies(&pred, &truth) {
        m.insert(format!("acc_{slot}"), acc);
    }
    crate::util::fsio::write_json(
        &run_dir
            .join(format!("eval_{}", split.name()))
            .join("metrics.json"),
        &m,
    )?;
    Ok(m)
}
