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
    train_tokenizer(&data, 256);
    data
}

/// Trains a 300-token tokenizer on the prepared dataset `data` (rows of `max_len`).
pub fn train_tokenizer(data: &Path, max_len: usize) {
    let tok = data.with_extension("tokenizer.yaml");
    std::fs::write(
        &tok,
        format!("vocab_size: 300\nmin_frequency: 1\nmax_len: {max_len}\n"),
    )
    .unwrap();
    let d = data.to_str().unwrap();
    let c = tok.to_str().unwrap();
    let (ok, _, err) = run(&[
        "tokenizer",
        "train",
        "--data",
        d,
        "-c",
        c,
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
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
  attribute_weight: 0.5
  attribute_hidden: 16
  attribute_context: true
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

/// Writes `text` to `dir/name`; returns the path as a string.
pub fn write(dir: &Path, name: &str, text: String) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// A tiny contrastive-model config.
pub fn clip_cfg(dir: &Path, data: &Path) -> String {
    write(dir, "clip.yaml", format!(
        "data: {}\nseed: 0\nmodel:\n  image_size: 32\n  channels: [8, 16]\n  feature_dim: 32\n  embed_dim: 16\n  text: {{dim: 32, layers: 1, heads: 2, mlp: 64, max_len: 256}}\ntrain: {{steps: 4, batch_size: 8, lr: 1.0e-3, warmup: 1, eval_every: 4}}\neval_subset: 4\nbest: {{name: mean_r1, higher_is_better: true}}\naugment_shift: 2\n",
        data.display()
    ))
}

/// A tiny probe config.
pub fn probe_cfg(dir: &Path, data: &Path) -> String {
    write(dir, "probe.yaml", format!(
        "data: {}\nseed: 0\nmodel: {{image_size: 32, channels: [8, 16], hidden: 16}}\ntrain: {{steps: 4, batch_size: 8, lr: 1.0e-3, warmup: 1, eval_every: 4}}\neval_subset: 4\nextra_renders: 16\nbest: {{name: attr_accuracy, higher_is_better: true}}\n",
        data.display()
    ))
}

/// A tiny VAE text → image config graded by `dir/clip_run` and `dir/probe_run`.
pub fn t2i_cfg(dir: &Path, data: &Path) -> String {
    let clip = dir.join("clip_run");
    let probe = dir.join("probe_run");
    write(dir, "t2i.yaml", format!(
        "data: {}\nseed: 0\nmodel:\n  kind: vae\n  image_size: 32\n  text: {{dim: 32, layers: 1, heads: 2, mlp: 64, max_len: 256}}\n  generator: {{z_dim: 8, channels: [32, 16, 8], attention_max_side: 8}}\n  encoder_channels: [8, 16]\n  beta_warmup: 2\ntrain: {{steps: 4, batch_size: 8, lr: 1.0e-3, warmup: 1, eval_every: 4}}\neval: {{clip: {}, probe: {}, subset: 4}}\nbest: {{name: r_precision, higher_is_better: true}}\n",
        data.display(), clip.display(), probe.display()
    ))
}

/// The tiny VAE of [`t2i_cfg`] painting from the facts its text side reads
/// (`model.facts`) with cell coordinates, the text side pretrained first for three steps.
pub fn t2i_facts_cfg(dir: &Path, data: &Path) -> String {
    let vae = std::fs::read_to_string(t2i_cfg(dir, data)).unwrap();
    let facts =
        vae.replace(
            "max_len: 256}\n",
            "max_len: 256, local_layers: 1}\n  facts: {}\n",
        )
        // As the demo VAE: each block told where its pixels lie in their cells.
        .replace(
            "attention_max_side: 8}",
            "attention_max_side: 8, cell_coordinates: true}",
        ) + "pretrain: {train: {steps: 3, batch_size: 8, lr: 1.0e-3, warmup: 1, eval_every: 3}}\n";
    assert!(facts.contains("facts: {}") && facts.contains("cell_coordinates"));
    write(dir, "t2i_facts.yaml", facts)
}

/// The first image file of a dataset folder.
pub fn first_image(data: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data.join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.remove(0)
}

/// Trains `stage` from `cfg` into `run` on the CPU; fails the test on an error.
pub fn train_ok(stage: &str, cfg: &str, run_dir: &Path) {
    let r = run_dir.to_str().unwrap();
    let (ok, _, err) = run(&["train", stage, "-c", cfg, "--run", r, "--device", "cpu"]);
    assert!(ok, "train {stage}: {err}");
}

/// Sends SIGINT (a Ctrl-C) to a child process.
pub fn interrupt(pid: u32) {
    let status = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The fuzzers' time budget per target: `EKPHRASIS_FUZZ_SECONDS` (2 s in `make test`).
pub fn fuzz_budget() -> std::time::Duration {
    let s: f64 = std::env::var("EKPHRASIS_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    std::time::Duration::from_secs_f64(s)
}
