//! Faults injected into training and hostile inputs: a full disk at every single write
//! of a run, an output folder that cannot be created, a run in use by another process, an
//! export over its own run, a manifest pointing outside its folder, and numbers without
//! meaning. Each must end in a clear error and leave every file already written intact.

mod common;

use common::*;
use ekphrasis::train::checkpoint;
use std::path::Path;

fn probe_cfg(dir: &Path, data: &Path) -> String {
    let p = dir.join("probe.yaml");
    std::fs::write(
        &p,
        format!(
            "data: {}\nseed: 0\nmodel: {{image_size: 32, channels: [8, 16], hidden: 16}}\ntrain: {{steps: 4, batch_size: 8, lr: 1.0e-3, warmup: 1, eval_every: 2}}\neval_subset: 4\nbest: {{name: attr_accuracy, higher_is_better: true}}\n",
            data.display()
        ),
    )
    .unwrap();
    p.to_str().unwrap().to_string()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(leftovers(&p));
        } else if p.to_string_lossy().ends_with(".tmp") {
            out.push(p.display().to_string());
        }
    }
    out
}

#[test]
fn a_full_disk_at_any_write_leaves_a_resumable_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = tiny_dataset(d);
    let cfg = probe_cfg(d, &data);
    for n in 0..40 {
        let run_dir = d.join(format!("run{n}"));
        let r = run_dir.to_str().unwrap();
        let args = ["train", "probe", "-c", &cfg, "--run", r, "--device", "cpu"];
        let out = bin()
            .args(args)
            .env("EKPHRASIS_FAIL_WRITES_AFTER", n.to_string())
            .output()
            .unwrap();
        if out.status.success() {
            // More writes allowed than the run makes: every write point has been hit.
            // Runs 0..n each failed at a different write.
            assert!(n >= 5, "only {n} write points were exercised");
            eprintln!("full-disk faults injected at {n} write points; all recovered");
            // Each fault: a clean error, every earlier file intact, the run resumable.
            eprintln!("FUZZ|full disk at each write of a training run|{n}|{n}|0|0|0");
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "write {n}: {err}");
        assert!(err.contains("No space left on device"), "write {n}: {err}");
        assert!(
            leftovers(&run_dir).is_empty(),
            "write {n}: temporary files left: {:?}",
            leftovers(&run_dir)
        );
        // What was written before the fault is intact.
        for tag in ["latest", "best"] {
            if checkpoint::exists(&run_dir, tag) {
                checkpoint::load(&run_dir, tag)
                    .unwrap_or_else(|e| panic!("write {n}: {tag} checkpoint broken: {e:#}"));
            }
        }
        // And the run finishes once there is room again.
        let mut again = args.to_vec();
        if checkpoint::exists(&run_dir, "latest") {
            again.push("--resume");
        }
        let (ok, _, err) = run(&again);
        assert!(ok, "write {n}: resuming failed: {err}");
        assert_eq!(checkpoint::load(&run_dir, "latest").unwrap().0.step, 4);
    }
    panic!("the run kept failing after 40 writes");
}

#[test]
fn an_output_folder_that_cannot_exist_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = tiny_dataset(d);
    let cfg = probe_cfg(d, &data);
    let blocker = d.join("a_file");
    std::fs::write(&blocker, "not a folder").unwrap();
    let run = blocker.join("run");
    assert_clean_error(
        &[
            "train",
            "probe",
            "-c",
            &cfg,
            "--run",
            run.to_str().unwrap(),
            "--device",
            "cpu",
        ],
        "a_file",
    );
}

#[test]
fn a_diverging_loss_stops_the_run_naming_the_step_and_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = tiny_dataset(d);
    let cfg = probe_cfg(d, &data);
    let run_dir = d.join("run");
    // An absurd learning rate blows the weights up within a few steps.
    let err = assert_clean_error(
        &[
            "train",
            "probe",
            "-c",
            &cfg,
            "--run",
            run_dir.to_str().unwrap(),
            "--device",
            "cpu",
            "--set",
            "train.lr=1e30",
            "--set",
            "train.grad_clip=0",
            "--set",
            "train.steps=50",
        ],
        "Last good checkpoint",
    );
    assert!(err.contains(" at step "), "{err}");
    assert!(err.contains("NaN") || err.contains("inf"), "{err}");
}

