//! Exported models read back for inference: only the TorchScript files, the manifest
//! and the tokenizer are used, never the training code's weights. The captioner decodes
//! through the same strategies as the trainer's ([`NextToken`]); the generator draws
//! through the same code ([`Painter`]).

use super::manifest::{Manifest, ModelKind};
use crate::data::loader::to_float;
use crate::data::tokenizer::TextTokenizer;
use crate::models::captioner::decode::{decode, DecodeOptions, NextToken};
use crate::models::captioner::CaptionerConfig;
use crate::models::t2i::diffusion::{guide, Schedule};
use crate::models::t2i::{Condition, T2IConfig, T2IKind};
use crate::stages::t2i::Painter;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::{CModule, Device, IValue, Kind, Tensor};

/// A loaded `.pt` module, named for errors.
struct Module {
    name: String,
    inner: CModule,
}

impl Module {
    fn load(dir: &Path, m: &Manifest, role: &str, device: Device) -> Result<Module> {
        let path = dir.join(&m.module(dir, role)?.file);
        let mut inner = CModule::load_on_device(&path, device)
            .with_context(|| format!("loading {}", path.display()))?;
        inner.set_eval();
        Ok(Module {
            name: path.display().to_string(),
            inner,
        })
    }

    /// Runs the module on tensors; it returns one tensor.
    fn call(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let args: Vec<IValue> = inputs
            .iter()
            .map(|t| IValue::Tensor(t.shallow_clone()))
            .collect();
        match tch::no_grad(|| self.inner.forward_is(&args))
            .with_context(|| format!("running {}", self.name))?
        {
            IValue::Tensor(t) => Ok(t),
            other => bail!("{}: expected one tensor, got {other:?}", self.name),
        }
    }
}

/// Opens `dir` as an exported model of `kind`.
fn open(dir: &Path, kind: ModelKind) -> Result<Manifest> {
    let m = Manifest::read(dir)?;
    m.expect_kind(dir, kind)?;
    Ok(m)
}

/// Checks a float image batch against the model's input shape.
fn check_images(dir: &Path, m: &Manifest, images: &Tensor) -> Result<()> {
    let s = images.size();
    if s.len() != 4 || s[1] != 3 || s[2] != m.image_size || s[3] != m.image_size {
        bail!(
            "{}: expects images (N, 3, {n}, {n}), got {s:?}",
            dir.display(),
            n = m.image_size
        );
    }
    Ok(())
}

/// Runs `f` over `images` (uint8) in batches of `batch`, moved to `device` as floats.
fn batched<T>(
    images: &Tensor,
    batch: i64,
    device: Device,
    mut f: impl FnMut(&Tensor) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    let n = images.size()[0];
    let mut out = Vec::with_capacity(n as usize);
    let mut start = 0;
    while start < n {
        let len = batch.min(n - start);
        out.extend(f(&to_float(&images.narrow(0, start, len), device))?);
        start += len;
    }
    Ok(out)
}

fn config<T: serde::de::DeserializeOwned>(dir: &Path, m: &Manifest, key: &str) -> Result<T> {
    let tree = serde_yaml::to_value(&m.config[key])
        .with_context(|| format!("{}: manifest config.{key} is malformed", dir.display()))?;
    crate::config::retired::from_value(tree, key)
        .with_context(|| format!("{}: manifest config.{key} is malformed", dir.display()))
}

/// An exported captioner: `encoder.pt` (image → cross-attention keys and values) and
/// `step.pt` (one token → next-token logits; the KV cache is updated in place).
pub struct ExportedCaptioner {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub tok: TextTokenizer,
    pub cfg: CaptionerConfig,
    /// The run's evaluation decoding settings (the default of `caption`).
    pub decode: DecodeOptions,
    encoder: Module,
    step: Module,
    device: Device,
}

/// The exported captioner between steps: cross keys/values per image row, and the
/// fixed-length self-attention cache, both `(2, layers, B, …)`.
pub struct ExportedState {
    cross: Tensor,
    cache: Tensor,
}

