//! What a resumed run must agree with: the saved architecture, and the config it
//! started with (only `train.steps` may grow).

use super::*;

/// Refuses to resume when the saved architecture differs from the configured one.
pub(super) fn check_arch(
    saved: &serde_json::Value,
    now: &serde_json::Value,
    run_dir: &Path,
) -> Result<()> {
    if saved != now {
        bail!(
            "cannot resume {}: the checkpoint was trained with model config\n  {saved}\nbut the config now says\n  {now}\nstart a new --run or restore the old model section",
            run_dir.display()
        );
    }
    Ok(())
}

/// A resumed run must continue the config it started with; only `train.steps` may grow
/// (to train a finished run further). Anything else would make the checkpoint and
/// `config.yaml` disagree.
pub(super) fn check_same_config(run_dir: &Path, new_yaml: &str) -> Result<()> {
    let path = run_dir.join("config.yaml");
    let Ok(old_yaml) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let strip = |text: &str| -> Option<serde_yaml::Value> {
        let mut v: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
        if let Some(t) = v.get_mut("train").and_then(|t| t.as_mapping_mut()) {
            t.remove("steps");
        }
        crate::config::retired::drop_all_off(&mut v);
        Some(v)
    };
    let (Some(old), Some(new)) = (strip(&old_yaml), strip(new_yaml)) else {
        return Ok(());
    };
    if let Some(key) = first_difference(&old, &new, "") {
        bail!(
            "cannot resume {}: {key} differs from the run's {} (resume with the same config, or start another --run)",
            run_dir.display(),
            path.display()
        );
    }
    Ok(())
}

/// The dotted path of the first value that differs between two YAML trees.
pub(super) fn first_difference(
    a: &serde_yaml::Value,
    b: &serde_yaml::Value,
    at: &str,
) -> Option<String> {
    use serde_yaml::Value;
    match (a, b) {
        (Value::Mapping(x), Value::Mapping(y)) => {
            let keys = x.keys().chain(y.keys().filter(|k| !x.contains_key(*k)));
            for k in keys {
                let name = k.as_str().map_or_else(|| format!("{k:?}"), str::to_string);
                let path = if at.is_empty() {
                    name
                } else {
                    format!("{at}.{name}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => {
                        if let Some(d) = first_difference(p, q, &path) {
                            return Some(d);
                        }
                    }
                    _ => return Some(path),
                }
            }
            None
        }
        _ if a == b => None,
        _ => Some(if at.is_empty() {
            "the config".into()
        } else {
            at.into()
        }),
    }
}