#[test]
fn a_run_in_use_is_refused_and_a_resume_keeps_the_runs_config() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = tiny_dataset(d);
    let cfg = probe_cfg(d, &data);
    let run_dir = d.join("run");
    let r = run_dir.to_str().unwrap();
    let train = |extra: &[&str]| {
        let mut a = vec!["train", "probe", "-c", &cfg, "--run", r, "--device", "cpu"];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let first = train(&[]);
    let (ok, _, err) = run(&strs(&first));
    assert!(ok, "{err}");
    let before = std::fs::read_to_string(run_dir.join("config.yaml")).unwrap();

    // Another process holds the run: a second training stops before touching it.
    let lock = ekphrasis::util::fsio::lock_dir(&run_dir).unwrap();
    assert_clean_error(
        &strs(&train(&["--resume"])),
        "in use by another ekphrasis process",
    );
    drop(lock);

    // A resume must continue the same run: the seed and the config stay.
    assert_clean_error(&strs(&train(&["--resume", "--seed", "5"])), "seed 0, not 5");
    assert_clean_error(
        &strs(&train(&["--resume", "--set", "train.batch_size=4"])),
        "train.batch_size differs",
    );
    assert_eq!(
        std::fs::read_to_string(run_dir.join("config.yaml")).unwrap(),
        before,
        "a refused resume leaves config.yaml as it was"
    );
    // More steps are the one change a resume takes.
    let (ok, _, err) = run(&strs(&train(&["--resume", "--set", "train.steps=6"])));
    assert!(ok, "{err}");
    assert_eq!(checkpoint::load(&run_dir, "latest").unwrap().0.step, 6);
}

#[test]
fn export_never_replaces_its_run_or_a_folder_that_is_not_an_export() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = tiny_dataset(d);
    let cfg = probe_cfg(d, &data);
    let runs = d.join("runs");
    let run_dir = runs.join("probe");
    let r = run_dir.to_str().unwrap();
    let (ok, _, err) = run(&["train", "probe", "-c", &cfg, "--run", r, "--device", "cpu"]);
    assert!(ok, "{err}");
    let export = |out: &Path| -> Vec<String> {
        [
            "export",
            "--run",
            r,
            "--out",
            out.to_str().unwrap(),
            "--kind",
            "probe",
            "--device",
            "cpu",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    };
    for out in [
        run_dir.clone(),
        run_dir.join("models"),
        runs.clone(),
        d.to_path_buf(),
    ] {
        assert_clean_error(&strs(&export(&out)), "would replace the run");
    }
    let foreign = d.join("photos");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("holiday.jpg"), b"precious").unwrap();
    assert_clean_error(&strs(&export(&foreign)), "not an earlier export");
    assert_eq!(
        std::fs::read(foreign.join("holiday.jpg")).unwrap(),
        b"precious"
    );
    assert!(
        checkpoint::load(&run_dir, "best").is_ok(),
        "the run is intact"
    );

    // A new folder, then the same folder again (an earlier export is replaced).
    let out = d.join("models").join("probe");
    for _ in 0..2 {
        let (ok, _, err) = run(&strs(&export(&out)));
        assert!(ok, "{err}");
    }

    // A manifest may name only files inside its folder, and only sane sizes.
    let manifest = out.join("manifest.json");
    let good = std::fs::read_to_string(&manifest).unwrap();
    let v: serde_json::Value = serde_json::from_str(&good).unwrap();
    let file = v["modules"].as_object().unwrap().values().next().unwrap()["file"]
        .as_str()
        .unwrap()
        .to_string();
    let images = d.join("data/images");
    let image = std::fs::read_dir(&images)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let retrieve = |dir: &Path, expect: &str| {
        assert_clean_error(
            &[
                "embed",
                "--model",
                dir.to_str().unwrap(),
                "--images",
                image.to_str().unwrap(),
                "--out",
                d.join("emb").to_str().unwrap(),
                "--device",
                "cpu",
            ],
            expect,
        );
    };
    let outside = d.join("outside.pt");
    std::fs::copy(out.join(&file), &outside).unwrap();
    for bad in ["../outside.pt", outside.to_str().unwrap()] {
        std::fs::write(
            &manifest,
            good.replace(&format!("\"{file}\""), &format!("{bad:?}")),
        )
        .unwrap();
        // embed wants a contrastive model, but the manifest is refused before its kind.
        retrieve(&out, "not a file name inside the model folder");
    }
    std::fs::write(
        &manifest,
        good.replacen("\"image_size\": 32", "\"image_size\": 100000", 1),
    )
    .unwrap();
    retrieve(&out, "image_size 100000 is outside");
}

