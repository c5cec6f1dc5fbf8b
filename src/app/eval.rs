//! `eval <stage>`: a trained run graded on a split.

use super::*;

pub(super) fn run(cli: &Cli, device: tch::Device) -> Result<()> {
    match &cli.command {
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
        Command::Eval(EvalCommand::Unified { run, n, scene }) => {
            if *n < 2 {
                bail!("--n must be at least 2");
            }
            let (m, out) = crate::stages::unified::evaluate(run, *n, *scene, device)?;
            print_metrics(&m);
            println!("wrote {}", out.join("metrics.json").display());
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
        Command::Eval(EvalCommand::T2i { run, split, limit }) => {
            print_metrics(&t2i::evaluate(run, *split, *limit, device)?);
            println!(
                "wrote {}",
                run.join(format!("eval_{}", split.name()))
                    .join("metrics.json")
                    .display()
            );
        }
        Command::Eval(EvalCommand::Align { run, side, steps }) => {
            let (m, out) =
                crate::stages::align_facts::place_fact_accuracy(run, *side, *steps, device)?;
            print_metrics(&m);
            println!("wrote {}", out.display());
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
        _ => unreachable!("app::run dispatches only this module's commands here"),
    }
    Ok(())
}
