//! `train <stage>`: each stage's config, trained by its stage; data-parallel when started
//! by torchrun (`crate::distributed`).

use super::*;

pub(super) fn run(cli: &Cli, device: tch::Device) -> Result<()> {
    let device = crate::distributed::init_from_env(device)?;
    match &cli.command {
        Command::Train(TrainCommand::Captioner(args)) => {
            let (cfg, yaml) = stage_config::<captioner::CaptionerStageConfig>(
                cli,
                "experiments/general/captioner.yaml",
            )?;
            let s = captioner::train(cfg, yaml, &args.run, args.resume, device)?;
            trained("captioner", &s, &args.run);
        }
        Command::Train(TrainCommand::Clip(args)) => {
            let (cfg, yaml) =
                stage_config::<evaluators::ClipStageConfig>(cli, "experiments/demo/clip.yaml")?;
            let s = evaluators::train_clip(cfg, yaml, &args.run, args.resume, device)?;
            trained("clip", &s, &args.run);
        }
        Command::Train(TrainCommand::Align(args)) => {
            let (cfg, yaml) = stage_config::<crate::stages::align::AlignStageConfig>(
                cli,
                "experiments/general/align.yaml",
            )?;
            let s = crate::stages::align::train(cfg, yaml, &args.run, args.resume, device)?;
            trained("align", &s, &args.run);
        }
        Command::Train(TrainCommand::Probe(args)) => {
            let (cfg, yaml) =
                stage_config::<evaluators::ProbeStageConfig>(cli, "experiments/demo/probe.yaml")?;
            let s = evaluators::train_probe(cfg, yaml, &args.run, args.resume, device)?;
            trained("probe", &s, &args.run);
        }
        Command::Train(TrainCommand::T2i(args)) => {
            let (cfg, yaml) =
                stage_config::<t2i::T2IStageConfig>(cli, "experiments/general/t2i-vae.yaml")?;
            let s = t2i::train(cfg, yaml, &args.run, args.resume, device)?;
            trained("t2i", &s, &args.run);
        }
        Command::Train(TrainCommand::Invertible(args)) => {
            let (cfg, yaml) = stage_config::<crate::stages::invertible::InvertibleStageConfig>(
                cli,
                "experiments/demo/invertible.yaml",
            )?;
            crate::stages::invertible::train(cfg, yaml, &args.run, args.resume, device)?;
            if crate::distributed::is_writer() {
                println!("invertible bridge trained; run in {}", args.run.display());
            }
        }
        Command::Train(TrainCommand::Unified(args)) => {
            let (cfg, yaml) = stage_config::<crate::stages::unified::UnifiedStageConfig>(
                cli,
                "experiments/scenes/unified.yaml",
            )?;
            let s = crate::stages::unified::train(cfg, yaml, &args.run, args.resume, device)?;
            trained("unified", &s, &args.run);
        }
        _ => unreachable!("app::run dispatches only this module's commands here"),
    }
    Ok(())
}

/// The line a finished training prints.
fn trained(stage: &str, s: &crate::train::runner::RunSummary, run: &Path) {
    if !crate::distributed::is_writer() {
        return;
    }
    println!(
        "{stage} trained: {} steps in {:.1} s; best {:?} at step {:?}; run in {}",
        s.steps,
        s.seconds,
        s.best_metric,
        s.best_step,
        run.display()
    );
}