impl ExportedCaptioner {
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let m = open(dir, ModelKind::Captioner)?;
        let cfg: CaptionerConfig = config(dir, &m, "model")?;
        // The decoder's cache is allocated from these; a damaged manifest must not
        // ask for terabytes.
        if !(1..=65_536).contains(&cfg.max_len)
            || cfg.heads < 1
            || cfg.layers < 1
            || cfg.dim < cfg.heads
            || cfg.dim % cfg.heads != 0
        {
            bail!(
                "{}: manifest config.model is out of range (max_len {}, layers {}, dim {}, heads {})",
                dir.display(),
                cfg.max_len,
                cfg.layers,
                cfg.dim,
                cfg.heads
            );
        }
        let decode =
            serde_json::from_value(m.config["eval"]["decode"].clone()).with_context(|| {
                format!(
                    "{}: manifest config.eval.decode is malformed",
                    dir.display()
                )
            })?;
        Ok(ExportedCaptioner {
            tok: m.load_tokenizer(dir)?,
            encoder: Module::load(dir, &m, "encoder", device)?,
            step: Module::load(dir, &m, "step", device)?,
            dir: dir.to_path_buf(),
            manifest: m,
            cfg,
            decode,
            device,
        })
    }

    /// Token ids per image of a float batch in [-1, 1] (start token first).
    pub fn generate(&self, images: &Tensor, opts: &DecodeOptions) -> Result<Vec<Vec<i64>>> {
        check_images(&self.dir, &self.manifest, images)?;
        let b = images.size()[0];
        let c = &self.cfg;
        let state = ExportedState {
            cross: self.encoder.call(&[images])?,
            cache: Tensor::zeros(
                [2, c.layers, b, c.heads, c.max_len, c.dim / c.heads],
                (Kind::Float, self.device),
            ),
        };
        let t = &self.tok;
        decode(self, state, b, self.device, opts, t.bos, t.eos, t.pad)
    }

    /// Paragraphs for uint8 images `(N, 3, S, S)`, decoded `batch` at a time.
    pub fn caption(
        &self,
        images: &Tensor,
        opts: &DecodeOptions,
        batch: i64,
    ) -> Result<Vec<String>> {
        batched(images, batch, self.device, |x| {
            Ok(self
                .generate(x, opts)?
                .iter()
                .map(|ids| self.tok.decode(ids))
                .collect())
        })
    }
}

impl NextToken for ExportedCaptioner {
    type State = ExportedState;

    fn next_logits(
        &self,
        state: &mut ExportedState,
        last: &Tensor,
        t: i64,
        _hist: &[Vec<i64>],
    ) -> Result<Tensor> {
        let pos = Tensor::from_slice(&[t]).to_device(self.device);
        // step.pt writes this step's keys and values into the cache in place.
        self.step.call(&[last, &pos, &state.cache, &state.cross])
    }

    fn select_rows(&self, state: &ExportedState, index: &Tensor) -> Result<ExportedState> {
        Ok(ExportedState {
            cross: state.cross.index_select(2, index),
            cache: state.cache.index_select(2, index),
        })
    }

    fn max_len(&self) -> usize {
        self.cfg.max_len as usize
    }
}

/// An exported text → image model: `text_encoder.pt`, then `generator.pt` (vae, gan) or
/// `denoiser.pt` + `null_condition.pt` driven by the sampler here (diffusion: the
/// schedule lives outside the network, as in the trainer).
pub struct ExportedPainter {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub tok: TextTokenizer,
    pub cfg: T2IConfig,
    /// Diffusion: schedule and sampling settings (override them before drawing).
    pub schedule: Option<Schedule>,
    text: Module,
    generator: Option<Module>,
    denoiser: Option<(Module, Module)>,
}

/// The condition from a text encoder's `states` `(B, 1 + L, D)` (pooled vector first)
/// and its mask `(B, L)`.
fn condition_from(states: &Tensor, mask: Tensor) -> Condition {
    let l = states.size()[1] - 1;
    Condition {
        global: states.select(1, 0),
        tokens: states.narrow(1, 1, l),
        mask,
    }
}

impl ExportedPainter {
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let m = open(dir, ModelKind::T2i)?;
        let cfg: T2IConfig = config(dir, &m, "model")?;
        let diffusion = cfg.kind == T2IKind::Diffusion;
        Ok(ExportedPainter {
            tok: m.load_tokenizer(dir)?,
            text: Module::load(dir, &m, "text_encoder", device)?,
            generator: (!diffusion)
                .then(|| Module::load(dir, &m, "generator", device))
                .transpose()?,
            denoiser: if diffusion {
                Some((
                    Module::load(dir, &m, "denoiser", device)?,
                    Module::load(dir, &m, "null_condition", device)?,
                ))
            } else {
                None
            },
            schedule: diffusion.then(|| Schedule::new(&cfg.diffusion.clone().unwrap_or_default())),
            dir: dir.to_path_buf(),
            manifest: m,
            cfg,
        })
    }

    /// Caption token rows `(B, max_len)` as the exported text encoder reads them.
    pub fn tokens(&self, texts: &[String]) -> Result<Tensor> {
        crate::stages::t2i::tokens_for(&self.tok, texts, self.cfg.text.max_len as usize)
    }

    /// The diffusion model's guided output at step `t`, as the trainer computes it.
    fn guided(&self, x: &Tensor, t: i64, cond: &Condition, scale: f64) -> Result<Tensor> {
        let (denoiser, null) = self.denoiser.as_ref().expect("called for diffusion only");
        let tt = Tensor::full([x.size()[0]], t, (Kind::Int64, x.device()));
        let run = |c: &Condition| denoiser.call(&[x, &tt, &c.global, &c.tokens, &c.mask]);
        let out = run(cond)?;
        if scale == 1.0 {
            return Ok(out);
        }
        let states = null.call(&[&cond.global])?;
        let mask = states
            .narrow(1, 1, 1)
            .select(2, 0)
            .ones_like()
            .to_kind(Kind::Bool);
        let un = run(&condition_from(&states, mask))?;
        Ok(guide(&out, &un, scale))
    }
}