#[test]
fn numbers_without_meaning_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = tiny_dataset(d);
    let cfg = tiny_captioner_config(d, &data, 2);
    let run_dir = d.join("cap");
    let r = run_dir.to_str().unwrap();
    let (ok, _, err) = run(&[
        "train",
        "captioner",
        "-c",
        cfg.to_str().unwrap(),
        "--run",
        r,
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    let image = first_image(&data);
    let img = image.to_str().unwrap();
    let caption = |extra: &[&str], expect: &str| {
        let mut a = vec!["caption", "--run", r, img, "--device", "cpu"];
        a.extend_from_slice(extra);
        assert_clean_error(&a, expect);
    };
    caption(&["--strategy", "beam", "--beam", "0"], "beam 0");
    caption(&["--strategy", "beam", "--beam", "100000"], "beam 100000");
    caption(
        &["--strategy", "sample", "--temperature", "-1"],
        "temperature -1",
    );
    caption(&["--strategy", "sample", "--top-p", "NaN"], "top-p NaN");
    caption(&["--repetition-penalty", "0"], "repetition penalty 0");
    caption(&["--checkpoint", "../../etc/passwd"], "give best or latest");
    assert_clean_error(
        &[
            "eval",
            "captioner",
            "--run",
            r,
            "--limit",
            "0",
            "--device",
            "cpu",
        ],
        "--limit 0",
    );
    for n in ["0", "100000000"] {
        assert_clean_error(
            &["draw", "--run", r, "a boat", "--n", n, "--device", "cpu"],
            &format!("--n {n}"),
        );
    }
}

/// Config values without meaning are refused at load, naming the field, before a model
/// is built: each from a tiny config with one `--set`.
#[test]
fn config_values_out_of_range_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = tiny_dataset(d);
    let cap = tiny_captioner_config(d, &data, 2);
    let cap = cap.to_str().unwrap();
    let clip = clip_cfg(d, &data);
    let t2i = t2i_cfg(d, &data);
    let run_dir = d.join("never");
    let r = run_dir.to_str().unwrap();
    let cases: &[(&str, &str, &str, &str)] = &[
        ("captioner", cap, "model.heads=0", "model.heads = 0"),
        ("captioner", cap, "model.dim=0", "model.dim = 0"),
        ("captioner", cap, "model.dim=-32", "model.dim = -32"),
        ("captioner", cap, "model.mlp=0", "model.mlp = 0"),
        ("captioner", cap, "model.layers=0", "model.layers = 0"),
        (
            "captioner",
            cap,
            "model.image_size=0",
            "model.image_size = 0",
        ),
        (
            "captioner",
            cap,
            "model.image_size=1000000",
            "model.image_size = 1000000",
        ),
        (
            "captioner",
            cap,
            "model.image_size=-16",
            "model.image_size = -16",
        ),
        ("captioner", cap, "model.max_len=0", "model.max_len = 0"),
        ("captioner", cap, "model.max_len=1e11", "model.max_len"),
        ("captioner", cap, "model.dropout=2", "model.dropout = 2"),
        ("captioner", cap, "model.channels=[-8,16]", "model.channels"),
        ("captioner", cap, "model.channels=[]", "model.channels"),
        (
            "captioner",
            cap,
            "model.heads=3",
            "model.dim 32 must divide into model.heads 3",
        ),
        ("captioner", cap, "train.lr=-1", "train.lr = -1"),
        ("captioner", cap, "train.beta1=1.5", "train.beta1 = 1.5"),
        ("captioner", cap, "train.ema=2", "train.ema = 2"),
        ("clip", &clip, "model.embed_dim=0", "model.embed_dim = 0"),
        (
            "clip",
            &clip,
            "model.text.heads=3",
            "model.text.dim 32 must divide into model.text.heads 3",
        ),
        ("clip", &clip, "model.text.heads=0", "model.text.heads = 0"),
        ("t2i", &t2i, "model.text.heads=3", "model.text.heads 3"),
        (
            "t2i",
            &t2i,
            "model.generator.z_dim=0",
            "model.generator.z_dim = 0",
        ),
        ("t2i", &t2i, "train.batch_size=0", "train.batch_size = 0"),
    ];
    for (stage, cfg, set, expect) in cases {
        assert_clean_error(
            &[
                "train", stage, "-c", cfg, "--set", set, "--run", r, "--device", "cpu",
            ],
            expect,
        );
    }
    assert!(
        !run_dir.exists(),
        "nothing was written for a refused config"
    );
    assert_clean_error(
        &["caption", "--set", "model.dim=8", "--run", r, "x.png"],
        "--set was given without -c",
    );
}

