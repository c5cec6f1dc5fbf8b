//! Run checkpoints: one safetensors file with the weights, the EMA shadow and the AdamW
//! moments, and a JSON file with the step, best metric, seed, tokenizer hash, the
//! architecture they belong to and the name of that weights file. Both are written
//! atomically, the weights under a new name first, the JSON last; only then are older
//! weights files removed. A crash or a full disk at any point therefore leaves the
//! previous checkpoint whole: the JSON always names a weights file that exists.

use crate::util::fsio::{atomic_write_with, read_json, write_json};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Tensor};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    pub format_version: u32,
    pub step: u64,
    pub seed: u64,
    pub best_metric: Option<f64>,
    pub best_step: Option<u64>,
    /// Evaluations since the best one (early stopping).
    pub stale_evals: u32,
    pub tokenizer_hash: String,
    /// The model config the weights were trained with.
    pub arch: serde_json::Value,
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// The weights file beside the JSON (older checkpoints: `<tag>.safetensors`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
}

fn dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// The JSON file of checkpoint `tag` (its presence means the checkpoint is complete).
pub fn meta_path(run_dir: &Path, tag: &str) -> PathBuf {
    dir(run_dir).join(format!("{tag}.json"))
}

/// The weights file a checkpoint's state names.
pub fn weights_path(run_dir: &Path, tag: &str, state: &TrainState) -> PathBuf {
    let name = state
        .weights
        .clone()
        .unwrap_or_else(|| format!("{tag}.safetensors"));
    dir(run_dir).join(name)
}

pub fn exists(run_dir: &Path, tag: &str) -> bool {
    meta_path(run_dir, tag).exists()
}

