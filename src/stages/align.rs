//! `train align`: the general path's conditioning model ([`crate::models::align`]),
//! trained on the training split's images and paragraphs alone. The captioner reads its
//! frozen image encoder (`model.encoder_from`) and the generators its frozen text side
//! (`model.align`); it grades nothing.

use crate::data::layout::Split;
use crate::data::loader::{image_groups, load_split, micro_batch, to_float, SplitData};
use crate::data::tokenizer::TextTokenizer;
use crate::eval::embedding::retrieval_grouped;
use crate::models::align::{
    bag_loss, bag_targets, AlignConfig, AlignTextHeads, Aligner, TextParts,
};
use crate::models::clip::l2_normalise;
use crate::models::text_encoder::TextEncoder;
use crate::train::checkpoint;
use crate::train::runner::{
    self, BestMetric, Group, RunOptions, RunSummary, TrainConfig, Trainable,
};
use crate::util::tensorboard::EventWriter;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Tensor};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlignStageConfig {
    pub data: PathBuf,
    pub seed: u64,
    pub model: AlignConfig,
    pub train: TrainConfig,
    /// Validation pairs scored at each evaluation.
    pub eval_subset: usize,
    pub best: BestMetric,
    #[serde(default)]
    pub limit_train: Option<usize>,
    /// Random shift in pixels ([`crate::data::augment`]); 0 is off.
    #[serde(default)]
    pub augment_shift: i64,
    /// A first phase in which the image side alone learns the words-as-labels (needs
    /// `model.bag_weight` > 0): a step without the text encoder costs a fraction of a
    /// full one, so the CNN sees many more images before the contrastive terms start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain: Option<BagPretrainConfig>,
}

/// `pretrain:` of an align run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BagPretrainConfig {
    pub train: TrainConfig,
}

/// Mean average precision of the words-as-labels head's token labels over a split
/// (macro, over the tokens that between 1 % and 99 % of its captions hold: a token in
/// every caption, "the", ranks nothing): how well the head reads what a picture's
/// paragraph will name.
fn bag_map(
    model: &Aligner,
    images: &Tensor,
    tokens: &Tensor,
    tok: &TextTokenizer,
    device: Device,
) -> Result<f64> {
    let m = &model.cfg;
    let n = images.size()[0];
    let (mut scores, mut truth) = (vec![], vec![]);
    let mut s = 0;
    while s < n {
        let len = 64.min(n - s);
        let logits = tch::no_grad(|| {
            let parts = model
                .image
                .forward(&to_float(&images.narrow(0, s, len), device), false);
            model.image.heads.bag_logits(&parts)
        })
        .context("bag_map needs the words-as-labels head")?;
        scores.push(
            logits
                .narrow(1, 0, m.text.vocab_size)
                .to_device(Device::Cpu),
        );
        let t = bag_targets(
            &tokens.narrow(0, s, len),
            &[tok.pad, tok.bos, tok.eos],
            &tok.sentence_end_ids(),
            m.text.vocab_size,
            m.pair_buckets,
        )?;
        truth.push(t.narrow(1, 0, m.text.vocab_size));
        s += len;
    }
    Ok(mean_average_precision(
        &Tensor::cat(&scores, 0),
        &Tensor::cat(&truth, 0),
    ))
}

/// Macro mean average precision of `scores` `(N, L)` against 0/1 `truth` `(N, L)`, over
/// the labels whose prevalence lies strictly between 1 % and 99 %; 0 when none does.
fn mean_average_precision(scores: &Tensor, truth: &Tensor) -> f64 {
    let n = scores.size()[0] as f64;
    let prevalence = truth.mean_dim([0i64].as_slice(), false, tch::Kind::Float);
    let keep = prevalence
        .gt(0.01)
        .logical_and(&prevalence.lt(0.99))
        .nonzero()
        .flatten(0, -1);
    if keep.size()[0] == 0 || n == 0.0 {
        return 0.0;
    }
    let (scores, truth) = (scores.index_select(1, &keep), truth.index_select(1, &keep));
    let order = scores.argsort(0, true);
    let hits = truth.gather(0, &order, false); // (N, L) in rank order per label
    let ranks =
        Tensor::arange_start(1, scores.size()[0] + 1, (tch::Kind::Float, Device::Cpu)).unsqueeze(1);
    let precision = hits.cumsum(0, tch::Kind::Float) / ranks;
    let ap = (precision * &hits).sum_dim_intlist(0, false, tch::Kind::Float)
        / hits.sum_dim_intlist(0, false, tch::Kind::Float);
    ap.mean(tch::Kind::Float).double_value(&[])
}

/// The first phase: the image side on the words-as-labels alone.
struct BagPretrain<'a> {
    stage: &'a AlignStage,
}

