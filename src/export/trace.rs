//! `ekphrasis export`: traces the pieces each trained model needs for inference into
//! TorchScript files (`tch::CModule::create_by_tracing`) beside a manifest and a copy of
//! the tokenizer. Everything is written into `<out>.partial` and renamed into place at
//! the end, so a failed export never leaves a half-written model folder.

use super::manifest::{
    Manifest, ModelKind, ModuleInfo, TokenizerInfo, FORMAT_VERSION, NORMALISATION, TOKENIZER_FILE,
};
use crate::data::tokenizer::TextTokenizer;
use crate::stages::{captioner, evaluators, t2i};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{CModule, Device, Kind, Tensor};

/// Rows of the example inputs a trace runs on. Nothing in the traced code bakes the
/// batch size in (reshapes keep it free), so any batch size works afterwards.
const TRACE_BATCH: i64 = 2;

/// What one kind's exporter hands back: modules, tokenizer, and the manifest's facts.
struct Traced {
    modules: BTreeMap<String, ModuleInfo>,
    tokenizer: Option<(TextTokenizer, i64)>,
    image_size: i64,
    config: serde_json::Value,
}

/// The kind of a run folder: from `runs/<kind>/<name>`, else `given`.
pub fn run_kind(run: &Path, given: Option<ModelKind>) -> Result<ModelKind> {
    if let Some(k) = given {
        return Ok(k);
    }
    let parent = run
        .canonicalize()
        .with_context(|| format!("{}: no such run folder", run.display()))?
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(match parent.as_str() {
        "captioner" => ModelKind::Captioner,
        "t2i" => ModelKind::T2i,
        "clip" => ModelKind::Clip,
        "probe" => ModelKind::Probe,
        _ => bail!(
            "{}: cannot tell the model kind from the folder (runs/<kind>/<name>); pass --kind captioner|t2i|clip|probe",
            run.display()
        ),
    })
}

/// Exports the run's best checkpoint (its EMA weights when it kept them) into `out`.
pub fn export(run: &Path, out: &Path, kind: ModelKind) -> Result<Manifest> {
    check_out(run, out)?;
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    let result = export_into(run, &partial, out, kind);
    if result.is_err() && partial.exists() {
        // A failed export leaves nothing behind; `out` was not touched.
        let _ = std::fs::remove_dir_all(&partial);
    }
    result
}

/// `out` is replaced by the export, so it must be neither the run, nor inside it, nor
/// above it, nor a folder of something else: only an earlier export (a manifest) or an
/// empty or new folder may be replaced.
fn check_out(run: &Path, out: &Path) -> Result<()> {
    let run_abs = run
        .canonicalize()
        .with_context(|| format!("{}: no such run folder", run.display()))?;
    let out_abs = absolute_through_links(out)?;
    if out_abs.starts_with(&run_abs) || run_abs.starts_with(&out_abs) {
        bail!(
            "--out {}: the export would replace the run {} or a folder around it; give a folder outside the run, e.g. models/NAME",
            out.display(),
            run.display()
        );
    }
    if out.exists() {
        if !out.is_dir() {
            bail!("--out {}: exists and is not a folder", out.display());
        }
        let empty = std::fs::read_dir(out)
            .with_context(|| format!("listing {}", out.display()))?
            .next()
            .is_none();
        if !empty && !out.join(super::manifest::FILE).is_file() {
            bail!(
                "--out {}: a non-empty folder that is not an earlier export (no {}); refusing to replace it",
                out.display(),
                super::manifest::FILE
            );
        }
    }
    Ok(())
}

/// `p` made absolute with its deepest existing ancestor's links resolved, so a path
/// not yet created still compares with canonical ones.
fn absolute_through_links(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))?;
    let mut rest = vec![];
    let mut cur = abs.as_path();
    loop {
        if let Ok(c) = cur.canonicalize() {
            return Ok(rest.iter().rev().fold(c, |acc, part| acc.join(part)));
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                cur = parent;
            }
            _ => return Ok(abs),
        }
    }
}

