//! Data-parallel training through c10d (Gloo on the CPU): two ranks with half the
//! global batch each must train the same weights as one process with all of it, under
//! a plain environment launch and under `torchrun --no-python`; a rank that dies ends
//! the job with an error, not a hang.

mod common;

use common::{bin, tiny_dataset};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tch::Tensor;

/// A facts-free captioner with everything that could make ranks disagree: BatchNorm in
/// the CNN encoder, dropout, shift augmentation, a token-mean loss over captions of
/// different lengths, EMA.
fn captioner_config(dir: &Path, data: &Path, steps: u64) -> PathBuf {
    let text = format!(
        "data: {}
seed: 5
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
  batch_size: 8
  lr: 3.0e-3
  warmup: 1
  eval_every: {steps}
  log_every: 1
  ema: 0.9
loss:
  label_smoothing: 0.1
augment_shift: 1
eval:
  subset: 2
  decode:
    strategy: greedy
    max_tokens: 8
best:
  name: loss
",
        data.display()
    );
    let path = dir.join("ddp-captioner.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn train_args(stage: &str, cfg: &Path, run: &Path) -> Vec<String> {
    let s = |p: &Path| p.to_str().unwrap().to_string();
    vec![
        "train".into(),
        stage.into(),
        "-c".into(),
        s(cfg),
        "--run-dir".into(),
        s(run),
        "--device".into(),
        "cpu".into(),
    ]
}

/// Rank `rank` of `world`, launched by hand with torchrun's environment variables.
fn spawn_rank(args: &[String], rank: usize, world: usize, port: u16, timeout_s: u64) -> Child {
    let timeout = timeout_s.to_string();
    spawn_rank_with(
        args,
        rank,
        world,
        port,
        &[("EKPHRASIS_DIST_TIMEOUT", &timeout)],
    )
}

/// Waits for `child` at most `limit`; kills it and fails the test past that.
fn wait_within(mut child: Child, limit: Duration, what: &str) -> (bool, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            return (status.success(), text);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{what} still running after {limit:?}: a hang");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn latest_weights(run: &Path) -> HashMap<String, Tensor> {
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoints/latest.json")).unwrap(),
    )
    .unwrap();
    let file = run
        .join("checkpoints")
        .join(meta["weights"].as_str().unwrap());
    Tensor::read_safetensors(&file)
        .unwrap()
        .into_iter()
        .collect()
}

/// The largest absolute difference between two runs' weights, buffers and optimizer
/// moments, with the name where it occurs.
fn largest_difference(a: &Path, b: &Path) -> (f64, String) {
    let (wa, wb) = (latest_weights(a), latest_weights(b));
    assert_eq!(
        wa.len(),
        wb.len(),
        "the two checkpoints hold different tensors"
    );
    let mut worst = (0.0, String::new());
    for (name, ta) in &wa {
        let tb = wb.get(name).unwrap_or_else(|| panic!("{name} missing"));
        let d = (ta.to_kind(tch::Kind::Double) - tb.to_kind(tch::Kind::Double))
            .abs()
            .max()
            .double_value(&[]);
        if d > worst.0 {
            worst = (d, name.clone());
        }
    }
    worst
}

/// Prints the difference (a `DDP|` row for the log) and fails beyond float tolerance.
fn assert_same(what: &str, d: f64, name: &str) {
    eprintln!("DDP| {what}: largest weight difference {d:.2e} ({name})");
    assert!(
        d < 1e-5,
        "{what}: 2 ranks differ from 1 process by {d} at {name}"
    );
}

