//! Stages: each one joins a model to the data, the runner and the evaluators, and is
//! what a CLI command calls.

pub mod bench;
pub mod captioner;
pub mod cycle;
pub mod evaluators;
pub mod invertible;
pub mod invertible_functions;
pub mod t2i;
pub mod unified;

use anyhow::Result;
use std::path::Path;

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
    crate::config::load(&cfg_path, &[])
}
