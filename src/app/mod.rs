//! Runs a parsed command line: one function per command, each a thin join of config,
//! device and the library.

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
    match &cli.command {
        Command::Data(DataCommand::Synth {
            out,
            n,
            size,
            force,
        }) => {
            let seed = cli.seed.unwrap_or(0);
            eprintln!(
                "rendering {n} synthetic paintings at {size} px into {}",
                out.display()
            );
            let s = crate::data::synth::render_dataset(out, *n, *size, seed, *force)?;
            println!(
                "rendered {} images in {:.2} s ({:.0} images/s); splits train/val/test {}/{}/{}; paragraph words min {} mean {:.1} max {}",
                s.n,
                s.seconds,
                s.n as f64 / s.seconds,
                s.splits[0],
                s.splits[1],
                s.splits[2],
                s.words_min,
                s.words_mean,
                s.words_max
            );
        }
        Command::Data(DataCommand::Prepare {
            format,
            src,
            images,
            captions,
            multi,
            size,
            out,
            force,
        }) => {
            let opts = crate::data::prepare::PrepareOptions {
                format: *format,
                src: src.clone(),
                images: images.clone(),
                captions: captions.clone(),
                multi: *multi,
                size: *size,
                seed: cli.seed.unwrap_or(0),
                out: out.clone(),
                force: *force,
            };
            let r = crate::data::prepare::prepare(&opts)?;
            println!(
                "prepared {} of {} items into {} (train/val/test {}/{}/{}); rejected: {:?}; non-UTF-8 texts decoded lossily: {}",
                r.kept, r.candidates, out.display(), r.splits[0], r.splits[1], r.splits[2], r.rejected, r.non_utf8_texts
            );
        }
        Command::Data(DataCommand::Describe(a)) => describe(a)?,
        Command::Tokenizer(TokenizerCommand::Train { data, from }) => {
            let cfg: TokenizerConfig = match &cli.config {
                Some(p) => config::load(p, &cli.overrides)?,
                None => TokenizerConfig {
                    vocab_size: 5000,
                    min_frequency: 2,
                    max_len: 256,
                },
            };
            let ds = Dataset::open(data)?;
            let s = build_for_dataset(&ds, &cfg, from.as_deref())?;
            println!(
                "tokenizer: {} tokens in {}; captions average {:.1} tokens (max {}), {} truncated to {}",
                s.vocab_size,
                ds.tokenizer_path().display(),
                s.tokens_mean,
                s.tokens_max,
                s.truncated,
                cfg.max_len
            );
        }
        Command::Train(TrainCommand::Captioner(args)) => {
            let (cfg, yaml) = stage_config::<captioner::CaptionerStageConfig>(
                &cli,
                "experiments/demo/captioner.yaml",
            )?;
            let s = captioner::train(cfg, yaml, &args.run, args.resume, device)?;
            println!(
                "captioner trained: {} steps in {:.1} s; best {:?} at step {:?}; run in {}",
                s.steps,
                s.seconds,
                s.best_metric,
                s.best_step,
                args.run.display()
            );
        }
        Command::Train(TrainCommand::Clip(args)) => {
            let (cfg, yaml) =
                stage_config::<evaluators::ClipStageConfig>(&cli, "experiments/demo/clip.yaml")?;
            let s = evaluators::train_clip(cfg, yaml, &args.run, args.resume, device)?;
            println!(
                "clip trained: {} steps in {:.1} s; best {:?}; run in {}",
                s.steps,
                s.seconds,
                s.best_metric,
                args.run.display()
            );
        }
        Command::Train(TrainCommand::Probe(args)) => {
            let (cfg, yaml) =
                stage_config::<evaluators::ProbeStageConfig>(&cli, "experiments/demo/probe.yaml")?;
            let s = evaluators::train_probe(cfg, yaml, &args.run, args.resume, device)?;
            println!(
                "probe trained: {} steps in {:.1} s; best {:?}; run in {}",
                s.steps,
                s.seconds,
                s.best_metric,
                args.run.display()
            );
        }
        Command::Eval(EvalCommand::Clip { run, split, limit }) => {
            let m = evaluators::eval_clip(run, *split, *limit, device)?;
            print_metrics(&m);
            println!(
                "wrote {}",
                run.join(format!("eval_{}", split.name()))
                    .join("plots.html")
                    .display()
            );
        }
        Command::Train(TrainCommand::T2i(args)) => {
            let (cfg, yaml) =
                stage_config::<t2i::T2IStageConfig>(&cli, "experiments/demo/t2i-vae.yaml")?;
            let s = t2i::train(cfg, yaml, &args.run, args.resume, device)?;
            println!(
                "t2i trained: {} steps in {:.1} s; best {:?}; run in {}",
                s.steps,
                s.seconds,
                s.best_metric,
                args.run.display()
            );
        }
        Command::Train(TrainCommand::Invertible(args)) => {
            let (cfg, yaml) = stage_config::<crate::stages::invertible::InvertibleStageConfig>(
                &cli,
                "experiments/demo/invertible.yaml",
            )?;
            crate::stages::invertible::train(cfg, yaml, &args.run, args.resume, device)?;
            println!("invertible bridge trained; run in {}", args.run.display());
        }
        Command::Train(TrainCommand::Unified(args)) => {
            let (cfg, yaml) = stage_config::<crate::stages::unified::UnifiedStageConfig>(
                &cli,
                "experiments/demo/unified.yaml",
            )?;
            let s = crate::stages::unified::train(cfg, yaml, &args.run, args.resume, device)?;
            println!(
                "unified trained: {} steps in {:.1} s; best {:?}; run in {}",
                s.steps,
                s.seconds,
                s.best_metric,
                args.run.display()
            );
        }
        Command::Eval(EvalCommand::Unified { run, n, scene }) => {
            if *n < 2 {
                bail!("--n must be at least 2");
            }
            let (m, out) = crate::stages::unified::evaluate(run, *n, *scene, device)?;
            print_metrics(&m);
            println!("wrote {}", out.join("metrics.json").display());
        }
        Command::Generate(a) => {
            use crate::stages::unified::{generate, parse_seeds};
            let seeds = match &a.seeds {
                Some(spec) => parse_seeds(spec)?,
                None => vec![cli.seed.unwrap_or(0)],
            };
            for s in generate(&a.run, &seeds, &a.out, a.scene, device)? {
                println!("seed {}: {}", s.seed, s.caption);
            }
            println!(
                "wrote {} images and metadata.json to {}",
                seeds.len(),
                a.out.display()
            );
        }
        Command::Eval(EvalCommand::Invertible { run, split, limit }) => {
            print_metrics(&crate::stages::invertible::evaluate(
                run, *split, *limit, device,
            )?);
            println!(
                "wrote {}",
                run.join(format!("eval_{}", split.name()))
                    .join("metrics.json")
                    .display()
            );
        }
        Command::Bench(BenchCommand::InvertibleFunctions {
            width,
            layers,
            steps,
            lr,
            points,
            out,
        }) => {
            use crate::stages::invertible_functions::{run, FunctionBenchOptions};
            if *width < 1 || *layers < 1 || *points < 2 {
                bail!("--width, --layers must be ≥ 1 and --points ≥ 2");
            }
            let rows = run(&FunctionBenchOptions {
                width: *width,
                layers: *layers,
                steps: *steps,
                lr: *lr,
                points: *points,
            });
            println!(
                "{:<22} {:>13} {:>13} {:>11} {:>11} {:>14} {:>8}",
                "function",
                "learning MSE",
                "inversion MSE",
                "seed learn",
                "seed invert",
                "f⁻¹(f(x)) err",
                "seconds"
            );
            for r in &rows {
                println!(
                    "{:<22} {:>13.2e} {:>13.2e} {:>11.0e} {:>11.0e} {:>14.1e} {:>8.1}",
                    r.function,
                    r.learning_mse,
                    r.inversion_mse,
                    r.seed_learning,
                    r.seed_inversion,
                    r.roundtrip_max_error,
                    r.seconds
                );
            }
            crate::util::fsio::write_json(out, &rows)?;
            println!("wrote {}", out.display());
        }
        Command::Eval(EvalCommand::T2i { run, split, limit }) => {
            print_metrics(&t2i::evaluate(run, *split, *limit, device)?);
            println!(
                "wrote {}",
                run.join(format!("eval_{}", split.name()))
                    .join("metrics.json")
                    .display()
            );
        }
        Command::Draw(a) => {
            // Checked before any model loads; the pictures are held in memory at once.
            const MAX_PER_TEXT: i64 = 1024;
            if !(1..=MAX_PER_TEXT).contains(&a.n) {
                bail!("--n {}: give 1 to {MAX_PER_TEXT} images per text", a.n);
            }
            let texts = match (&a.text, &a.captions) {
                (Some(t), None) => vec![t.clone()],
                (None, Some(csv)) => crate::data::ingest::read_caption_column(csv)?,
                _ => bail!("give either a TEXT argument or --captions FILE.csv"),
            };
            let sampling = t2i::SamplingOverrides {
                sampler: a.sampler,
                sample_steps: a.sample_steps,
                guidance: a.guidance,
                eta: a.eta,
            };
            let req = t2i::DrawRequest {
                texts: &texts,
                n: a.n,
                seed: cli.seed.unwrap_or(0) as i64,
                sampling: &sampling,
            };
            let images = match (&a.run, &a.model) {
                (Some(run), _) => t2i::draw(run, &req, device)?,
                (None, Some(dir)) => crate::export::commands::draw(dir, &req, device)?,
                (None, None) => bail!("give --run RUN or --model EXPORTED"),
            };
            let paths = t2i::write_drawings(&images, a.n, &a.out, a.grid)?;
            println!("wrote {} images to {}", paths.len(), a.out.display());
        }
        Command::Bench(BenchCommand::Loader {
            data,
            size,
            batch_size,
        }) => {
            let b = crate::data::bench::bench_loader(
                &Dataset::open(data)?,
                *size,
                *batch_size,
                device,
            )?;
            println!(
                "decode + resize: {} images at {:.0} images/s ({} threads); cache: {} batches of {} at {:.0} batches/s ({:.0} images/s)",
                b.images,
                b.decode_per_sec,
                rayon::current_num_threads(),
                b.batches,
                b.batch_size,
                b.batches_per_sec,
                b.batches_per_sec * b.batch_size as f64
            );
        }
        Command::Bench(BenchCommand::TrainStep {
            vocab,
            seq_len,
            steps,
            warmup,
        }) => {
            let path = require_config(&cli, "experiments/bench/captioner.yaml")?;
            let raw: serde_yaml::Value = config::load(&path, &cli.overrides)?;
            let timing = if raw["model"]["kind"].as_str() == Some("gan") {
                let c: t2i::T2IStageConfig = config::load(&path, &cli.overrides)?;
                crate::stages::bench::gan_steps(
                    &c.model, &c.train, *vocab, *seq_len, *steps, *warmup,
                )?
            } else {
                let c: captioner::CaptionerStageConfig = config::load(&path, &cli.overrides)?;
                crate::stages::bench::captioner_steps(
                    &c.model, &c.train, *vocab, *seq_len, *steps, *warmup,
                )?
            };
            println!("{}", serde_json::to_string(&timing)?);
        }
        Command::Bench(BenchCommand::Greedy {
            vocab,
            batch,
            tokens,
            repeats,
        }) => {
            let path = require_config(&cli, "experiments/bench/captioner.yaml")?;
            let c: captioner::CaptionerStageConfig = config::load(&path, &cli.overrides)?;
            let t =
                crate::stages::bench::greedy_decoding(&c.model, *vocab, *batch, *tokens, *repeats)?;
            println!("{}", serde_json::to_string(&t)?);
        }
        Command::Bench(BenchCommand::Exported { models, n }) => {
            let t = crate::stages::bench::exported_models(models, *n, device)?;
            println!("{}", serde_json::to_string(&t)?);
        }
        Command::Bench(BenchCommand::Matmul { n, repeats }) => {
            let g = crate::stages::bench::matmul_gflops(*n, *repeats);
            println!(
                "{}",
                serde_json::json!({"n": n, "gflops": g, "threads": tch::get_num_threads()})
            );
        }
        Command::Bench(BenchCommand::DecodeFiles { dir, size }) => {
            let t = crate::stages::bench::decode_files(dir, *size)?;
            println!("{}", serde_json::to_string(&t)?);
        }
        Command::Cycle(a) if !a.images.is_empty() => {
            crate::export::commands::cycle_images(a, cli.seed.unwrap_or(0) as i64, device)?
        }
        Command::Cycle(a) => {
            let args = cycle::CycleArgs {
                captioner: a.captioner.clone(),
                generator: a.generator.clone(),
                clip: a.clip.clone(),
                probe: (a.probe != "none").then(|| PathBuf::from(&a.probe)),
                invertible: a.invertible.clone(),
                split: a.split,
                limit: a.limit,
                out: a.out.clone(),
                seed: cli.seed.unwrap_or(0),
            };
            let table = cycle::run(&args, device)?;
            for (col, m) in &table {
                println!("{col}");
                print_metrics(m);
            }
            println!("report: {}", a.out.join("index.html").display());
        }
        Command::Eval(EvalCommand::Probe { run, split }) => {
            print_metrics(&evaluators::eval_probe(run, *split, device)?);
        }
        Command::Eval(EvalCommand::Captioner {
            run,
            split,
            checkpoint,
            limit,
            decode,
        }) => {
            let lc_cfg: captioner::CaptionerStageConfig =
                config::load(&run.join("config.yaml"), &[])?;
            let opts = decode_options(lc_cfg.eval.decode, decode)?;
            let m = captioner::evaluate(run, *split, checkpoint, Some(opts), *limit, device)?;
            for (k, v) in &m {
                println!("{k:>24} {v:.4}");
            }
            println!(
                "wrote {}",
                run.join(format!("eval_{}", split.name()))
                    .join("index.html")
                    .display()
            );
        }
        Command::Caption(CaptionArgs {
            run,
            model,
            images,
            checkpoint,
            decode,
        }) => {
            let captions = match (run, model) {
                (Some(run), _) => {
                    let lc = captioner::load_run(run, checkpoint, device)?;
                    let opts = decode_options(lc.cfg.eval.decode.clone(), decode)?;
                    let t = load_batch(images, lc.cfg.model.image_size as u32)?;
                    captioner::caption_images(&lc.model, &lc.tok, &t, &opts, device, 32)
                }
                (None, Some(dir)) => {
                    let m = ExportedCaptioner::load(dir, device)?;
                    let opts = decode_options(m.decode.clone(), decode)?;
                    let t = load_batch(images, m.manifest.image_size as u32)?;
                    m.caption(&t, &opts, 32)?
                }
                (None, None) => bail!("give --run RUN or --model EXPORTED"),
            };
            for (p, c) in images.iter().zip(captions) {
                println!("{}\t{c}", p.display());
            }
        }
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
        Command::Bench(BenchCommand::Serve {
            serve,
            image,
            requests,
            clients,
            seconds,
            rss_bound_mb,
        }) => {
            let image = match image {
                Some(p) => p.clone(),
                None => first_image(Path::new("data/synth/images"))?,
            };
            let bytes =
                std::fs::read(&image).with_context(|| format!("reading {}", image.display()))?;
            let mut serve = serve_options(serve)?;
            serve.port = 0;
            serve.host = "127.0.0.1".into();
            let b = crate::serve::bench::ServeBench {
                serve,
                image: bytes,
                requests: *requests,
                clients: *clients,
                seconds: *seconds,
                rss_bound_mb: *rss_bound_mb,
            };
            let t = crate::serve::bench::run(&b, device)?;
            println!("{}", serde_json::to_string_pretty(&t)?);
        }
        Command::Embed(a) => crate::export::commands::embed(a, device)?,
        Command::Retrieve(a) => crate::export::commands::retrieve(a, device)?,
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

fn describe(a: &crate::cli::DescribeArgs) -> Result<()> {
    use crate::data::vlm::{client::ClientOptions, describe, DescribeOptions};
    let seconds = |s: f64, what: &str| {
        std::time::Duration::try_from_secs_f64(s)
            .map_err(|_| anyhow::anyhow!("--{what} {s}: not a number of seconds"))
    };
    let opts = DescribeOptions {
        data: a.data.clone(),
        model: a.model.clone(),
        client: ClientOptions {
            endpoint: a.endpoint.clone(),
            api_key: std::env::var(&a.api_key_env).ok().filter(|k| !k.is_empty()),
            timeout: seconds(a.timeout, "timeout")?,
            max_retries: a.retries,
            backoff: seconds(a.backoff, "backoff")?,
        },
        concurrency: a.concurrency,
        min_words: a.min_words,
        max_words: a.max_words,
        max_asks: a.max_asks.max(1),
        max_tokens: a.max_tokens,
        limit: a.limit,
        dry_run: a.dry_run,
        retry_refused: a.retry_refused,
        price_in: a.price_in,
        price_out: a.price_out,
    };
    let s = describe(&opts)?;
    if !a.dry_run {
        println!(
            "described {} images this run ({:?}); {} were done before; captions.json now has {} of {} captions from the model; tokens {} in / {} out, ${:.4}{}",
            s.attempted,
            s.counts,
            s.already_done,
            s.described_captions,
            s.images,
            s.prompt_tokens,
            s.completion_tokens,
            s.cost_usd,
            if s.interrupted { " (interrupted: run again to continue)" } else { "" }
        );
        println!(
            "retrain the tokenizer on the new captions: ekphrasis tokenizer train --data {}",
            a.data.display()
        );
    }
    Ok(())
}
