//! The unified generator stage (after the Multimodal Art Generator): `train unified`, `generate` (an image and its
//! caption from one seed), `eval unified`, and [`MultimodalGenerator`], the library API
//! that mirrors the Multimodal Art Generator's class of that name.

use super::evaluators::{
    embed_images, embed_tokens, load_clip, load_probe, probe_predict, tokenize_batch,
};
use super::t2i::resized;
use crate::data::layout::{Dataset, Split};
use crate::data::loader::{batch_rows, load_split, micro_batch, to_u8, SplitData};
use crate::data::tokenizer::TextTokenizer;
use crate::eval::embedding::{clip_score, frechet_distance, kid, mean_pairwise_distance};
use crate::eval::text::{distinct_n, repeated_trigram_rate, words};
use crate::models::captioner::decode::DecodeOptions;
use crate::models::unified::{gumbel, Unified, UnifiedConfig, UnifiedLoss};
use crate::scenes::parse::{fact_scores, parse};
use crate::scenes::probe::{facts_of_row, is_probe_fact};
use crate::train::runner::{self, BestMetric, RunOptions, RunSummary, TrainConfig, Trainable};
use crate::util::tensorboard::EventWriter;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

mod sampling;
pub use sampling::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnifiedEvalConfig {
    pub clip: PathBuf,
    pub probe: Option<PathBuf>,
    /// Prior samples drawn at each evaluation.
    pub samples: usize,
    pub decode: DecodeOptions,
    /// How a facts model reads a sample's scene off its latent.
    #[serde(default)]
    pub scene: SceneChoice,
}

/// How a facts model reads a prior sample's scene off its latent (`eval.scene`,
/// `--scene`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SceneChoice {
    /// Each fact head's most likely value: "empty" wins an uncertain cell, so scenes
    /// come out sparse.
    #[default]
    MostLikely,
    /// A draw from each fact head's distribution, with noise from the sample's seed.
    Sampled,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnifiedStageConfig {
    pub data: PathBuf,
    pub seed: u64,
    pub model: UnifiedConfig,
    pub train: TrainConfig,
    pub eval: UnifiedEvalConfig,
    pub best: BestMetric,
}

/// Builds the unified model for `cfg` on `device` with the dataset's tokenizer (and,
/// with `model.align`, the align run's place grid).
pub fn build(
    cfg: &UnifiedConfig,
    tok: &TextTokenizer,
    device: Device,
) -> Result<(nn::VarStore, Unified)> {
    let mut c = cfg.clone();
    c.captioner.vocab_size = tok.vocab_size() as i64;
    if let Some(a) = &mut c.align {
        let aligned = super::align::aligned_config(&a.run, tok)
            .with_context(|| format!("model.align.run {}", a.run.display()))?;
        if aligned.text.dim != c.captioner.dim {
            bail!(
                "model.align.run {} has text width {}, but model.captioner.dim is {}: the decoders are told its features as they are",
                a.run.display(),
                aligned.text.dim,
                c.captioner.dim
            );
        }
        a.places = aligned.places;
    }
    let vs = nn::VarStore::new(device);
    let m = Unified::new(&vs.root(), &c)?;
    Ok((vs, m))
}

struct UnifiedStage {
    vs: nn::VarStore,
    model: Unified,
    tok: TextTokenizer,
    cfg: UnifiedStageConfig,
    train: SplitData,
    device: Device,
    reference: Tensor,
    /// What the decoders are told for each training image: its scene's target rows
    /// (`model.facts`) or its caption's align features (`model.align`).
    targets: Option<Tensor>,
}

impl UnifiedStage {
    /// The loss terms of micro-batch `micro` drawn with `seed`.
    fn batch_loss(&self, seed: u64, micro: u64) -> Result<UnifiedLoss> {
        let (b, device) = (self.cfg.train.batch_size, self.device);
        let (x, t) = micro_batch(&self.train, b, seed, micro, device);
        let t = t.context("tokenized captions")?;
        let targets = self
            .targets
            .as_ref()
            .map(|rows| batch_rows(rows, b, seed, micro, device));
        self.model.loss(&x, &t, self.tok.pad, targets.as_ref())
    }
}