fn export_into(run: &Path, partial: &Path, out: &Path, kind: ModelKind) -> Result<Manifest> {
    if partial.exists() {
        std::fs::remove_dir_all(partial)
            .with_context(|| format!("removing {}", partial.display()))?;
    }
    std::fs::create_dir_all(partial).with_context(|| format!("creating {}", partial.display()))?;
    // libtorch's own writer aborts the process when the disk fills under it, so the
    // space is checked first: the traced modules are at most the checkpoint's size.
    crate::util::space::ensure_free(partial, checkpoint_bytes(run) + (1 << 20), "the export")?;
    let traced = match kind {
        ModelKind::Captioner => trace_captioner(run, partial)?,
        ModelKind::T2i => trace_t2i(run, partial)?,
        ModelKind::Clip => trace_clip(run, partial)?,
        ModelKind::Probe => trace_probe(run, partial)?,
    };
    let (state, tensors) = crate::train::checkpoint::load(run, "best")?;
    let ema = tensors.keys().any(|k| k.starts_with("ema."));
    let eval = run.join("eval_test/metrics.json");
    let metrics = if eval.exists() {
        crate::util::fsio::read_json(&eval)?
    } else {
        serde_json::to_value(&state.metrics)?
    };
    let tokenizer = match &traced.tokenizer {
        Some((tok, max_len)) => {
            let to = partial.join(TOKENIZER_FILE);
            std::fs::copy(&tok.source, &to)
                .with_context(|| format!("copying {} to {}", tok.source.display(), to.display()))?;
            Some(TokenizerInfo {
                file: TOKENIZER_FILE.into(),
                hash: tok.hash.clone(),
                bos: tok.bos,
                eos: tok.eos,
                pad: tok.pad,
                max_len: *max_len,
            })
        }
        None => None,
    };
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        kind,
        image_size: traced.image_size,
        normalisation: NORMALISATION.into(),
        tokenizer,
        modules: traced.modules,
        config: traced.config,
        step: state.step,
        ema,
        metrics,
        source_run: run.display().to_string(),
    };
    crate::util::fsio::write_json(&partial.join(super::manifest::FILE), &manifest)?;
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("replacing {}", out.display()))?;
    }
    std::fs::rename(partial, out)
        .with_context(|| format!("moving the export to {}", out.display()))?;
    Ok(manifest)
}

