//! `train probe` / `eval probe`: the attribute probe of the embedded scene set, trained
//! on the training split and scenes rendered in memory, never on a validation or test
//! image; and the scene targets it and the scene-supervised models read.

use super::*;

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
    crate::stages::write_done(run_dir, &s)?;
    Ok(s)
}

pub struct LoadedProbe {
    pub cfg: ProbeStageConfig,
    pub vs: nn::VarStore,
    pub model: Probe,
}

pub fn load_probe(run_dir: &Path, device: Device) -> Result<LoadedProbe> {
    let cfg: ProbeStageConfig = crate::stages::run_config(run_dir, "probe")?;
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