impl Trainable for BagPretrain<'_> {
    fn var_store(&self) -> &nn::VarStore {
        &self.stage.vs
    }

    fn groups(&self) -> Vec<Group> {
        vec![Group {
            name: "image".into(),
            prefixes: vec!["image.".into()],
            lr_scale: 1.0,
        }]
    }

    fn loss(&mut self, micro: u64) -> Result<Tensor> {
        let s = self.stage;
        let batch = s.cfg.pretrain.as_ref().map_or(1, |p| p.train.batch_size);
        let (x, t) = micro_batch(&s.train, batch, s.cfg.seed, micro, s.device);
        let t = t.context("tokenized captions")?;
        let x = crate::data::augment::augment(&x, s.cfg.augment_shift, None);
        let targets = s.bag_targets(&t)?;
        let parts = s.model.image.forward(&x, true);
        let logits = s
            .model
            .image
            .heads
            .bag_logits(&parts)
            .context("pretrain needs model.bag_weight > 0 (the words-as-labels head)")?;
        Ok(bag_loss(&logits, &targets))
    }

    fn evaluate(&mut self, _step: u64, _tb: &mut EventWriter) -> Result<BTreeMap<String, f64>> {
        let s = self.stage;
        let tokens = s.val.tokens.as_ref().context("tokenized captions")?;
        let p = bag_map(&s.model, &s.val.images, tokens, &s.tok, s.device)?;
        Ok(BTreeMap::from([("bag_map".into(), p)]))
    }
}

pub fn build_aligner(
    cfg: &AlignConfig,
    tok: &TextTokenizer,
    device: Device,
) -> Result<(nn::VarStore, Aligner)> {
    let mut c = cfg.clone();
    c.text.set_tokenizer(tok)?;
    let vs = nn::VarStore::new(device);
    let m = Aligner::new(&vs.root(), &c)?;
    Ok((vs, m))
}

struct AlignStage {
    vs: nn::VarStore,
    model: Aligner,
    tok: TextTokenizer,
    cfg: AlignStageConfig,
    train: SplitData,
    val: SplitData,
    val_groups: Vec<usize>,
    device: Device,
    last_parts: Vec<(&'static str, Tensor)>,
}

impl AlignStage {
    /// The words-as-labels targets of caption token rows, on the stage's device.
    fn bag_targets(&self, tokens: &Tensor) -> Result<Tensor> {
        let (m, tok) = (&self.model.cfg, &self.tok);
        Ok(bag_targets(
            tokens,
            &[tok.pad, tok.bos, tok.eos],
            &tok.sentence_end_ids(),
            m.text.vocab_size,
            m.pair_buckets,
        )?
        .to_device(self.device))
    }
}

impl Trainable for AlignStage {
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
        let mut t = t.context("tokenized captions")?;
        // One process cuts the padding (masked anyway; the word term costs in proportion
        // to the length). Data-parallel ranks keep the full rows: their word vectors are
        // gathered into one batch, which needs one length.
        if crate::distributed::world() == 1 {
            t = crate::data::loader::trim_padding(&t, self.tok.pad);
        }
        let x = crate::data::augment::augment(&x, self.cfg.augment_shift, None);
        let bag = if self.model.cfg.bag_weight > 0.0 {
            Some(self.bag_targets(&t)?)
        } else {
            None
        };
        let l = self.model.losses(&x, &t, bag.as_ref(), self.tok.pad, true);
        self.last_parts = vec![
            ("sentence", l.sentence.detach()),
            ("words", l.words.detach()),
            ("places", l.places.detach()),
            ("within", l.within.detach()),
            ("bag", l.bag.detach()),
        ];
        Ok(l.total(&self.model.cfg))
    }

    fn loss_parts(&self) -> BTreeMap<String, f64> {
        self.last_parts
            .iter()
            .map(|(k, v)| (k.to_string(), v.double_value(&[])))
            .collect()
    }

    fn evaluate(&mut self, _step: u64, _tb: &mut EventWriter) -> Result<BTreeMap<String, f64>> {
        let tokens = self
            .val
            .tokens
            .as_ref()
            .context("tokenized captions: checked when the stage was built")?;
        let (img, txt) = embed_split(
            &self.model,
            &self.val.images,
            tokens,
            self.tok.pad,
            self.device,
        );
        let mut m = retrieval_grouped(&img.0, &txt.0, &self.val_groups);
        m.retain(|k, _| k.ends_with("r1") || k.ends_with("r10"));
        m.insert("mean_r1".into(), (m["i2t_r1"] + m["t2i_r1"]) / 2.0);
        // Each place read off a caption against the same place of every image.
        let places = img.1.size()[1];
        let mut place_r1 = 0.0;
        for p in 0..places {
            let r = retrieval_grouped(&img.1.select(1, p), &txt.1.select(1, p), &self.val_groups);
            place_r1 += r["t2i_r1"] / places as f64;
        }
        m.insert("place_r1".into(), place_r1);
        if self.model.cfg.bag_weight > 0.0 {
            let p = bag_map(
                &self.model,
                &self.val.images,
                tokens,
                &self.tok,
                self.device,
            )?;
            m.insert("bag_map".into(), p);
        }
        Ok(m)
    }
}

