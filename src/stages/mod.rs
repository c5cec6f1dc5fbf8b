//! Stages: each one joins a model to the data, the runner and the evaluators, and is
//! what a CLI command calls.

pub mod captioner;
pub mod cycle;
pub mod evaluators;
pub mod t2i;

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
