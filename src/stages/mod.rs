//! Stages: each one joins a model to the data, the runner and the evaluators, and is
//! what a CLI command calls.

pub mod align;
pub mod align_facts;
pub mod bench;
pub mod captioner;
pub mod cycle;
pub mod evaluators;
pub mod invertible;
pub mod invertible_functions;
pub mod t2i;
pub mod unified;

use anyhow::{Context, Result};
use std::path::Path;

/// The first phase of a two-phase stage (the captioner's encoder, the facts VAE's text
/// side): what it is called, where it runs, what it keeps its best checkpoint by.
pub struct FirstPhase<'a> {
    /// The subfolder of the run it lives in.
    pub folder: &'a str,
    /// What the progress lines call it ("captioner encoder").
    pub name: &'a str,
    /// The validation metric (higher is better) of its best checkpoint.
    pub metric: &'a str,
    /// Name prefixes of the variables it trains. A finished phase is reloaded for
    /// these alone, so a second phase with another architecture (a new generator
    /// option) can start from it without training it again.
    pub trains: &'a [&'a str],
    pub train: &'a crate::train::runner::TrainConfig,
    /// Its section of the config, kept beside its checkpoints.
    pub config_yaml: String,
}

/// Runs a first phase in `<run>/<folder>` (resuming it where it stopped), or, on
/// `resume` once it has finished, only loads its weights into `vs`. `build` makes the
/// trainable phase, and is not called when the phase is only reloaded.
pub fn run_first_phase<P: crate::train::runner::Trainable>(
    vs: &tch::nn::VarStore,
    opts: &crate::train::runner::RunOptions,
    resume: bool,
    phase: FirstPhase,
    build: impl FnOnce() -> Result<P>,
) -> Result<()> {
    use crate::train::{checkpoint, runner};
    let dir = opts.run_dir.join(phase.folder);
    if resume && dir.join("done.json").exists() {
        let (_, tensors) = checkpoint::load(&dir, "latest")?;
        return checkpoint::load_part(vs, &tensors, "model.", phase.trains);
    }
    let mut trainable = build()?;
    let phase_opts = runner::RunOptions {
        run_dir: dir.clone(),
        resume: resume && checkpoint::exists(&dir, "latest"),
        best: runner::BestMetric {
            name: phase.metric.into(),
            higher_is_better: true,
        },
        config_yaml: phase.config_yaml,
        arch: opts.arch.clone(),
        tokenizer_hash: opts.tokenizer_hash.clone(),
        seed: opts.seed,
    };
    crate::util::progress::note(format!(
        "{}: {} steps of {}",
        phase.name, phase.train.steps, phase.train.batch_size
    ));
    let summary = runner::run(&mut trainable, phase.train, &phase_opts)?;
    write_done(&dir, &summary)?;
    crate::util::progress::note(format!(
        "{} trained: {} steps in {:.1} s",
        phase.name, summary.steps, summary.seconds
    ));
    Ok(())
}

/// Writes `runs/<stage>/<run>/done.json` with the run's last metrics; `make` depends on it.
pub fn write_done(run_dir: &Path, summary: &crate::train::runner::RunSummary) -> Result<()> {
    let v = serde_json::json!({
        "steps": summary.steps,
        "seconds": summary.seconds,
        "best_metric": summary.best_metric,
        "best_step": summary.best_step,
        "stopped_early": summary.stopped_early,
        "metrics": summary.last_metrics,
    });
    crate::util::fsio::write_json(&run_dir.join("done.json"), &v)
}

/// Reads the resolved config a run folder was trained with; `stage` names the stage in
/// the error when the folder is not such a run.
pub fn run_config<T: serde::de::DeserializeOwned>(run_dir: &Path, stage: &str) -> Result<T> {
    let cfg_path = run_dir.join("config.yaml");
    if !cfg_path.exists() {
        anyhow::bail!(
            "{} is not a {stage} run (no config.yaml)",
            run_dir.display()
        );
    }
    crate::config::load(&cfg_path, &[]).with_context(|| {
        format!(
            "{} does not hold a {stage} run (its config.yaml is another stage's, or damaged)",
            run_dir.display()
        )
    })
}

/// What every training stage opens first, before any image is loaded or any model
/// built: the dataset; the options of `scene_options` refused when it has no scene facts;
/// and its tokenizer, with the tokenized captions checked to exist.
pub fn open_training_data(
    data: &Path,
    scene_options: &[&str],
) -> Result<(
    crate::data::layout::Dataset,
    crate::data::tokenizer::TextTokenizer,
)> {
    let ds = crate::data::layout::Dataset::open(data)?;
    refuse_scene_options(&ds, scene_options)?;
    for (path, what) in [
        (ds.tokenizer_path(), "tokenizer.json"),
        (ds.tokenized_path(), "tokenized_captions.json"),
    ] {
        if !path.exists() {
            anyhow::bail!(
                "{} has no {what}; run `ekphrasis tokenizer train --data {}` first",
                data.display(),
                data.display()
            );
        }
    }
    let tok = crate::data::tokenizer::TextTokenizer::load(&ds.tokenizer_path())?;
    Ok((ds, tok))
}

/// Refuses, before anything is built or loaded, the options of `options` (those a
/// stage config has set that read the embedded set's scene facts) on a dataset
/// without those facts, naming the first.
fn refuse_scene_options(ds: &crate::data::layout::Dataset, options: &[&str]) -> Result<()> {
    match options.first() {
        Some(first) => ds.require_scene_facts(first),
        None => Ok(()),
    }
}