fn one_process(stage: &str, cfg: &Path, run: &Path) {
    let out = bin()
        .args(train_args(stage, cfg, run))
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn torchrun() -> Option<PathBuf> {
    let python = common::python()?;
    let t = python.with_file_name("torchrun");
    t.exists().then_some(t)
}

#[test]
fn two_gloo_ranks_with_half_the_batch_train_the_same_weights_as_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path());
    let cfg = captioner_config(dir.path(), &data, 4);
    let (d, name) = one_against_two(dir.path(), "captioner", cfg.to_str().unwrap(), "cap");
    assert_same("env launch", d, &name);
    let (one, two) = (dir.path().join("cap-one"), dir.path().join("cap-two"));
    // Rank 0 alone wrote: one event file, no files from rank 1.
    let events = std::fs::read_dir(&two)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("events.out")
        })
        .count();
    assert_eq!(events, 1, "only rank 0 logs");

    // The same through torchrun (its agent hosts the store), when the venv has it.
    let Some(torchrun) = torchrun() else {
        eprintln!(
            "DDP| torchrun not found (EKPHRASIS_PYTHON unset): the env launch alone was checked"
        );
        return;
    };
    let three = dir.path().join("three");
    let out = Command::new(torchrun)
        .args([
            "--no-python",
            "--nproc-per-node=2",
            &format!("--master-port={}", free_port()),
        ])
        .arg(env!("CARGO_BIN_EXE_ekphrasis"))
        .args(train_args("captioner", &cfg, &three))
        .env("EKPHRASIS_DIST_TIMEOUT", "60")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "torchrun failed:\n{text}");
    let (d, name) = largest_difference(&one, &three);
    assert_same("torchrun", d, &name);
}

#[test]
fn a_data_parallel_run_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path());
    let cfg = captioner_config(dir.path(), &data, 4);
    let (whole, resumed) = (dir.path().join("whole"), dir.path().join("resumed"));
    one_process("captioner", &cfg, &whole);
    // Two ranks stop after step 2 (as if interrupted), then resume to step 4.
    let mut args = train_args("captioner", &cfg, &resumed);
    let port = free_port();
    let stopped: Vec<Child> = (0..2)
        .map(|r| spawn_rank_with(&args, r, 2, port, &[("EKPHRASIS_STOP_AFTER_STEP", "2")]))
        .collect();
    for child in stopped {
        let (ok, text) = wait_within(child, Duration::from_secs(180), "a rank");
        assert!(!ok && text.contains("interrupted at step 2"), "{text}");
    }
    args.push("--resume".into());
    let port = free_port();
    let ranks: Vec<Child> = (0..2).map(|r| spawn_rank(&args, r, 2, port, 60)).collect();
    for child in ranks {
        let (ok, text) = wait_within(child, Duration::from_secs(180), "a rank");
        assert!(ok, "{text}");
    }
    let (d, name) = largest_difference(&whole, &resumed);
    assert!(d < 1e-5, "resumed 2-rank run differs by {d} at {name}");
}

fn spawn_rank_with(
    args: &[String],
    rank: usize,
    world: usize,
    port: u16,
    env: &[(&str, &str)],
) -> Child {
    let mut c = bin();
    c.args(args)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("OMP_NUM_THREADS", "1")
        .env("EKPHRASIS_DIST_TIMEOUT", "60")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("starting a rank")
}

