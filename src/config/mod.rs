//! Experiment configs: YAML files deserialised into serde structs that refuse unknown
//! keys, with `--set a.b=c` overrides applied on top.
//!
//! Errors in the file name the file, line and field (serde_yaml reports them while
//! parsing the original text); errors an override causes name the override.

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_yaml::Value;
use std::path::Path;

mod checks;
pub mod retired;

use checks::check_nesting;
pub use checks::{check_values, MAX_GUIDANCE};

/// Reads `path` as a `T`, then applies `overrides` (`a.b=c`, the value parsed as YAML).
pub fn load<T: DeserializeOwned>(path: &Path, overrides: &[String]) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    check_nesting(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut value: Value =
        serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    // First pass on the text itself, so errors carry the file's own line numbers.
    let parsed = match serde_yaml::from_str::<T>(&text) {
        Ok(t) => Some(t),
        // An older run's config may still hold a removed option; it loads through the
        // tree once that option is dropped (see `retired`).
        Err(e) => match retired::drop_refused(&mut value, "", &e.to_string()) {
            Ok(true) => None,
            Ok(false) => bail!("{}: {e}", path.display()),
            Err(r) => bail!("{}: {r}", path.display()),
        },
    };
    let place = || {
        if overrides.is_empty() {
            path.display().to_string()
        } else {
            format!(
                "{} after --set {}",
                path.display(),
                overrides.join(" --set ")
            )
        }
    };
    for o in overrides {
        apply_override(&mut value, o)?;
    }
    check_values(&value, "").map_err(|e| anyhow::anyhow!("{}: {e}", place()))?;
    match parsed {
        Some(t) if overrides.is_empty() => Ok(t),
        _ => retired::from_value(value, "").map_err(|e| anyhow::anyhow!("{}: {e}", place())),
    }
}

/// Sets one dotted key; intermediate mappings are created as needed.
pub fn apply_override(root: &mut Value, assignment: &str) -> Result<()> {
    let Some((key, raw)) = assignment.split_once('=') else {
        bail!("--set {assignment:?}: expected key.path=value");
    };
    let new: Value = serde_yaml::from_str(raw)
        .with_context(|| format!("--set {assignment:?}: value is not YAML"))?;
    let mut node = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            bail!("--set {assignment:?}: empty key segment");
        }
        let Value::Mapping(map) = node else {
            bail!(
                "--set {assignment:?}: {} is not a section",
                parts[..i].join(".")
            );
        };
        let k = Value::String(part.to_string());
        if i + 1 == parts.len() {
            map.insert(k, new);
            return Ok(());
        }
        node = map
            .entry(k)
            .or_insert_with(|| Value::Mapping(Default::default()));
    }
    unreachable!("split always yields a segment")
}

pub fn to_yaml<T: Serialize>(cfg: &T) -> Result<String> {
    Ok(serde_yaml::to_string(cfg)?)
}

/// For `skip_serializing_if`: a field at its default (0, off) is left out of a run's
/// config.yaml, so runs written before the field existed keep the same config.
pub fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        lr: f64,
    }
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        seed: u64,
        train: Inner,
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn overrides_apply_and_errors_name_file_line_and_field() {
        let f = write("seed: 1\ntrain:\n  lr: 0.1\n");
        let c: Cfg = load(f.path(), &["train.lr=0.5".into()]).unwrap();
        assert_eq!((c.seed, c.train.lr), (1, 0.5));

        let bad = write("seed: 1\ntrain:\n  lr: 0.1\n  lrr: 2\n");
        let e = load::<Cfg>(bad.path(), &[]).unwrap_err().to_string();
        assert!(
            e.contains("lrr")
                && e.contains("line 4")
                && e.contains(&bad.path().display().to_string()),
            "{e}"
        );

        let wrong_type = write("seed: x\ntrain:\n  lr: 0.1\n");
        let e = load::<Cfg>(wrong_type.path(), &[]).unwrap_err().to_string();
        assert!(e.contains("seed") && e.contains("line 1"), "{e}");

        let e = load::<Cfg>(f.path(), &["train.nope=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("--set"), "{e}");
        let e = load::<Cfg>(Path::new("/no/such.yaml"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("/no/such.yaml"), "{e}");
    }
}