/// Unit sentence and place vectors of a split: images `((N, D), (N, P², D))` and
/// captions likewise, in batches without gradients.
fn embed_split(
    model: &Aligner,
    images: &Tensor,
    tokens: &Tensor,
    pad: i64,
    device: Device,
) -> ((Tensor, Tensor), (Tensor, Tensor)) {
    tch::no_grad(|| {
        let n = images.size()[0];
        let (mut ig, mut ip, mut tg, mut tp) = (vec![], vec![], vec![], vec![]);
        let mut s = 0;
        while s < n {
            let len = 64.min(n - s);
            let i = model
                .image
                .forward(&to_float(&images.narrow(0, s, len), device), false);
            let t = model.read_text(&tokens.narrow(0, s, len).to_device(device), pad, false);
            ig.push(l2_normalise(&i.global));
            ip.push(l2_normalise(&i.places));
            tg.push(l2_normalise(&t.sentence));
            tp.push(l2_normalise(&t.places));
            s += len;
        }
        (
            (Tensor::cat(&ig, 0), Tensor::cat(&ip, 0)),
            (Tensor::cat(&tg, 0), Tensor::cat(&tp, 0)),
        )
    })
}

pub fn train(
    mut cfg: AlignStageConfig,
    yaml: String,
    run_dir: &Path,
    resume: bool,
    device: Device,
) -> Result<RunSummary> {
    let (ds, tok) = crate::stages::open_training_data(&cfg.data, &[])?;
    if cfg.augment_shift < 0 {
        bail!("augment_shift {} must be 0 or more", cfg.augment_shift);
    }
    if cfg.model.place_hardness < 0.0 {
        bail!(
            "model.place_hardness {} must be 0 (plain negatives) or more",
            cfg.model.place_hardness
        );
    }
    if cfg.pretrain.is_some() && cfg.model.bag_weight <= 0.0 {
        bail!("pretrain trains the words-as-labels head: give model.bag_weight > 0");
    }
    tch::manual_seed(cfg.seed as i64);
    let (vs, model) = build_aligner(&cfg.model, &tok, device)?;
    let size = cfg.model.image_size as u32;
    let train = load_split(&ds, Split::Train, size, cfg.limit_train)?;
    cfg.train.resolve_epochs(train.ids.len(), "train")?;
    if let Some(pre) = cfg.pretrain.as_mut() {
        pre.train
            .resolve_epochs(train.ids.len(), "pretrain.train")?;
    }
    let val = load_split(&ds, Split::Val, size, Some(cfg.eval_subset))?;
    let val_groups = image_groups(&val.ids, &ds.image_of_items()?);
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
    let mut stage = AlignStage {
        vs,
        model,
        tok,
        cfg: cfg.clone(),
        train,
        val,
        val_groups,
        device,
        last_parts: vec![],
    };
    if let Some(pre) = &cfg.pretrain {
        let phase = crate::stages::FirstPhase {
            folder: "image",
            name: "align image side",
            metric: "bag_map",
            trains: &["image."],
            train: &pre.train,
            config_yaml: serde_yaml::to_string(pre)?,
        };
        let st = &stage;
        crate::stages::run_first_phase(&st.vs, &opts, resume, phase, || {
            Ok(BagPretrain { stage: st })
        })?;
    }
    let s = runner::run(&mut stage, &cfg.train, &opts)?;
    crate::stages::write_done(run_dir, &s)?;
    Ok(s)
}

/// A finished align run's model config, refused when the run is unfinished.
pub fn finished_config(run_dir: &Path) -> Result<AlignConfig> {
    let cfg: AlignStageConfig = crate::stages::run_config(run_dir, "align")?;
    if !run_dir.join("done.json").exists() {
        bail!(
            "{} has not finished training (no done.json): run `train align` to the end first",
            run_dir.display()
        );
    }
    Ok(cfg.model)
}