/// Bytes of the largest weights file in the run's checkpoints (weights, EMA and
/// optimizer moments: more than the traced modules hold).
fn checkpoint_bytes(run: &Path) -> u64 {
    std::fs::read_dir(run.join("checkpoints"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .max()
        .unwrap_or(0)
}

/// Traces `f` on `inputs` and saves it as `dir/file`.
fn save_traced(
    dir: &Path,
    file: &str,
    inputs: &[Tensor],
    f: &mut dyn FnMut(&[Tensor]) -> Tensor,
    names: (&[&str], &str),
) -> Result<(String, ModuleInfo)> {
    let role = file.trim_end_matches(".pt").to_string();
    // One output per module: tch's tracer registers several outputs without a tuple,
    // which TorchScript cannot save.
    let mut call = |x: &[Tensor]| vec![f(x)];
    let module = tch::no_grad(|| CModule::create_by_tracing(&role, "forward", inputs, &mut call))
        .with_context(|| format!("tracing {file}"))?;
    let path = dir.join(file);
    module
        .save(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    let info = ModuleInfo {
        file: file.into(),
        inputs: names.0.iter().map(|s| s.to_string()).collect(),
        output: names.1.to_string(),
    };
    Ok((role, info))
}

fn example_images(side: i64) -> Tensor {
    Tensor::rand([TRACE_BATCH, 3, side, side], (Kind::Float, Device::Cpu)) * 2.0 - 1.0
}

/// Example token rows: start token, a few real tokens, then padding.
fn example_tokens(tok: &TextTokenizer, len: i64) -> Tensor {
    let mut row = vec![tok.pad; len as usize];
    row[0] = tok.bos;
    for (i, t) in row.iter_mut().enumerate().skip(1).take(4) {
        *t = i as i64 + 10;
    }
    Tensor::from_slice(&row)
        .view([1, len])
        .repeat([TRACE_BATCH, 1])
}

fn trace_captioner(run: &Path, dir: &Path) -> Result<Traced> {
    let mut lc = captioner::load_run(run, "best", Device::Cpu)?;
    lc.vs.freeze(); // weights become constants of the trace, which refuses grad leaves
    let m = &lc.model;
    let c = m.cfg.clone();
    let images = example_images(c.image_size);
    let mut modules = BTreeMap::new();
    let (role, info) = save_traced(
        dir,
        "encoder.pt",
        std::slice::from_ref(&images),
        &mut |x| m.cross_kv(&m.encode(&x[0], false)),
        (
            &["images (B, 3, S, S)"],
            "cross_kv (2, layers, B, heads, grid, dim/heads): every decoder layer's cross-attention keys (index 0) and values (1)",
        ),
    )?;
    modules.insert(role, info);
    let cross = tch::no_grad(|| m.cross_kv(&m.encode(&images, false)));
    let key_positions = Tensor::arange(c.max_len, (Kind::Int64, Device::Cpu));
    let inputs = [
        Tensor::full([TRACE_BATCH, 1], lc.tok.bos, (Kind::Int64, Device::Cpu)),
        Tensor::from_slice(&[0i64]),
        m.empty_fixed_cache(TRACE_BATCH, Device::Cpu),
        cross,
    ];
    let (role, info) = save_traced(
        dir,
        "step.pt",
        &inputs,
        &mut |x| m.step_fixed_cache(&x[0], &x[1], &x[2], &x[3], &key_positions),
        (
            &[
                "token (B, 1) int64: the last token of each row (the start token first)",
                "pos (1,) int64: its position, 0 for the start token",
                "self_kv (2, layers, B, heads, max_len, dim/heads) float32: zeros before the first step; this step's keys and values are written at pos IN PLACE",
                "cross_kv from encoder.pt",
            ],
            "logits (B, vocab) of the next token",
        ),
    )?;
    modules.insert(role, info);
    Ok(Traced {
        modules,
        image_size: c.image_size,
        config: serde_json::to_value(&lc.cfg)?,
        tokenizer: Some((lc.tok, c.max_len)),
    })
}

fn trace_t2i(run: &Path, dir: &Path) -> Result<Traced> {
    let mut lt = t2i::load_run(run, Device::Cpu)?;
    lt.vs.freeze();
    let m = &lt.model;
    let cfg = lt.cfg.model.clone();
    let pad = lt.tok.pad;
    let max_len = cfg.text.max_len;
    let tokens = example_tokens(&lt.tok, max_len);
    let mut modules = BTreeMap::new();
    let cond_names = [
        "global (B, text_dim): states[:, 0]",
        "tokens (B, max_len, text_dim): states[:, 1:]",
        "mask (B, max_len) bool: tokens != pad",
    ];
    let (role, info) = save_traced(
        dir,
        "text_encoder.pt",
        std::slice::from_ref(&tokens),
        &mut |x| {
            let c = m.condition(&x[0], pad, false);
            Tensor::cat(&[c.global.unsqueeze(1), c.tokens], 1)
        },
        (
            &["tokens (B, max_len) int64, padded with pad"],
            "states (B, 1 + max_len, text_dim): the pooled caption vector, then the token states",
        ),
    )?;
    modules.insert(role, info);
    let c = tch::no_grad(|| m.condition(&tokens, pad, false));
    let condition = |x: &[Tensor], at: usize| crate::models::t2i::Condition {
        global: x[at].shallow_clone(),
        tokens: x[at + 1].shallow_clone(),
        mask: x[at + 2].shallow_clone(),
    };
    if cfg.kind != crate::models::t2i::T2IKind::Diffusion {
        let z = crate::models::t2i::noise(&cfg, TRACE_BATCH, Device::Cpu);
        let (role, info) = save_traced(
            dir,
            "generator.pt",
            &[z, c.global, c.tokens, c.mask],
            &mut |x| {
                m.generate(&condition(x, 1), &x[0])
                    .expect("checked: a vae or gan body")
            },
            (
                &[
                    "z (B, z_dim): N(0, I), truncated for a GAN with truncation",
                    cond_names[0],
                    cond_names[1],
                    cond_names[2],
                ],
                "images (B, 3, S, S) in [-1, 1]",
            ),
        )?;
        modules.insert(role, info);
    } else {
        let x = crate::models::t2i::noise(&cfg, TRACE_BATCH, Device::Cpu);
        let t = Tensor::from_slice(&[3i64, 7]);
        let (role, info) = save_traced(
            dir,
            "denoiser.pt",
            &[x, t, c.global.shallow_clone(), c.tokens, c.mask],
            &mut |x| {
                m.denoise_at(&x[0], &x[1], &condition(x, 2))
                    .expect("checked: a diffusion body")
            },
            (
                &[
                    "x (B, 3, S, S): the noisy images",
                    "t (B,) int64: time steps",
                    cond_names[0],
                    cond_names[1],
                    cond_names[2],
                ],
                "the U-Net's prediction (eps or v: config.model.diffusion.prediction)",
            ),
        )?;
        modules.insert(role, info);
        let (role, info) = save_traced(
            dir,
            "null_condition.pt",
            std::slice::from_ref(&c.global),
            &mut |x| {
                let n = m
                    .null_condition_like(&x[0])
                    .expect("checked: a diffusion body");
                Tensor::cat(&[n.global.unsqueeze(1), n.tokens], 1)
            },
            (
                &["global (B, text_dim): only its shape is read"],
                "states (B, 2, text_dim): the null caption vector, then its one token (mask: all true)",
            ),
        )?;
        modules.insert(role, info);
    }
    Ok(Traced {
        modules,
        image_size: cfg.image_size,
        config: serde_json::to_value(&lt.cfg)?,
        tokenizer: Some((lt.tok, max_len)),
    })
}

fn trace_clip(run: &Path, dir: &Path) -> Result<Traced> {
    let mut lc = evaluators::load_clip(run, Device::Cpu)?;
    lc.vs.freeze();
    let m = &lc.model;
    let pad = lc.tok.pad;
    let max_len = m.cfg.text.max_len;
    let mut modules = BTreeMap::new();
    let images = example_images(m.cfg.image_size);
    let (role, info) = save_traced(
        dir,
        "image_encoder.pt",
        std::slice::from_ref(&images),
        &mut |x| m.embed_images(&x[0], false),
        (
            &["images (B, 3, S, S)"],
            "embeddings (B, embed_dim), unit norm",
        ),
    )?;
    modules.insert(role, info);
    let (role, info) = save_traced(
        dir,
        "image_features.pt",
        &[images],
        &mut |x| m.image_features(&x[0], false),
        (
            &["images (B, 3, S, S)"],
            "features (B, feature_dim): the space of FD-own and KID-own",
        ),
    )?;
    modules.insert(role, info);
    let (role, info) = save_traced(
        dir,
        "text_encoder.pt",
        &[example_tokens(&lc.tok, max_len)],
        &mut |x| m.embed_texts(&x[0], pad, false),
        (
            &["tokens (B, max_len) int64, padded with pad"],
            "embeddings (B, embed_dim), unit norm",
        ),
    )?;
    modules.insert(role, info);
    Ok(Traced {
        modules,
        image_size: m.cfg.image_size,
        config: serde_json::to_value(&lc.cfg)?,
        tokenizer: Some((lc.tok, max_len)),
    })
}

fn trace_probe(run: &Path, dir: &Path) -> Result<Traced> {
    let mut lp = evaluators::load_probe(run, Device::Cpu)?;
    lp.vs.freeze();
    let m = &lp.model;
    let mut modules = BTreeMap::new();
    let (role, info) = save_traced(
        dir,
        "probe.pt",
        &[example_images(m.cfg.image_size)],
        &mut |x| {
            let (g, c) = m.head_logits(&x[0]);
            Tensor::cat(&[g, c.flatten(1, 2)], 1)
        },
        (
            &["images (B, 3, S, S)"],
            "logits (B, 12 + 9·34): global heads (sky 4, ground 4, style 4), then per cell of the 3×3 grid in row order: kind 11, colour 10, size 3, detail 10",
        ),
    )?;
    modules.insert(role, info);
    Ok(Traced {
        modules,
        image_size: m.cfg.image_size,
        config: serde_json::to_value(&lp.cfg)?,
        tokenizer: None,
    })
}
