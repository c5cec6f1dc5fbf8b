//! Options that were removed after they gave no gain (docs/results.md, "what was
//! tried"). Runs and exports made before their removal still hold them in their config,
//! almost always at the value that turned them off: those are dropped so the run still
//! loads; any other value is refused by name, since the model it describes no longer
//! exists.

use anyhow::{bail, Result};
use serde_yaml::Value;

/// One removed option: its dotted path in a stage config, the value that meant "off",
/// and what it was.
struct Retired {
    path: &'static str,
    off: fn(&Value) -> bool,
    what: &'static str,
}

fn zero(v: &Value) -> bool {
    v.as_f64() == Some(0.0)
}
fn no(v: &Value) -> bool {
    v.as_bool() == Some(false)
}
fn standard(v: &Value) -> bool {
    v.as_str() == Some("standard")
}

const RETIRED: [Retired; 5] = [
    Retired {
        path: "model.contrastive_weight",
        off: zero,
        what: "the captioner's CoCa-style contrastive loss",
    },
    Retired {
        path: "model.attribute_weight",
        off: zero,
        what: "the t2i text side's auxiliary attribute loss",
    },
    Retired {
        path: "model.prior",
        off: standard,
        what: "the VAE's learned prior p(z | t)",
    },
    Retired {
        path: "model.generator.layout_grid",
        off: zero,
        what: "the generator's layout read off the caption",
    },
    Retired {
        path: "model.facts.teacher_forcing",
        off: no,
        what: "training the generator on the true facts",
    },
];

/// The field name in a serde "unknown field `name`" message.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.split("unknown field `").nth(1)?;
    rest.split('`').next()
}

/// The mapping that holds the last segment of `path` below `root`, and that segment.
fn parent<'a>(
    root: &'a mut Value,
    path: &'a str,
) -> Option<(&'a mut serde_yaml::Mapping, &'a str)> {
    let (dirs, key) = path.rsplit_once('.').unwrap_or(("", path));
    let mut node = root;
    for part in dirs.split('.').filter(|p| !p.is_empty()) {
        node = node.get_mut(part)?;
    }
    Some((node.as_mapping_mut()?, key))
}

/// After serde refused `message` on `root` (a tree rooted at `at`, e.g. "" for a whole
/// stage config or "model" for its model section): drops the retired option it names
/// if it is off, refuses it by name if it is on, and says whether anything was dropped
/// (then parse again).
pub fn drop_refused(root: &mut Value, at: &str, message: &str) -> Result<bool> {
    let Some(field) = unknown_field(message) else {
        return Ok(false);
    };
    for r in &RETIRED {
        let Some(rel) = (if at.is_empty() {
            Some(r.path)
        } else {
            r.path.strip_prefix(at).and_then(|p| p.strip_prefix('.'))
        }) else {
            continue;
        };
        if rel.rsplit('.').next() != Some(field) {
            continue;
        }
        let Some((map, key)) = parent(root, rel) else {
            continue;
        };
        let Some(value) = map.get(key) else { continue };
        if !(r.off)(value) {
            bail!(
                "{} was removed ({}: no gain, see docs/results.md); this config asks for it, and the model it describes can no longer be built",
                r.path,
                r.what
            );
        }
        map.remove(key);
        return Ok(true);
    }
    Ok(false)
}

/// Drops every retired option that is off, wherever it stands (for comparing an old
/// run's config with a new one: both lose the same keys).
pub fn drop_all_off(root: &mut Value) {
    for r in &RETIRED {
        if let Some((map, key)) = parent(root, r.path) {
            if map.get(key).is_some_and(r.off) {
                map.remove(key);
            }
        }
    }
}

/// Deserialises `value` (rooted at `at`), dropping the retired options serde refuses.
pub fn from_value<T: serde::de::DeserializeOwned>(mut value: Value, at: &str) -> Result<T> {
    loop {
        match serde_yaml::from_value(value.clone()) {
            Ok(t) => return Ok(t),
            Err(e) => {
                if !drop_refused(&mut value, at, &e.to_string())? {
                    return Err(e.into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Model {
        kind: String,
    }
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Stage {
        model: Model,
    }

    fn tree(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn an_old_config_with_its_retired_options_off_still_loads() {
        let old = "model: {kind: vae, attribute_weight: 0.0, prior: standard, facts: null}";
        let e = from_value::<Stage>(tree(old), "").unwrap_err().to_string();
        // `facts` is not retired: serde's own refusal comes through.
        assert!(e.contains("facts"), "{e}");
        let old = "model: {kind: vae, attribute_weight: 0.0, prior: standard}";
        assert_eq!(
            from_value::<Stage>(tree(old), "").unwrap().model.kind,
            "vae"
        );
        // An export's model section, rooted at `model`.
        let m = from_value::<Model>(tree("{kind: gan, contrastive_weight: 0}"), "model");
        assert_eq!(m.unwrap().kind, "gan");
    }

    #[test]
    fn a_retired_option_that_is_on_is_refused_by_name() {
        let e = from_value::<Stage>(tree("model: {kind: vae, prior: learned}"), "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.prior was removed"), "{e}");
        let e = from_value::<Stage>(tree("model: {kind: vae, attribute_weight: 0.5}"), "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.attribute_weight was removed"), "{e}");
    }

    #[test]
    fn comparing_configs_drops_only_what_is_off() {
        let mut v = tree("model: {kind: x, attribute_weight: 0.0, generator: {layout_grid: 3}}");
        drop_all_off(&mut v);
        assert_eq!(v, tree("model: {kind: x, generator: {layout_grid: 3}}"));
    }

    #[test]
    fn an_old_runs_file_loads_when_its_retired_options_are_off() {
        let file = |text: &str| {
            let f = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(f.path(), text).unwrap();
            f
        };
        let old = file("model:\n  kind: vae\n  prior: standard\n  attribute_weight: 0.0\n");
        let c: Stage = crate::config::load(old.path(), &["model.kind=gan".into()]).unwrap();
        assert_eq!(c.model.kind, "gan");
        let on = file("model:\n  kind: vae\n  prior: learned\n");
        let e = crate::config::load::<Stage>(on.path(), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.prior was removed") && e.contains(&on.path().display().to_string()),
            "{e}"
        );
    }
}
