//! Foundation: bad input is a clean error, resume continues a run exactly,
//! TensorBoard files are readable by TensorBoard's own reader, and stages run side by
//! side share the cores and label their lines.

mod common;
use common::*;

#[test]
fn bad_configs_and_devices_are_clean_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path());
    let cfg = tiny_captioner_config(dir.path(), &data, 2);
    let run_dir = dir.path().join("run");
    let (c, r) = (cfg.to_str().unwrap(), run_dir.to_str().unwrap());

    let text = std::fs::read_to_string(&cfg).unwrap();
    let unknown = dir.path().join("unknown.yaml");
    std::fs::write(
        &unknown,
        text.replace("  layers: 1\n", "  layers: 1\n  layerz: 2\n"),
    )
    .unwrap();
    let e = assert_clean_error(
        &[
            "train",
            "captioner",
            "-c",
            unknown.to_str().unwrap(),
            "--run",
            r,
        ],
        "layerz",
    );
    assert!(e.contains("line 8"), "{e}");

    let wrong = dir.path().join("wrong.yaml");
    std::fs::write(&wrong, text.replace("  dim: 32", "  dim: wide")).unwrap();
    assert_clean_error(
        &[
            "train",
            "captioner",
            "-c",
            wrong.to_str().unwrap(),
            "--run",
            r,
        ],
        "dim",
    );

    assert_clean_error(
        &[
            "train",
            "captioner",
            "-c",
            "/no/such/config.yaml",
            "--run",
            r,
        ],
        "/no/such/config.yaml",
    );
    assert_clean_error(
        &[
            "train",
            "captioner",
            "-c",
            c,
            "--run",
            r,
            "--set",
            "train.nope=1",
        ],
        "nope",
    );
    if !tch::Cuda::is_available() {
        assert_clean_error(
            &[
                "train",
                "captioner",
                "-c",
                c,
                "--run",
                r,
                "--device",
                "cuda",
            ],
            "no CUDA device",
        );
    }
    assert_clean_error(
        &["train", "captioner", "-c", c, "--run", r, "--resume"],
        "no checkpoint",
    );

    // A run whose architecture no longer matches its checkpoint refuses to resume.
    let (ok, _, err) = run(&["train", "captioner", "-c", c, "--run", r, "--device", "cpu"]);
    assert!(ok, "{err}");
    assert_clean_error(
        &["train", "captioner", "-c", c, "--run", r, "--device", "cpu"],
        "--resume",
    );
    assert_clean_error(
        &[
            "train",
            "captioner",
            "-c",
            c,
            "--run",
            r,
            "--resume",
            "--set",
            "model.dim=48",
            "--device",
            "cpu",
        ],
        "cannot resume",
    );
}

/// Training 6 steps straight equals 3 steps + resume + 3 steps, weight for weight.
#[test]
fn resume_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path());
    let cfg = tiny_captioner_config(dir.path(), &data, 6);
    let c = cfg.to_str().unwrap();
    let straight = dir.path().join("straight");
    let split = dir.path().join("split");
    let (ok, _, err) = run(&[
        "train",
        "captioner",
        "-c",
        c,
        "--run",
        straight.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    // The first half stops after step 3 as if interrupted (the runner's test hook).
    let out = bin()
        .args([
            "train",
            "captioner",
            "-c",
            c,
            "--run",
            split.to_str().unwrap(),
            "--device",
            "cpu",
        ])
        .env("EKPHRASIS_STOP_AFTER_STEP", "3")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("interrupted at step 3"),
        "{err}"
    );
    let (ok, _, err) = run(&[
        "train",
        "captioner",
        "-c",
        c,
        "--run",
        split.to_str().unwrap(),
        "--device",
        "cpu",
        "--resume",
    ]);
    assert!(ok, "{err}");
    let a = ekphrasis::train::checkpoint::load(&straight, "latest")
        .unwrap()
        .1;
    let b = ekphrasis::train::checkpoint::load(&split, "latest")
        .unwrap()
        .1;
    assert!(!a.is_empty());
    for (name, t) in a {
        let diff = (&t - &b[&name]).abs().max().double_value(&[]);
        assert_eq!(diff, 0.0, "{name} differs after resume by {diff}");
    }
}

