//! `make bench`'s pieces: the Rust measurements print well-formed JSON, and the PyTorch
//! mirrors in bench/reference.py keep the demo models' exact parameter counts (the
//! reference refuses to run otherwise), so the side-by-side ratios compare like with like.

mod common;
use common::*;
use std::path::Path;

fn json(args: &[&str]) -> serde_json::Value {
    let (ok, out, err) = run(args);
    assert!(ok, "{args:?} failed: {err}");
    serde_json::from_str(out.trim().lines().last().unwrap()).unwrap()
}

fn reference(python: &Path, args: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/reference.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .args(["--threads", "2"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "reference.py {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.trim().lines().last().unwrap()).unwrap()
}

#[test]
fn benchmark_rows_compare_equal_models() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The captioner's bench config keeps the one-phase architecture the PyTorch mirror
    // builds; the GAN's is the demo's.
    let cfg = |n: &str| {
        let dir = if n.starts_with("captioner") {
            "bench"
        } else {
            "demo"
        };
        root.join("experiments")
            .join(dir)
            .join(n)
            .to_str()
            .unwrap()
            .to_string()
    };
    let step = |c: &str| {
        json(&[
            "bench",
            "train-step",
            "-c",
            c,
            "--steps",
            "1",
            "--warmup",
            "0",
            "--seq-len",
            "12",
            "--device",
            "cpu",
        ])
    };
    let cap = step(&cfg("captioner.yaml"));
    let gan = step(&cfg("t2i-gan.yaml"));
    for (t, name) in [(&cap, "captioner"), (&gan, "gan")] {
        assert_eq!(t["model"], name);
        assert!(t["steps_per_s"].as_f64().unwrap() > 0.0);
        assert!(t["parameters"].as_i64().unwrap() > 100_000);
    }
    let greedy = json(&[
        "bench",
        "greedy",
        "-c",
        &cfg("captioner.yaml"),
        "--tokens",
        "5",
        "--repeats",
        "1",
        "--device",
        "cpu",
    ]);
    assert_eq!(greedy["tokens"], 5, "every token is produced: {greedy}");
    let peak = json(&["bench", "matmul", "--n", "64", "--repeats", "2"]);
    assert!(peak["gflops"].as_f64().unwrap() > 0.0);

    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path());
    let files = json(&[
        "bench",
        "decode-files",
        "--dir",
        data.join("images").to_str().unwrap(),
        "--size",
        "16",
    ]);
    assert_eq!(files["files"], 40);

    let Some(python) = python() else {
        eprintln!(
            "SKIPPED the PyTorch mirrors: EKPHRASIS_PYTHON not set (run through `make test`)"
        );
        return;
    };
    for (c, t) in [("captioner.yaml", &cap), ("t2i-gan.yaml", &gan)] {
        let params = t["parameters"].as_i64().unwrap().to_string();
        let r = reference(
            &python,
            &[
                "train-step",
                "--config",
                &cfg(c),
                "--steps",
                "1",
                "--warmup",
                "0",
                "--seq-len",
                "12",
                "--expect-params",
                &params,
            ],
        );
        assert_eq!(r["parameters"], t["parameters"], "{c}");
        assert!(r["flops_per_step"].as_f64().unwrap() > 0.0);
    }
    let r = reference(
        &python,
        &[
            "greedy",
            "--config",
            &cfg("captioner.yaml"),
            "--tokens",
            "5",
            "--repeats",
            "1",
        ],
    );
    assert_eq!(r["tokens"], 5);
    let r = reference(
        &python,
        &[
            "pillow",
            "--dir",
            data.join("images").to_str().unwrap(),
            "--size",
            "16",
        ],
    );
    assert_eq!(r["files"], 40);
}
