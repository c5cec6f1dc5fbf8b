//! Value checks a config passes before any model is built: sizes, counts, ranges,
//! fractions, learning rates, channel lists and width ÷ heads, by field name wherever
//! they stand; and a bound on bracket nesting, checked before the YAML parser runs.

use anyhow::{bail, Result};
use serde_yaml::Value;

/// Sizes that must be whole numbers from 1 up to a bound, by field name wherever they
/// stand in a config: a zero or negative width, or one that asks for terabytes, is
/// refused here, before any model allocates. (`vocab_size` is not among them: configs
/// hold 0 there until the tokenizer fills it in.)
const SIZES: [(&str, i64); 22] = [
    ("heads", 1024),
    ("dim", 65_536),
    ("mlp", 262_144),
    ("layers", 1024),
    ("max_len", 16_384),
    ("image_size", 2048),
    ("embed_dim", 65_536),
    ("feature_dim", 65_536),
    ("z_dim", 65_536),
    ("latent_dim", 65_536),
    ("hidden", 65_536),
    ("memory_tokens", 4096),
    ("batch_size", 65_536),
    ("steps", 1_000_000_000),
    ("eval_every", 1_000_000_000),
    ("timesteps", 100_000),
    ("sample_steps", 100_000),
    ("samples", 1_000_000),
    ("subset", 1_000_000),
    ("eval_subset", 1_000_000),
    ("stem", 64),
    ("attribute_hidden", 65_536),
];

/// Counts that may be zero, with an upper bound (per field name, as [`SIZES`]).
const COUNTS: [(&str, i64); 6] = [
    ("warmup", 1_000_000_000),
    ("beta_warmup", 1_000_000_000),
    ("patience", 1_000_000),
    ("extra_renders", 1_000_000),
    ("augment_shift", 1024),
    ("no_repeat_ngram", 16),
];

/// The largest classifier-free guidance scale accepted (published samplers use 1–10).
pub const MAX_GUIDANCE: f64 = 100.0;

/// Numbers that must lie in a closed range.
const RANGES: [(&str, f64, f64); 5] = [
    ("guidance", 0.0, MAX_GUIDANCE),
    ("epochs", 0.001, 1_000_000.0),
    ("eta", 0.0, 1.0),
    ("adam_eps", 1e-12, 1.0),
    ("augment_crop", 0.1, 1.0),
];

/// Fractions that must lie in [0, 1).
const FRACTIONS: [&str; 5] = ["dropout", "caption_dropout", "ema", "beta1", "beta2"];

/// Checks every known numeric field of a config tree (see [`SIZES`], [`FRACTIONS`],
/// learning rates, channel lists, and width ÷ heads), naming the first bad one.
pub fn check_values(v: &Value, at: &str) -> Result<()> {
    let Value::Mapping(map) = v else {
        return Ok(());
    };
    for (k, x) in map {
        let Some(key) = k.as_str() else { continue };
        let path = if at.is_empty() {
            key.to_string()
        } else {
            format!("{at}.{key}")
        };
        if x.as_f64().is_some_and(|f| !f.is_finite()) {
            // No setting means anything at infinity or NaN; they would poison a loss.
            bail!("{path} = {}: give a finite number", show(x));
        }
        if let Some((_, max)) = SIZES.iter().find(|(n, _)| *n == key) {
            match x.as_i64() {
                Some(n) if (1..=*max).contains(&n) => {}
                _ if x.is_null() => {}
                _ => bail!("{path} = {}: give a whole number from 1 to {max}", show(x)),
            }
        } else if let Some((_, max)) = COUNTS.iter().find(|(n, _)| *n == key) {
            match x.as_i64() {
                Some(n) if (0..=*max).contains(&n) => {}
                _ if x.is_null() => {}
                _ => bail!("{path} = {}: give a whole number from 0 to {max}", show(x)),
            }
        } else if let Some((_, lo, hi)) = RANGES.iter().find(|(n, _, _)| *n == key) {
            match x.as_f64() {
                Some(f) if (*lo..=*hi).contains(&f) => {}
                _ if x.is_null() => {}
                _ => bail!("{path} = {}: give a number from {lo} to {hi}", show(x)),
            }
        } else if FRACTIONS.contains(&key) {
            match x.as_f64() {
                Some(f) if (0.0..1.0).contains(&f) => {}
                _ if x.is_null() => {}
                _ => bail!("{path} = {}: give a number in [0, 1)", show(x)),
            }
        } else if key == "lr" {
            match x.as_f64() {
                // No upper bound: a huge rate is a legitimate way to test divergence.
                Some(f) if f > 0.0 && f.is_finite() => {}
                _ => bail!("{path} = {}: give a positive learning rate", show(x)),
            }
        } else if key.ends_with("channels") {
            let width = |c: &Value| c.as_i64().is_some_and(|c| (1..=65_536).contains(&c));
            let ok = match x {
                Value::Sequence(s) => !s.is_empty() && s.iter().all(width),
                Value::Null => true,
                one => width(one),
            };
            if !ok {
                bail!(
                    "{path} = {}: give whole numbers from 1 to 65536 (a non-empty list for a list)",
                    show(x)
                );
            }
        }
        check_values(x, &path)?;
    }
    if let (Some(dim), Some(heads)) = (
        map.get("dim").and_then(Value::as_i64),
        map.get("heads").and_then(Value::as_i64),
    ) {
        if dim % heads != 0 {
            let at = if at.is_empty() {
                String::new()
            } else {
                format!("{at}.")
            };
            bail!("{at}dim {dim} must divide into {at}heads {heads} equal parts");
        }
    }
    Ok(())
}

fn show(v: &Value) -> String {
    serde_yaml::to_string(v)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Deepest `[`/`{` nesting a config may have; the YAML parser takes quadratic time on
/// deeper text, and no config needs more than a handful of levels.
const MAX_NESTING: usize = 64;

/// Refuses flow collections nested deeper than [`MAX_NESTING`] before the parser sees
/// them (brackets inside quotes and comments are not counted).
pub(super) fn check_nesting(text: &str) -> Result<()> {
    let mut depth = 0usize;
    for (n, line) in text.lines().enumerate() {
        let mut quote = None::<char>;
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '#') => break,
                (None, '"' | '\'') => quote = Some(c),
                (None, '[' | '{') => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        bail!(
                            "line {}: brackets nested deeper than {MAX_NESTING} levels",
                            n + 1
                        );
                    }
                }
                (None, ']' | '}') => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adams_epsilon_must_be_positive_and_at_most_one() {
        let tree = |eps: &str| {
            serde_yaml::from_str::<Value>(&format!("train: {{adam_eps: {eps}}}")).unwrap()
        };
        assert!(check_values(&tree("1.0e-6"), "").is_ok());
        for bad in ["0", "-1.0e-8", "2.0"] {
            let e = check_values(&tree(bad), "").unwrap_err().to_string();
            assert!(e.contains("train.adam_eps"), "{bad}: {e}");
        }
    }
}