#[test]
fn a_rank_that_dies_or_never_comes_ends_the_job_with_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path());
    // Never comes: rank 0 of 2 alone gives up after the timeout with a clear error.
    let cfg = captioner_config(dir.path(), &data, 4);
    let lonely = spawn_rank(
        &train_args("captioner", &cfg, &dir.path().join("lonely")),
        0,
        2,
        free_port(),
        3,
    );
    let (ok, text) = wait_within(lonely, Duration::from_secs(60), "a lonely rank 0");
    assert!(
        !ok && text.contains("error:") && !text.contains("panicked"),
        "{text}"
    );
    assert!(
        text.contains("rank 0 of 2"),
        "the error names the rank: {text}"
    );

    // Dies mid-run: rank 1 is killed; rank 0 stops with an error.
    let cfg = captioner_config(dir.path(), &data, 1_000_000);
    let args = train_args("captioner", &cfg, &dir.path().join("killed"));
    let port = free_port();
    let rank0 = spawn_rank(&args, 0, 2, port, 20);
    let mut rank1 = spawn_rank(&args, 1, 2, port, 20);
    std::thread::sleep(Duration::from_secs(4));
    rank1.kill().unwrap();
    let _ = rank1.wait();
    let (ok, text) = wait_within(rank0, Duration::from_secs(90), "rank 0 after its peer died");
    assert!(!ok && text.contains("error:"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}

/// Trains `stage` with `cfg` once in one process and once on two Gloo ranks; returns
/// the largest weight difference.
/// [`one_against_two`] for a stage that keeps its checkpoints in `parts` (subfolders of
/// the run), each compared and asserted.
fn one_against_two_in(dir: &Path, stage: &str, cfg: &str, name: &str, parts: &[&str]) {
    one_against_two_runs(dir, stage, cfg, name);
    let (one, two) = (
        dir.join(format!("{name}-one")),
        dir.join(format!("{name}-two")),
    );
    for part in parts {
        let (d, tensor) = largest_difference(&one.join(part), &two.join(part));
        assert_same(&format!("{name} {part}"), d, &tensor);
    }
}

fn one_against_two(dir: &Path, stage: &str, cfg: &str, name: &str) -> (f64, String) {
    one_against_two_runs(dir, stage, cfg, name);
    largest_difference(
        &dir.join(format!("{name}-one")),
        &dir.join(format!("{name}-two")),
    )
}

/// Trains `stage` once in one process (`<name>-one`) and once on two ranks (`<name>-two`).
fn one_against_two_runs(dir: &Path, stage: &str, cfg: &str, name: &str) {
    let (one, two) = (
        dir.join(format!("{name}-one")),
        dir.join(format!("{name}-two")),
    );
    one_process(stage, Path::new(cfg), &one);
    let args = train_args(stage, Path::new(cfg), &two);
    let port = free_port();
    let ranks: Vec<Child> = (0..2).map(|r| spawn_rank(&args, r, 2, port, 60)).collect();
    for (r, child) in ranks.into_iter().enumerate() {
        let (ok, text) = wait_within(child, Duration::from_secs(180), "a rank");
        assert!(ok, "{name}: rank {r} failed:\n{text}");
    }
}

#[test]
fn the_contrastive_model_and_a_gan_with_two_optimizers_train_the_same_on_two_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path());
    // The contrastive loss over the global batch (features gathered with gradients),
    // BatchNorm in the image encoder.
    let clip = common::clip_cfg(dir.path(), &data);
    let (d, name) = one_against_two(dir.path(), "clip", &clip, "clip");
    assert_same("clip", d, &name);
    // Random crops, keyed per sample as the shifts are. They change every input, and
    // AdamW's ε 1e-8 turns the rounding of tiny gradient elements into 2e-5 here; at 1e-5
    // what is left is float rounding (a crop drawn for the wrong sample would differ by
    // the size of the updates, ~1e-3).
    let text = std::fs::read_to_string(&clip).unwrap();
    let cropped = text
        .replace(
            "augment_shift: 2\n",
            "augment_shift: 2\naugment_crop: 0.8\n",
        )
        .replace("eval_every: 4}", "eval_every: 4, adam_eps: 1.0e-5}");
    assert!(cropped.contains("augment_crop") && cropped.contains("adam_eps"));
    let cropped = common::write(dir.path(), "clip-crop.yaml", cropped);
    let (d, name) = one_against_two(dir.path(), "clip", &cropped, "clip-crop");
    assert_same("clip with crops", d, &name);

    // A GAN: the discriminator's and the generator's optimizers step in turn, noise keyed
    // per sample, mismatched pairs across ranks, the gradient penalty's double backward.
    let gan = common::write(
        dir.path(),
        "gan.yaml",
        format!(
            "data: {}\nseed: 0\nmodel:\n  kind: gan\n  image_size: 32\n  text: {{dim: 32, layers: 1, heads: 2, mlp: 64, max_len: 256, dropout: 0.1}}\n  generator: {{z_dim: 8, channels: [32, 16, 8], attention_max_side: 8}}\n  gan: {{disc_channels: [8, 16, 32], lr_d_scale: 4.0, gp_weight: 2.0, gp_power: 6.0, interpolate: false, truncation: 0.0}}\ntrain: {{steps: 3, batch_size: 8, lr: 2.0e-4, beta1: 0.0, beta2: 0.9, weight_decay: 0.0, grad_clip: 0.0, warmup: 0, min_lr_ratio: 1.0, eval_every: 3, ema: 0.9}}\neval: {{clip: {}, subset: 4}}\nbest: {{name: r_precision, higher_is_better: true}}\n",
            data.display(),
            dir.path().join("clip-one").display()
        ),
    );
    let (d, name) = one_against_two(dir.path(), "t2i", &gan, "gan");
    assert_same("gan", d, &name);
}

