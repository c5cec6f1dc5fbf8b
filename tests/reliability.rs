//! Faults injected into training: a full disk at every single write of a run, and an
//! output folder that cannot be created. Each must end in a clear error, leave every
//! checkpoint already written loadable, and let the run finish with `--resume`.

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