/// [`finished_config`] with its tokenizer filled in from `tok`, refused when the run was
/// trained with another tokenizer (its text side would read other tokens).
pub fn aligned_config(run_dir: &Path, tok: &TextTokenizer) -> Result<AlignConfig> {
    let mut m = finished_config(run_dir)?;
    let state = checkpoint::load_state(run_dir, "best")?;
    if state.tokenizer_hash != tok.hash {
        bail!(
            "{} was trained with another tokenizer than this dataset's tokenizer.json",
            run_dir.display()
        );
    }
    m.text.set_tokenizer(tok)?;
    Ok(m)
}

/// A finished align run's whole model (best checkpoint, its EMA shadow when kept) in a
/// store of its own, for what uses it frozen: a generator's
/// [`crate::models::t2i::critic::MatchCritic`].
pub fn load_aligner(
    run_dir: &Path,
    tok: &TextTokenizer,
    device: Device,
) -> Result<(nn::VarStore, Aligner)> {
    let cfg = aligned_config(run_dir, tok)?;
    let vs = nn::VarStore::new(device);
    let m = Aligner::new(&vs.root(), &cfg)?;
    checkpoint::load_weights(&vs, run_dir, "best", Some(&tok.hash))
        .with_context(|| format!("loading the align model {}", run_dir.display()))?;
    Ok((vs, m))
}

/// Copies part of a finished align run's weights (best checkpoint, its EMA shadow when
/// kept) into `vs`: the run's variables under `from` land on `vs`'s variables under `to`
/// (`"image.cnn."` → `"cnn."` for a captioner, `"text."` → `"text."` for a generator).
pub fn load_aligned_part(vs: &nn::VarStore, run_dir: &Path, from: &str, to: &str) -> Result<()> {
    let (_, tensors) = checkpoint::load(run_dir, "best")?;
    let shadow = if tensors.keys().any(|k| k.starts_with("ema.")) {
        "ema."
    } else {
        "model."
    };
    // The saved names of the part, renamed to where they land.
    let renamed: std::collections::HashMap<String, Tensor> = tensors
        .iter()
        .filter_map(|(k, t)| {
            let rest = k.strip_prefix(shadow)?.strip_prefix(from)?;
            Some((format!("{to}{rest}"), t.shallow_clone()))
        })
        .collect();
    checkpoint::load_part(vs, &renamed, "", &[to])
        .with_context(|| format!("loading {from}* of {}", run_dir.display()))?;
    Ok(())
}

/// A finished align run's frozen text side alone (its encoder and heads), read by what
/// conditions on it without holding it in its own weights: the unified generator's
/// caption features and the invertible bridge's sentence embedder.
pub struct AlignedText {
    pub cfg: AlignConfig,
    vs: nn::VarStore,
    encoder: TextEncoder,
    heads: AlignTextHeads,
}

impl AlignedText {
    /// The text side of `run`, refused when the run is unfinished or was trained with
    /// another tokenizer than `tok`.
    pub fn load(run: &Path, tok: &TextTokenizer, device: Device) -> Result<Self> {
        let cfg = aligned_config(run, tok)?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let encoder = TextEncoder::new(&root / "text", &cfg.text);
        let heads = AlignTextHeads::new(&(&root / "text"), cfg.text.dim, cfg.places);
        load_aligned_part(&vs, run, "text.", "text.")?;
        Ok(AlignedText {
            cfg,
            vs,
            encoder,
            heads,
        })
    }

    /// `keep` of the text parts of every row of `tokens`, 64 rows at a time (each cut to
    /// its longest caption) without gradients, concatenated along the first axis. `keep`
    /// must not return anything as long as the rows (the word vectors are cut).
    pub fn read_all(
        &self,
        tokens: &Tensor,
        pad: i64,
        keep: impl Fn(TextParts) -> Tensor,
    ) -> Tensor {
        let device = self.vs.device();
        let n = tokens.size()[0];
        let out: Vec<Tensor> = (0..n)
            .step_by(64)
            .map(|start| {
                let rows = tokens.narrow(0, start, 64.min(n - start));
                let t = crate::data::loader::trim_padding(&rows, pad).to_device(device);
                tch::no_grad(|| keep(self.heads.read(&self.encoder.forward(&t, pad, false))))
            })
            .collect();
        Tensor::cat(&out, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_precision_ranks_the_labels_and_skips_the_ubiquitous_ones() {
        // Label 0 is in every row (skipped); label 1 is ranked perfectly; label 2 has its
        // one positive ranked second of four (AP 1/2).
        let truth =
            Tensor::from_slice(&[1f32, 1., 0., 1., 1., 1., 1., 0., 0., 1., 0., 0.]).view([4, 3]);
        let scores =
            Tensor::from_slice(&[0f32, 9., 1., 0., 8., 5., 0., 1., 0., 0., 2., 6.]).view([4, 3]);
        let map = mean_average_precision(&scores, &truth);
        assert!((map - 0.75).abs() < 1e-6, "{map}");
    }
}