impl Trainable for UnifiedStage {
    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
    fn loss(&mut self, micro: u64) -> Result<Tensor> {
        let l = self.batch_loss(self.cfg.seed, micro)?;
        Ok(self.model.objective(&l, micro / self.cfg.train.accumulate))
    }
    fn evaluate(&mut self, step: u64, tb: &mut EventWriter) -> Result<BTreeMap<String, f64>> {
        let l = tch::no_grad(|| self.batch_loss(self.cfg.seed ^ 0xe7a1, 0))?;
        let mut m = BTreeMap::from([
            ("pixel".to_string(), l.pixel.double_value(&[])),
            ("caption_nll".to_string(), l.caption.double_value(&[])),
            ("kl".to_string(), l.kl.double_value(&[])),
        ]);
        if let Some(h) = &l.head {
            let name = if self.model.cfg.facts {
                "fact_loss"
            } else {
                "align_loss"
            };
            m.insert(name.into(), h.double_value(&[]));
        }
        let sampler = Sampler {
            model: &self.model,
            tok: &self.tok,
            decode: &self.cfg.eval.decode,
            scene: self.cfg.eval.scene,
            device: self.device,
        };
        m.extend(prior_scores(
            &sampler,
            &self.cfg.eval,
            &self.reference,
            self.cfg.eval.samples,
            self.device,
        )?);
        let samples = sampler.generate_batch(&(0..8).collect::<Vec<u64>>());
        let (rgb, h, w) = sample_grid(&samples);
        tb.image("samples/prior", step as i64, &rgb, h, w)?;
        let text: Vec<String> = samples
            .iter()
            .map(|s| format!("seed {}: {}", s.seed, s.caption))
            .collect();
        tb.text("samples/prior_captions", step as i64, &text.join("\n\n"))?;
        Ok(m)
    }
}

/// Scores of `n` prior samples (seeds 0..n): image–caption agreement, image quality
/// against real `reference` images, caption quality, degenerate outputs and diversity.
pub fn prior_scores(
    gen: &Sampler,
    cfg: &UnifiedEvalConfig,
    reference: &Tensor,
    n: usize,
    device: Device,
) -> Result<BTreeMap<String, f64>> {
    let clip = load_clip(&cfg.clip, device)?;
    let mut samples = vec![];
    for chunk in (0..n as u64).collect::<Vec<_>>().chunks(32) {
        samples.extend(gen.generate_batch(chunk));
    }
    let images = Tensor::stack(
        &samples
            .iter()
            .map(|s| s.image.shallow_clone())
            .collect::<Vec<_>>(),
        0,
    );
    let captions: Vec<String> = samples.iter().map(|s| s.caption.clone()).collect();
    let side = clip.cfg.model.image_size;
    let (img, feat) = embed_images(&clip.model, &resized(&images, side), device);
    let (_, real) = embed_images(&clip.model, &resized(reference, side), device);
    let tokens = tokenize_batch(&clip.tok, &captions, clip.cfg.model.text.max_len as usize)?;
    let txt = embed_tokens(&clip.model, &tokens, clip.tok.pad, device);
    let mut m = BTreeMap::new();
    m.insert("clip_score".into(), clip_score(&img, &txt));
    // Agreement without a probe: each sample's picture ranks its own paragraph first
    // among up to 99 other samples' (chance 1 in the number ranked).
    m.insert(
        "caption_r_precision".into(),
        crate::eval::embedding::r_precision(&img, &txt, 99, 0),
    );
    m.insert("fd_own".into(), frechet_distance(&feat, &real));
    m.insert("kid_own".into(), kid(&feat, &real));
    m.insert("diversity".into(), mean_pairwise_distance(&feat));
    let toks: Vec<Vec<String>> = captions.iter().map(|c| words(c)).collect();
    m.insert("distinct_1".into(), distinct_n(&toks, 1));
    m.insert("distinct_2".into(), distinct_n(&toks, 2));
    m.insert("repeated_trigram_rate".into(), repeated_trigram_rate(&toks));
    m.insert(
        "caption_words".into(),
        toks.iter().map(Vec::len).sum::<usize>() as f64 / n.max(1) as f64,
    );
    // Degenerate: a near-constant image, or a caption that is (almost) empty or loops.
    let x = images.to_kind(Kind::Float) / 255.0;
    let stds = x.flatten(1, -1).std_dim(1, true, false);
    let degenerate = (0..n)
        .filter(|&i| {
            let looping = repeated_trigram_rate(&toks[i..i + 1]) > 0.2;
            stds.double_value(&[i as i64]) < 0.02 || toks[i].len() < 5 || looping
        })
        .count();
    m.insert(
        "degenerate_fraction".into(),
        degenerate as f64 / n.max(1) as f64,
    );
    if let Some(p) = &cfg.probe {
        let probe = load_probe(p, device)?;
        let rows = probe_predict(
            &probe.model,
            &resized(&images, probe.cfg.model.image_size),
            device,
        );
        let (mut sum, mut count) = (0.0, 0);
        let (mut seen_objects, mut said_objects) = (0, 0);
        for (row, caption) in rows.iter().zip(&captions) {
            let seen = facts_of_row(row);
            let said: Vec<String> = parse(caption)
                .into_iter()
                .filter(|f| is_probe_fact(f))
                .collect();
            sum += fact_scores(&said, &seen).2;
            count += 1;
            seen_objects += objects_named(&seen);
            said_objects += objects_named(&said);
        }
        m.insert("attribute_agreement".into(), sum / count.max(1) as f64);
        // How full the sampled scenes are (the dataset's hold 1 to 4 objects, 2.5 on
        // average): a prior that collapses to near-empty scenes agrees easily.
        m.insert(
            "image_objects".into(),
            seen_objects as f64 / count.max(1) as f64,
        );
        m.insert(
            "caption_objects".into(),
            said_objects as f64 / count.max(1) as f64,
        );
    }
    Ok(m)
}