/// A model too large for the memory the process may use is a clean "not enough memory"
/// error naming what to lower, not an abort or the OOM killer (here the cap is 1.5 GB,
/// set with `ulimit -d`; the binary itself caps at RAM + swap).
#[test]
fn a_model_too_large_for_memory_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = tiny_dataset(d);
    let cfg = tiny_captioner_config(d, &data, 2);
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -d 1500000 && exec {} train captioner -c {} --run {} --set model.dim=16384 --set model.mlp=65536 --device cpu",
            env!("CARGO_BIN_EXE_ekphrasis"),
            cfg.display(),
            d.join("big").display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("error: not enough memory") && err.contains("lower the model's sizes"),
        "{err}"
    );
}

/// Work that writes gigabytes checks the free space first: an export and a rendered set
/// that cannot fit are refused at the start, naming the folder, and leave nothing
/// (`EKPHRASIS_FREE_BYTES` stands in for a nearly full disk).
#[test]
fn a_disk_too_full_for_an_export_or_a_dataset_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = tiny_dataset(d);
    let cfg = probe_cfg(d, &data);
    let run_dir = d.join("probe");
    let r = run_dir.to_str().unwrap();
    train_ok("probe", &cfg, &run_dir);
    let full = |args: &[&str]| {
        let out = bin()
            .args(args)
            .env("EKPHRASIS_FREE_BYTES", "4096")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("free some space"), "{args:?}: {err}");
        err
    };
    let models = d.join("models");
    let err = full(&[
        "export",
        "--run",
        r,
        "--out",
        models.to_str().unwrap(),
        "--kind",
        "probe",
        "--device",
        "cpu",
    ]);
    assert!(err.contains("the export needs about"), "{err}");
    assert!(!models.exists() && !d.join("models.partial").exists());
    let synth = d.join("synth");
    let s = synth.to_str().unwrap();
    let err = full(&["data", "synth", "--out", s, "--n", "200", "--size", "32"]);
    assert!(err.contains("the rendered set needs about"), "{err}");
    assert!(!synth.exists() && !d.join("synth.partial").exists());
    // With room, both go through.
    let (ok, _, err) = run(&["data", "synth", "--out", s, "--n", "20", "--size", "16"]);
    assert!(ok, "{err}");
}

/// Commands without a clean stop of their own (captioning, drawing, evaluation) exit at
/// the first Ctrl-C, at once, instead of running on to the end.
#[test]
fn the_first_ctrl_c_stops_a_long_captioning_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = tiny_dataset(d);
    let cfg = tiny_captioner_config(d, &data, 2);
    let run_dir = d.join("cap");
    let r = run_dir.to_str().unwrap();
    train_ok("captioner", cfg.to_str().unwrap(), &run_dir);
    let img = first_image(&data).to_str().unwrap().to_string();
    let mut args = vec!["caption", "--run", r, "--device", "cpu"];
    args.extend(["--strategy", "beam", "--beam", "64"]);
    args.extend(std::iter::repeat_n(img.as_str(), 4000));
    let child = bin()
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Uninterrupted, the 4,000 captions take about 35 s here.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let sent = std::time::Instant::now();
    interrupt(child.id());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(5),
        "took {:?} to stop",
        sent.elapsed()
    );
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted: stopped"), "{err}");
}

/// A dataset without its tokenizer is refused by every training stage before any image
/// is loaded, naming the file and the command that makes it.
#[test]
fn training_on_a_dataset_without_its_tokenizer_names_the_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, _, err) = common::run(&[
        "data",
        "synth",
        "--out",
        data.to_str().unwrap(),
        "--n",
        "12",
        "--size",
        "16",
    ]);
    assert!(ok, "{err}");
    let clip = common::clip_cfg(dir.path(), &data);
    let captioner = common::tiny_captioner_config(dir.path(), &data, 2);
    for (stage, cfg) in [
        ("clip", clip.as_str()),
        ("captioner", captioner.to_str().unwrap()),
    ] {
        let run = dir.path().join(format!("{stage}_run"));
        let err = common::assert_clean_error(
            &["train", stage, "-c", cfg, "--run", run.to_str().unwrap()],
            "has no tokenizer.json; run `ekphrasis tokenizer train --data",
        );
        assert!(err.contains(data.to_str().unwrap()), "{err}");
        assert!(!run.join("checkpoints").exists(), "{stage}: {err}");
    }
}
