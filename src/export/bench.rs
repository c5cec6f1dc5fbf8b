//! `ekphrasis bench exported`: the size, load time and throughput of exported models,
//! as the inference commands and the web app load them.

use super::exported::{ExportedCaptioner, ExportedClip, ExportedPainter};
use super::manifest::{Manifest, ModelKind};
use crate::models::captioner::decode::DecodeOptions;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Serialize)]
pub struct ExportedTiming {
    pub model: String,
    pub kind: String,
    pub megabytes: f64,
    pub load_s: f64,
    /// What the throughput counts: captions, images drawn, images embedded or graded.
    pub unit: String,
    pub per_s: f64,
    pub batch: i64,
}

/// Size, load time and throughput of every exported model under `models` (one folder
/// each), on `n` random images or `n` fixed captions, in batches of `n`.
pub fn exported_models(models: &Path, n: i64, device: Device) -> Result<Vec<ExportedTiming>> {
    let mut dirs: Vec<_> = std::fs::read_dir(models)
        .with_context(|| format!("reading {}", models.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(super::manifest::FILE).exists())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        bail!("{}: no exported models (make export)", models.display());
    }
    let texts: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "A watercolour of a calm lake under a blue sky. A small red house stands in the bottom left, and a yellow sun shines in the top right. Painting {i}."
            )
        })
        .collect();
    let mut out = vec![];
    for dir in dirs {
        let m = Manifest::read(&dir)?;
        let megabytes = m
            .modules
            .values()
            .filter_map(|i| std::fs::metadata(dir.join(&i.file)).ok())
            .map(|md| md.len() as f64 / 1e6)
            .sum();
        let s = m.image_size;
        let images =
            (Tensor::rand([n, 3, s, s], (Kind::Float, Device::Cpu)) * 255.0).to_kind(Kind::Uint8);
        let t0 = Instant::now();
        let (unit, work): (&str, Box<dyn Fn() -> Result<()>>) = match m.kind {
            ModelKind::Captioner => {
                let c = ExportedCaptioner::load(&dir, device)?;
                let opts = DecodeOptions::default();
                (
                    "captions",
                    Box::new(move || c.caption(&images, &opts, n).map(|_| ())),
                )
            }
            ModelKind::T2i => {
                use crate::stages::t2i::paint_tokens;
                let p = ExportedPainter::load(&dir, device)?;
                let tokens = p.tokens(&texts)?;
                let pad = p.tok.pad;
                (
                    "images drawn",
                    Box::new(move || paint_tokens(&p, &tokens, pad, 1, 0, device).map(|_| ())),
                )
            }
            ModelKind::Clip => {
                let c = ExportedClip::load(&dir, device)?;
                (
                    "images embedded",
                    Box::new(move || c.embed_images(&images).map(|_| ())),
                )
            }
            ModelKind::Probe => {
                let module =
                    tch::CModule::load_on_device(dir.join(&m.module(&dir, "probe")?.file), device)?;
                let x = crate::data::loader::to_float(&images, device);
                (
                    "images graded",
                    Box::new(move || {
                        let _ = tch::no_grad(|| module.forward_ts(&[&x]))?;
                        Ok(())
                    }),
                )
            }
        };
        let load_s = t0.elapsed().as_secs_f64();
        // TorchScript's profiling executor optimises a graph over its first runs, and a GPU
        // runs asynchronously: three untimed runs, then three timed ones between syncs.
        let sync = || {
            if let Device::Cuda(i) = device {
                tch::Cuda::synchronize(i as i64);
            }
        };
        for _ in 0..3 {
            work()?;
        }
        sync();
        let t1 = Instant::now();
        for _ in 0..3 {
            work()?;
        }
        sync();
        out.push(ExportedTiming {
            model: dir.display().to_string(),
            kind: m.kind.name().into(),
            megabytes,
            load_s,
            unit: unit.into(),
            per_s: 3.0 * n as f64 / t1.elapsed().as_secs_f64(),
            batch: n,
        });
    }
    Ok(out)
}