/// The samples' images in rows of eight: RGB bytes, height, width.
fn sample_grid(samples: &[Sample]) -> (Vec<u8>, u32, u32) {
    let images: Vec<Tensor> = samples.iter().map(|s| s.image.shallow_clone()).collect();
    crate::report::grid::grid_rgb(&Tensor::stack(&images, 0), 8)
}

/// How many kinds of object a list of facts (`kind.attribute=value`, sorted or not)
/// names.
fn objects_named(facts: &[String]) -> usize {
    let kinds: std::collections::BTreeSet<&str> = facts
        .iter()
        .filter_map(|f| f.split_once('.'))
        .map(|(k, _)| k)
        .collect();
    kinds.len()
}

pub fn train(
    cfg: UnifiedStageConfig,
    yaml: String,
    run_dir: &Path,
    resume: bool,
    device: Device,
) -> Result<RunSummary> {
    let scene_options: Vec<&str> = [
        (cfg.model.facts, "model.facts"),
        (cfg.eval.probe.is_some(), "eval.probe (the attribute probe)"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect();
    let (ds, tok) = super::open_training_data(&cfg.data, &scene_options)?;
    tch::manual_seed(cfg.seed as i64);
    let (vs, model) = build(&cfg.model, &tok, device)?;
    let size = cfg.model.captioner.image_size as u32;
    let train = load_split(&ds, Split::Train, size, None)?;
    train.check_token_room(cfg.model.captioner.max_len, "model.captioner.max_len")?;
    let reference = load_split(&ds, Split::Val, size, Some(cfg.eval.samples.max(2)))?.images;
    let targets = match (&cfg.model.facts, &cfg.model.align) {
        (true, _) => Some(
            super::evaluators::cell_target_tensor(&ds, &train.ids)
                .context("model.facts needs the embedded set's scene metadata")?,
        ),
        (false, Some(a)) => Some(align_features(&a.run, &tok, &train, device)?),
        (false, None) => None,
    };
    let opts = RunOptions {
        run_dir: run_dir.to_path_buf(),
        resume,
        seed: cfg.seed,
        arch: serde_json::to_value(&model.cfg)?,
        tokenizer_hash: tok.hash.clone(),
        best: cfg.best.clone(),
        config_yaml: yaml,
    };
    let params = runner::parameters(&vs);
    crate::util::progress::note(format!(
        "unified: {:.2}M parameters, latent {} dims, {} training images, {} steps of {}",
        params as f64 / 1e6,
        cfg.model.latent_dim,
        train.ids.len(),
        cfg.train.steps,
        cfg.train.batch_size
    ));
    let mut stage = UnifiedStage {
        vs,
        model,
        tok,
        cfg: cfg.clone(),
        train,
        device,
        reference,
        targets,
    };
    let s = runner::run(&mut stage, &cfg.train, &opts)?;
    super::write_done(run_dir, &s)?;
    Ok(s)
}

/// The frozen align run's features of every caption of `data`: `(N, 1 + P², D)`, the
/// sentence vector then the place vectors, computed once before training (on the CPU:
/// they are indexed batch by batch there).
fn align_features(
    run: &Path,
    tok: &TextTokenizer,
    data: &SplitData,
    device: Device,
) -> Result<Tensor> {
    let text = super::align::AlignedText::load(run, tok, device)?;
    let tokens = data.tokens.as_ref().context("tokenized captions")?;
    Ok(text.read_all(tokens, tok.pad, |parts| {
        Tensor::cat(&[parts.sentence.unsqueeze(1), parts.places], 1).to_device(Device::Cpu)
    }))
}

/// `eval unified`: the prior-sample scores on `n` seeds against the test split, and the
/// folder they were written to (`eval_prior`, or `eval_prior_<scene>` for a scene choice
/// other than the run's own).
pub fn evaluate(
    run_dir: &Path,
    n: usize,
    scene: Option<SceneChoice>,
    device: Device,
) -> Result<(BTreeMap<String, f64>, PathBuf)> {
    let mut gen = MultimodalGenerator::load(run_dir, device)?;
    let cfg: UnifiedStageConfig = super::run_config(run_dir, "unified")?;
    let out = match scene.filter(|&s| s != gen.scene) {
        Some(s) => {
            gen.set_scene(s)?;
            let name = serde_json::to_value(s)?;
            run_dir.join(format!("eval_prior_{}", name.as_str().unwrap_or("scene")))
        }
        None => run_dir.join("eval_prior"),
    };
    let ds = Dataset::open(&cfg.data)?;
    let reference = load_split(&ds, Split::Test, gen.model.image_size() as u32, None)?.images;
    let m = prior_scores(&gen.sampler(), &cfg.eval, &reference, n, device)?;
    crate::util::fsio::write_json(&out.join("metrics.json"), &m)?;
    let samples = gen.generate_batch(&(0..16).collect::<Vec<u64>>());
    let (rgb, h, w) = sample_grid(&samples);
    crate::util::fsio::atomic_write(
        &out.join("samples.png"),
        &crate::report::grid::png(&rgb, w, h)?,
    )?;
    let meta: Vec<serde_json::Value> = samples.iter().map(|s| gen.metadata(s)).collect();
    crate::util::fsio::write_json(&out.join("samples.json"), &meta)?;
    Ok((m, out))
}

/// `generate`: one PNG per seed and `metadata.json` listing every sample.
pub fn generate(
    run_dir: &Path,
    seeds: &[u64],
    out: &Path,
    scene: Option<SceneChoice>,
    device: Device,
) -> Result<Vec<Sample>> {
    let mut gen = MultimodalGenerator::load(run_dir, device)?;
    if let Some(s) = scene {
        gen.set_scene(s)?;
    }
    let mut samples = vec![];
    for chunk in seeds.chunks(32) {
        samples.extend(gen.generate_batch(chunk));
    }
    let s = gen.model.image_size() as u32;
    let mut meta = vec![];
    for sample in &samples {
        let rgb: Vec<u8> = Vec::try_from(sample.image.permute([1, 2, 0]).contiguous().view([-1]))
            .expect("uint8 image tensor");
        let file = format!("seed{}.png", sample.seed);
        crate::util::fsio::atomic_write(&out.join(&file), &crate::report::grid::png(&rgb, s, s)?)?;
        let mut m = gen.metadata(sample);
        m["image"] = serde_json::Value::String(file);
        meta.push(m);
    }
    crate::util::fsio::write_json(&out.join("metadata.json"), &meta)?;
    Ok(samples)
}

/// Parses `--seeds`: `0..30` (end exclusive), `0..=30`, or a comma list `1,5,9`.
pub fn parse_seeds(spec: &str) -> Result<Vec<u64>> {
    let bad =
        || anyhow::anyhow!("--seeds {spec:?}: expected a range like 0..30 or a list like 1,5,9");
    let seeds: Vec<u64> = if let Some((a, b)) = spec.split_once("..=") {
        (a.trim().parse().map_err(|_| bad())?..=b.trim().parse().map_err(|_| bad())?).collect()
    } else if let Some((a, b)) = spec.split_once("..") {
        (a.trim().parse().map_err(|_| bad())?..b.trim().parse().map_err(|_| bad())?).collect()
    } else {
        spec.split(',')
            .map(|s| s.trim().parse().map_err(|_| bad()))
            .collect::<Result<_>>()?
    };
    if seeds.is_empty() || seeds.len() > 100_000 {
        bail!(
            "--seeds {spec:?} gives {} seeds; give between 1 and 100000",
            seeds.len()
        );
    }
    Ok(seeds)
}