/// TensorBoard's own reader finds our scalars, images and text.
#[test]
fn tensorboard_reader_reads_our_event_files() {
    let Some(py) = python() else {
        eprintln!("SKIPPED: EKPHRASIS_PYTHON not set (run through `make test`)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    {
        let mut w = ekphrasis::util::tensorboard::EventWriter::create(dir.path()).unwrap();
        for step in 0..5 {
            w.scalar("train/loss", step, 1.0 / (step + 1) as f64)
                .unwrap();
        }
        w.image("grid", 3, &[200u8; 4 * 6 * 3], 4, 6).unwrap();
        w.text("caption", 3, "a red house").unwrap();
        let weights = tch::Tensor::from_slice(&[0.0f32, 1.0, 1.0, 2.0, 4.0]);
        w.histogram("weights/w", 3, &weights).unwrap();
    }
    let script = r#"
import sys
from tensorboard.backend.event_processing import event_accumulator as ea
acc = ea.EventAccumulator(sys.argv[1], size_guidance={"tensors": 0, "images": 0, "scalars": 0})
acc.Reload()
vals = [round(e.value, 4) for e in acc.Scalars("train/loss")]
img = acc.Images("grid")[0]
txt = acc.Tensors("caption")[0].tensor_proto.string_val[0].decode()
h = acc.Histograms("weights/w")[0].histogram_value
print(vals, img.width, img.height, txt, h.min, h.max, h.num, h.sum, int(sum(h.bucket)))
"#;
    let out = std::process::Command::new(py)
        .args(["-c", script, dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        "[1.0, 0.5, 0.3333, 0.25, 0.2] 6 4 a red house 0.0 4.0 5.0 8.0 5"
    );
}

/// A real SIGINT mid-run: the step finishes, a checkpoint is written, the process exits
/// non-zero with a clear line, and `--resume` ends on the same weights as a run that was
/// never interrupted.
#[test]
fn sigint_checkpoints_and_resume_matches_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path());
    let cfg = tiny_captioner_config(dir.path(), &data, 300);
    let c = cfg.to_str().unwrap();
    let set = ["--set", "train.eval_every=1000", "--device", "cpu"];
    let straight = dir.path().join("straight");
    let mut args = vec![
        "train",
        "captioner",
        "-c",
        c,
        "--run",
        straight.to_str().unwrap(),
    ];
    args.extend(set);
    let (ok, _, err) = run(&args);
    assert!(ok, "{err}");

    let broken = dir.path().join("broken");
    let mut args = vec![
        "train",
        "captioner",
        "-c",
        c,
        "--run",
        broken.to_str().unwrap(),
    ];
    args.extend(set);
    let child = bin()
        .args(&args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the loop has started (its event file exists), then interrupt it.
    let start = std::time::Instant::now();
    while !std::fs::read_dir(&broken)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("events"))
        })
        .unwrap_or(false)
    {
        assert!(start.elapsed().as_secs() < 60, "training never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an interrupted run exits non-zero");
    assert!(
        err.contains("interrupted at step") && err.contains("--resume"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let mut args = vec![
        "train",
        "captioner",
        "-c",
        c,
        "--run",
        broken.to_str().unwrap(),
        "--resume",
    ];
    args.extend(set);
    let (ok, _, err) = run(&args);
    assert!(ok, "{err}");
    let a = ekphrasis::train::checkpoint::load(&straight, "latest")
        .unwrap()
        .1;
    let b = ekphrasis::train::checkpoint::load(&broken, "latest")
        .unwrap()
        .1;
    for (name, t) in a {
        assert_eq!(
            (&t - &b[&name]).abs().max().double_value(&[]),
            0.0,
            "{name} differs after interrupt + resume"
        );
    }
}

#[test]
fn stages_side_by_side_share_the_cores_and_label_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = tiny_dataset(d);
    let cfg = probe_cfg(d, &data);
    let share = d.join("cores");
    let (a, b) = (d.join("probe_a"), d.join("probe_b"));
    let start = |run: &std::path::Path| {
        bin()
            .args(["--device", "cpu", "--share-cores", share.to_str().unwrap()])
            .args(["--progress", "lines", "train", "probe", "-c", &cfg, "--run"])
            .arg(run)
            .output()
            .expect("running ekphrasis")
    };
    let (out_a, out_b) = std::thread::scope(|s| {
        let ha = s.spawn(|| start(&a));
        let hb = s.spawn(|| start(&b));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    for (out, run) in [(&out_a, &a), (&out_b, &b)] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        let label = format!("[train probe {}] ", run.display());
        assert!(
            err.lines()
                .any(|l| l.starts_with(&label) && l.contains("step")),
            "every log line names its stage: {err}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(&share).unwrap().collect();
    assert!(left.is_empty(), "both left the share: {left:?}");
    let r = d.join("probe_c");
    let r = r.to_str().unwrap();
    assert_clean_error(
        &["--threads", "0", "train", "probe", "-c", &cfg, "--run", r],
        "--threads 0",
    );
    assert_clean_error(
        &[
            "--threads",
            "1",
            "--share-cores",
            "x",
            "train",
            "probe",
            "-c",
            &cfg,
            "--run",
            r,
        ],
        "cannot be used with",
    );
}