#[test]
fn the_vaes_the_unified_generator_and_the_bridge_train_the_same_on_two_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path());
    // The graders the tiny VAE configs name, trained once in one process.
    for (stage, cfg, run) in [
        ("clip", common::clip_cfg(dir.path(), &data), "clip_run"),
        ("probe", common::probe_cfg(dir.path(), &data), "probe_run"),
    ] {
        common::train_ok(stage, &cfg, &dir.path().join(run));
    }
    // AdamW's ε at 1e-5: the VAEs' summed pixel loss leaves many gradient elements near
    // 1e-8 (PyTorch's ε), where the reduction order's rounding decides the step. At 1e-8
    // the two runs differ by up to 4.5e-4 after one such step; with the ε raised they
    // agree to 1e-6, so what differs is rounding, not the gradients.
    let with_eps = |text: String| {
        let out = text
            .replace("eval_every: 4}", "eval_every: 4, adam_eps: 1.0e-5}")
            .replace("eval_every: 3}}", "eval_every: 3, adam_eps: 1.0e-5}}");
        assert!(out.matches("adam_eps").count() >= 1, "{out}");
        out
    };
    // The facts-free VAE, reading the text end to end.
    let vae = common::t2i_cfg(dir.path(), &data);
    let vae = common::write(
        dir.path(),
        "vae-eps.yaml",
        with_eps(std::fs::read_to_string(vae).unwrap()),
    );
    let (d, name) = one_against_two(dir.path(), "t2i", &vae, "vae");
    assert_same("VAE", d, &name);
    // The scene-supervised VAE: its text side is pretrained alone (phase one, its own
    // run folder and runner), then the VAE trains with it frozen (phase two).
    let facts = common::t2i_facts_cfg(dir.path(), &data);
    let facts = common::write(
        dir.path(),
        "facts-eps.yaml",
        with_eps(std::fs::read_to_string(facts).unwrap()),
    );
    assert_eq!(
        std::fs::read_to_string(&facts)
            .unwrap()
            .matches("adam_eps")
            .count(),
        2
    );
    let (d, name) = one_against_two(dir.path(), "t2i", &facts, "facts");
    assert_same("two-phase VAE, phase two", d, &name);
    let (one, two) = (dir.path().join("facts-one"), dir.path().join("facts-two"));
    let (d, name) = largest_difference(&one.join("text"), &two.join("text"));
    assert_same("two-phase VAE, phase one", d, &name);

    // The unified generator (one latent, a caption and a picture) and the invertible
    // bridge (an autoencoder, then the bridge on its latents: two runners).
    let (clip, probe) = (dir.path().join("clip_run"), dir.path().join("probe_run"));
    let unified = common::write(dir.path(), "unified.yaml", format!(
        "data: {}\nseed: 0\nmodel:\n  latent_dim: 32\n  memory_tokens: 4\n  captioner: {{encoder: cnn, channels: [8, 16], dim: 32, layers: 1, heads: 2, mlp: 64, max_len: 256, image_size: 32}}\n  generator: {{z_dim: 32, channels: [16, 16, 8], attention_max_side: 8}}\n  beta_warmup: 2\n  facts: true\n  fact_weight: 10\n  caption_memory: false\ntrain: {{steps: 4, batch_size: 8, lr: 1.0e-3, warmup: 1, eval_every: 4, adam_eps: 1.0e-5}}\neval:\n  clip: {}\n  probe: {}\n  samples: 6\n  decode: {{strategy: greedy, max_tokens: 24}}\nbest: {{name: attribute_agreement, higher_is_better: true}}\n",
        data.display(), clip.display(), probe.display()
    ));
    let (d, name) = one_against_two(dir.path(), "unified", &unified, "unified");
    assert_same("unified", d, &name);
    let bridge = common::write(dir.path(), "invertible.yaml", format!(
        "data: {}\nseed: 0\ntext_embedder: {}\nautoencoder:\n  model: {{image_size: 32, channels: [8, 16, 16], latent_channels: 1}}\n  train: {{steps: 4, batch_size: 8, lr: 1.0e-3, warmup: 1, eval_every: 4, adam_eps: 1.0e-5}}\nbridge:\n  layers: 2\n  bidirectional: 0.5\n  train: {{steps: 6, batch_size: 8, lr: 1.0e-3, warmup: 1, eval_every: 3, adam_eps: 1.0e-5}}\neval: {{clip: {}, probe: {}, subset: 4}}\n",
        data.display(), clip.display(), clip.display(), probe.display()
    ));
    one_against_two_in(
        dir.path(),
        "invertible",
        &bridge,
        "bridge",
        &["autoencoder", "bridge"],
    );
}
