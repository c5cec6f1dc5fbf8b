//! `train clip` / `eval clip`: the contrastive image–text embedding, trained on the
//! training split only; its retrieval, R-precision, plots and projector files.

use super::*;

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
    /// Random shift in pixels ([`crate::data::augment`]); 0 is off.
    #[serde(default, skip_serializing_if = "crate::config::is_default")]
    pub augment_shift: i64,
    /// Random crops of at least this share of the side (0.1–1), resized back; unset is
    /// off ([`crate::data::augment`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment_crop: Option<f64>,
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
            let rows = trim_padding(&tokens.narrow(0, s, len), pad);
            out.push(clip.embed_texts(&rows.to_device(device), pad, false));
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
        // Cut to the batch's longest caption: each rank gathers pooled embeddings, not
        // token rows, so the ranks' lengths need not agree.
        let t = trim_padding(&t.context("tokenized captions")?, self.tok.pad);
        let x = crate::data::augment::augment(&x, self.cfg.augment_shift, self.cfg.augment_crop);
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
    mut cfg: ClipStageConfig,
    yaml: String,
    run_dir: &Path,
    resume: bool,
    device: Device,
) -> Result<RunSummary> {
    let (ds, tok) = crate::stages::open_training_data(&cfg.data, &[])?;
    tch::manual_seed(cfg.seed as i64);
    let (vs, model) = build_clip(&cfg.model, &tok, device)?;
    let size = cfg.model.image_size as u32;
    let train = load_split(&ds, Split::Train, size, cfg.limit_train)?;
    cfg.train.resolve_epochs(train.ids.len(), "train")?;
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
    crate::stages::write_done(run_dir, &s)?;
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
    let cfg: ClipStageConfig = crate::stages::run_config(run_dir, "clip")?;
    let (_, tok) = crate::stages::open_training_data(&cfg.data, &[])?;
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
