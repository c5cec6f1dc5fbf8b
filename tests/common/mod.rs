//! Test helpers: a tiny embedded dataset with its tokenizer, tiny configs, and a way to
//! run the `ekphrasis` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ekphrasis"))
}

/// Runs the binary with `args`; returns (exit success, stdout, stderr).
pub fn run(args: &[&str]) -> (bool, String, String) {
    let out: Output = bin().args(args).output().expect("running ekphrasis");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Fails unless the command failed cleanly: non-zero exit, an `error:` line, no panic.
pub fn assert_clean_error(args: &[&str], expect: &str) -> String {
    let (ok, _, err) = run(args);
    assert!(!ok, "expected failure for {args:?}");
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    assert!(err.contains("error:"), "no error line for {args:?}: {err}");
    assert!(
        err.contains(expect),
        "expected {expect:?} in error for {args:?}: {err}"
    );
    err
}

/// A 40-image, 32-px embedded dataset with a 300-token tokenizer, in `dir/data`.
pub fn tiny_dataset(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let d = data.to_str().unwrap();
    let (ok, _, err) = run(&[
        "data", "synth", "--out", d, "--n", "40", "--size", "32", "--device", "cpu",
    ]);
    assert!(ok, "{err}");
    let tok = dir.join("tokenizer.yaml");
    std::fs::write(&tok, "vocab_size: 300\nmin_frequency: 1\nmax_len: 256\n").unwrap();
    let (ok, _, err) = run(&[
        "tokenizer",
        "train",
        "--data",
        d,
        "-c",
        tok.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    data
}

/// A tiny captioner config for `data`.
pub fn tiny_captioner_config(dir: &Path, data: &Path, steps: u64) -> PathBuf {
    let cfg = format!(
        "data: {}
seed: 3
model:
  encoder: cnn
  channels: [8, 16]
  dim: 32
  layers: 1
  heads: 2
  mlp: 64
  max_len: 256
  dropout: 0.1
  image_size: 32
train:
  steps: {steps}
  batch_size: 4
  lr: 3.0e-3
  warmup: 2
  eval_every: 2
  log_every: 1
  ema: 0.9
loss:
  label_smoothing: 0.1
  sampling_start: 0.5
  sampling_fraction: 0.2
augment_shift: 1
eval:
  subset: 2
  decode:
    strategy: greedy
    max_tokens: 12
best:
  name: loss
",
        data.display()
    );
    let path = dir.join("captioner.yaml");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// The Python of the venv with torch/tokenizers/tensorboard, when the Makefile set it.
pub fn python() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("EKPHRASIS_PYTHON")?);
    p.exists().then_some(p)
}