impl Painter for ExportedPainter {
    fn condition_of(&self, tokens: &Tensor, _pad: i64) -> Result<Condition> {
        let l = self.cfg.text.max_len;
        if tokens.size().len() != 2 || tokens.size()[1] != l {
            bail!(
                "{}: token rows must be (B, {l}), got {:?}",
                self.dir.display(),
                tokens.size()
            );
        }
        let states = self.text.call(&[tokens])?;
        let mask = if self.cfg.paints_from_places() {
            // The condition's tokens are places (facts or aligned), all present, then
            // with `align.words` the caption's words.
            let words = self.cfg.align.as_ref().is_some_and(|a| a.words);
            let cells = states.size()[1] - 1 - if words { l } else { 0 };
            let places = Tensor::ones([tokens.size()[0], cells], (Kind::Bool, tokens.device()));
            if words {
                Tensor::cat(&[places, tokens.ne(self.tok.pad)], 1)
            } else {
                places
            }
        } else {
            tokens.ne(self.tok.pad)
        };
        Ok(condition_from(&states, mask))
    }

    fn noise_of(&self, n: i64, device: Device) -> Tensor {
        crate::models::t2i::noise(&self.cfg, n, device)
    }

    fn paint(&self, cond: &Condition, z: &Tensor) -> Result<Tensor> {
        if let Some(g) = &self.generator {
            return g.call(&[z, &cond.global, &cond.tokens, &cond.mask]);
        }
        let schedule = self.schedule.as_ref().expect("diffusion has a schedule");
        let scale = schedule.cfg.guidance;
        // The sampler's callback cannot fail, so the first error is kept and returned.
        let mut failed = None;
        let x = schedule.sample(z.shallow_clone(), |x, t| {
            match self.guided(x, t, cond, scale) {
                Ok(out) => out,
                Err(e) => {
                    failed.get_or_insert(e);
                    x.zeros_like()
                }
            }
        });
        match failed {
            Some(e) => Err(e),
            None => Ok(x),
        }
    }
}

/// An exported contrastive model: `image_encoder.pt` (features, embeddings) and
/// `text_encoder.pt` (embeddings).
pub struct ExportedClip {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub tok: TextTokenizer,
    image: Module,
    text: Module,
    max_len: usize,
    device: Device,
}

impl ExportedClip {
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let m = open(dir, ModelKind::Clip)?;
        let max_len = m.tokenizer.as_ref().map_or(0, |t| t.max_len as usize);
        Ok(ExportedClip {
            tok: m.load_tokenizer(dir)?,
            image: Module::load(dir, &m, "image_encoder", device)?,
            text: Module::load(dir, &m, "text_encoder", device)?,
            dir: dir.to_path_buf(),
            manifest: m,
            max_len,
            device,
        })
    }

    /// Unit-norm embeddings `(N, E)` of uint8 images `(N, 3, S, S)`.
    pub fn embed_images(&self, images: &Tensor) -> Result<Tensor> {
        let rows = batched(images, 128, self.device, |x| {
            check_images(&self.dir, &self.manifest, x)?;
            Ok(vec![self.image.call(&[x])?])
        })?;
        Ok(Tensor::cat(&rows, 0))
    }

    /// Unit-norm embeddings `(N, E)` of texts.
    pub fn embed_texts(&self, texts: &[String]) -> Result<Tensor> {
        let tokens = crate::stages::t2i::tokens_for(&self.tok, texts, self.max_len)?;
        let mut rows = vec![];
        for chunk in tokens.split(128, 0) {
            rows.push(self.text.call(&[&chunk.to_device(self.device)])?);
        }
        Ok(Tensor::cat(&rows, 0))
    }
}
