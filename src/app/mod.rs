//! Runs a parsed command line: one function per command, each a thin join of config,
//! device and the library.

mod bench;
mod data;
mod eval;
mod exported;
mod infer;
mod score;
mod train;

use crate::cli::{
    BenchCommand, CaptionArgs, Cli, Command, DataCommand, DecodeArgs, EvalCommand,
    TokenizerCommand, TrainCommand,
};
use crate::config;
use crate::data::images::load_batch;
use crate::data::layout::Dataset;
use crate::data::tokenizer::{build_for_dataset, TokenizerConfig};
use crate::device::parse_device;
use crate::export::exported::ExportedCaptioner;
use crate::models::captioner::decode::DecodeOptions;
use crate::stages::{captioner, cycle, evaluators, t2i};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

fn require_config(cli: &Cli, example: &str) -> Result<PathBuf> {
    cli.config
        .clone()
        .with_context(|| format!("this command needs a config: -c {example}"))
}

/// Loads the config, applies --set and --seed, and returns it with its resolved YAML.
fn stage_config<T: serde::de::DeserializeOwned + serde::Serialize>(
    cli: &Cli,
    example: &str,
) -> Result<(T, String)> {
    let path = require_config(cli, example)?;
    let mut overrides = cli.overrides.clone();
    if let Some(seed) = cli.seed {
        overrides.push(format!("seed={seed}"));
    }
    let cfg: T = config::load(&path, &overrides)?;
    let yaml = config::to_yaml(&cfg)?;
    Ok((cfg, yaml))
}

pub fn decode_options(base: DecodeOptions, a: &DecodeArgs) -> Result<DecodeOptions> {
    let o = DecodeOptions {
        strategy: a.strategy.unwrap_or(base.strategy),
        beam: a.beam,
        temperature: a.temperature,
        top_p: a.top_p,
        repetition_penalty: if a.repetition_penalty != 1.0 {
            a.repetition_penalty
        } else {
            base.repetition_penalty
        },
        no_repeat_ngram: if a.no_repeat_ngram != 0 {
            a.no_repeat_ngram
        } else {
            base.no_repeat_ngram
        },
        kv_cache: !a.no_kv_cache,
        ..base
    };
    o.check()?;
    Ok(o)
}

fn print_metrics(m: &std::collections::BTreeMap<String, f64>) {
    for (k, v) in m {
        println!("{k:>24} {v:.4}");
    }
}

pub fn run(cli: Cli) -> Result<()> {
    // Checked first: an override with no config to apply to would be silently lost.
    if cli.config.is_none() && !cli.overrides.is_empty() {
        bail!("--set was given without -c/--config");
    }
    let device = parse_device(&cli.device)?;
    crate::util::progress::configure(cli.progress, cli.label());
    if let Some(n) = cli.threads {
        if n == 0 {
            bail!("--threads 0: give at least one thread");
        }
        tch::set_num_threads(n as i32);
    }
    // Held to the end of the command: dropping it leaves the share.
    let _share = match &cli.share_cores {
        Some(dir) => Some(crate::util::cores::join(dir)?),
        None => None,
    };
    match &cli.command {
        Command::Data(_) | Command::Tokenizer(_) => data::run(&cli)?,
        Command::Train(_) => train::run(&cli, device)?,
        Command::Eval(_) => eval::run(&cli, device)?,
        Command::Bench(_) => bench::run(&cli, device)?,
        Command::Generate(_)
        | Command::Draw(_)
        | Command::Cycle(_)
        | Command::Caption(_)
        | Command::Embed(_)
        | Command::Retrieve(_) => infer::run(&cli, device)?,
        Command::Score(a) => score::run(a, device)?,
        Command::Export(a) => {
            let kind = crate::export::trace::run_kind(&a.run, a.kind)?;
            let t0 = std::time::Instant::now();
            let m = crate::export::trace::export(&a.run, &a.out, kind)?;
            let bytes: u64 = m
                .modules
                .values()
                .filter_map(|i| std::fs::metadata(a.out.join(&i.file)).ok())
                .map(|md| md.len())
                .sum();
            println!(
                "exported {} (step {}, {} weights) to {} in {:.1} s: {} modules, {:.2} MB",
                kind.name(),
                m.step,
                if m.ema { "EMA" } else { "raw" },
                a.out.display(),
                t0.elapsed().as_secs_f64(),
                m.modules.len(),
                bytes as f64 / 1e6
            );
        }
        Command::Serve(a) => crate::serve::serve(&serve_options(a)?, device)?,
    }
    Ok(())
}

/// `serve`'s options from its flags, checked.
fn serve_options(a: &crate::cli::ServeArgs) -> Result<crate::serve::ServeOptions> {
    if !(a.timeout.is_finite() && a.timeout > 0.0 && a.timeout <= 86_400.0) {
        bail!("--timeout {}: give 0 < seconds ≤ 86400", a.timeout);
    }
    if a.max_upload_mib == 0 || a.max_upload_mib > 1024 {
        bail!("--max-upload-mib {}: give 1 to 1024", a.max_upload_mib);
    }
    if a.max_images < 1 || a.max_images > 256 {
        bail!("--max-images {}: give 1 to 256", a.max_images);
    }
    if a.max_text_chars == 0 {
        bail!("--max-text-chars 0: give at least 1");
    }
    Ok(crate::serve::ServeOptions {
        models: a.models.clone(),
        unified: a.unified.clone(),
        report: a.report.clone(),
        host: a.host.clone(),
        port: a.port,
        queue: a.queue,
        limits: crate::serve::api::Limits {
            body_bytes: a.max_upload_mib << 20,
            text_chars: a.max_text_chars,
            max_images: a.max_images,
            timeout: std::time::Duration::from_secs_f64(a.timeout),
        },
    })
}

/// The first image file of `dir` by name.
fn first_image(dir: &Path) -> Result<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {} (give --image FILE)", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png" || e == "jpg"))
        .collect();
    files.sort();
    files
        .into_iter()
        .next()
        .with_context(|| format!("{} holds no image (give --image FILE)", dir.display()))
}
