//! `bench …`: the timings `make bench` and `make bench-serve` print.

use super::*;

pub(super) fn run(cli: &Cli, device: tch::Device) -> Result<()> {
    match &cli.command {
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
            let path = require_config(cli, "experiments/bench/captioner.yaml")?;
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
            let path = require_config(cli, "experiments/bench/captioner.yaml")?;
            let c: captioner::CaptionerStageConfig = config::load(&path, &cli.overrides)?;
            let t =
                crate::stages::bench::greedy_decoding(&c.model, *vocab, *batch, *tokens, *repeats)?;
            println!("{}", serde_json::to_string(&t)?);
        }
        Command::Bench(BenchCommand::Exported { models, n }) => {
            let t = crate::export::bench::exported_models(models, *n, device)?;
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
        _ => unreachable!("app::run dispatches only this module's commands here"),
    }
    Ok(())
}