/// Writes the tensors under a new name, then the state that names them, then removes the
/// weights files the state no longer names.
pub fn save(
    run_dir: &Path,
    tag: &str,
    tensors: &[(String, Tensor)],
    state: &TrainState,
) -> Result<()> {
    if !crate::distributed::is_writer() {
        return Ok(()); // rank 0 writes for the whole data-parallel job
    }
    let name = format!("{tag}.{:08}.safetensors", state.step);
    let state = TrainState {
        weights: Some(name.clone()),
        ..state.clone()
    };
    atomic_write_with(&dir(run_dir).join(&name), |tmp| {
        Tensor::write_safetensors(tensors, tmp).map_err(|e| anyhow::anyhow!("{e}"))
    })?;
    write_json(&meta_path(run_dir, tag), &state)?;
    if let Ok(entries) = std::fs::read_dir(dir(run_dir)) {
        for e in entries.flatten() {
            let f = e.file_name().to_string_lossy().to_string();
            let stale =
                f != name && f.starts_with(&format!("{tag}.")) && f.ends_with(".safetensors");
            if stale {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// Reads a checkpoint's state and tensors.
pub fn load(run_dir: &Path, tag: &str) -> Result<(TrainState, HashMap<String, Tensor>)> {
    let state = load_state(run_dir, tag)?;
    let weights = weights_path(run_dir, tag, &state);
    let tensors = Tensor::read_safetensors(&weights)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("reading {}", weights.display()))?;
    Ok((state, tensors.into_iter().collect()))
}

/// Reads a checkpoint's state alone (step, tokenizer, weights file), checked as
/// [`load`] checks it, without reading its tensors.
pub fn load_state(run_dir: &Path, tag: &str) -> Result<TrainState> {
    // The tag names a file inside the run: nothing else may reach the path.
    if tag != "best" && tag != "latest" {
        bail!("checkpoint {tag:?}: give best or latest");
    }
    let meta = meta_path(run_dir, tag);
    if !meta.exists() {
        bail!(
            "no checkpoint {tag:?} in {} (expected {})",
            run_dir.display(),
            meta.display()
        );
    }
    let state: TrainState = read_json(&meta)?;
    if state.format_version > FORMAT_VERSION {
        bail!(
            "{} has checkpoint format {}, this ekphrasis reads up to {FORMAT_VERSION}; upgrade ekphrasis",
            meta.display(),
            state.format_version
        );
    }
    if state
        .weights
        .as_deref()
        .is_some_and(|w| w.contains('/') || w.contains('\\') || w.starts_with('.'))
    {
        bail!(
            "{}: weights file name {:?} leaves the checkpoint folder",
            meta.display(),
            state.weights
        );
    }
    Ok(state)
}

/// The model's variables as `model.<name>` tensors.
pub fn model_tensors(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (format!("model.{n}"), t))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Copies `model.<name>` (or `<prefix><name>`) tensors into `vs`, checking names and
/// shapes first so a mismatched checkpoint is refused before anything changes.
pub fn load_into(vs: &VarStore, saved: &HashMap<String, Tensor>, prefix: &str) -> Result<()> {
    load_part(vs, saved, prefix, &[""])
}

/// [`load_into`] for the variables whose names start with one of `parts` alone; the
/// others keep their values.
pub fn load_part(
    vs: &VarStore,
    saved: &HashMap<String, Tensor>,
    prefix: &str,
    parts: &[&str],
) -> Result<()> {
    let vars: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(name, _)| parts.iter().any(|p| name.starts_with(p)))
        .collect();
    let mut problems = vec![];
    for (name, var) in &vars {
        match saved.get(&format!("{prefix}{name}")) {
            None => problems.push(format!("missing {name}")),
            Some(t) if t.size() != var.size() => problems.push(format!(
                "{name}: checkpoint {:?} vs model {:?}",
                t.size(),
                var.size()
            )),
            _ => {}
        }
    }
    if !problems.is_empty() {
        let shown: Vec<_> = problems.iter().take(5).cloned().collect();
        bail!(
            "checkpoint does not fit the model ({} problems): {}",
            problems.len(),
            shown.join("; ")
        );
    }
    tch::no_grad(|| {
        for (name, var) in vars {
            var.shallow_clone()
                .copy_(&saved[&format!("{prefix}{name}")]);
        }
    });
    Ok(())
}

/// Loads a finished run's weights into `vs` for inference: checkpoint `tag`, its EMA
/// shadow when the run kept one. With `tokenizer_hash`, a run trained with another
/// tokenizer.json is refused before anything is loaded.
pub fn load_weights(
    vs: &VarStore,
    run_dir: &Path,
    tag: &str,
    tokenizer_hash: Option<&str>,
) -> Result<TrainState> {
    let (state, tensors) = load(run_dir, tag)?;
    if let Some(h) = tokenizer_hash {
        if state.tokenizer_hash != h {
            bail!(
                "{}: trained with a different tokenizer.json than its dataset holds now",
                run_dir.display()
            );
        }
    }
    let prefix = if tensors.keys().any(|k| k.starts_with("ema.")) {
        "ema."
    } else {
        "model."
    };
    load_into(vs, &tensors, prefix)?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn a_part_loads_without_the_variables_it_does_not_name() {
        let vs = VarStore::new(Device::Cpu);
        let text = vs.root().sub("text").zeros("w", &[2]);
        let generator = vs.root().sub("generator").zeros("w", &[3]);
        // A first phase saved before the generator grew a variable it now lacks.
        let saved = HashMap::from([(
            "model.text.w".to_string(),
            Tensor::ones([2], (Kind::Float, Device::Cpu)),
        )]);
        let err = load_into(&vs, &saved, "model.").unwrap_err().to_string();
        assert!(err.contains("missing generator.w"), "{err}");
        load_part(&vs, &saved, "model.", &["text."]).unwrap();
        assert_eq!(text.sum(Kind::Float).double_value(&[]), 2.0);
        assert_eq!(generator.sum(Kind::Float).double_value(&[]), 0.0);
        // The part's own variables are still checked.
        let err = load_part(&vs, &saved, "model.", &["generator."])
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing generator.w"), "{err}");
    }
}
