//! The captioner's two-phase training through the binary: the encoder pretrains on the
//! scene facts, stays frozen while the decoder learns (with the heads' reading as words in
//! its context), a resumed run keeps both, and the evaluation reports what the heads know
//! beside what the paragraphs say.

mod common;
use common::*;
use ekphrasis::train::checkpoint;
use std::path::Path;

fn pretrain_config(dir: &Path, data: &Path) -> String {
    let base = std::fs::read_to_string(tiny_captioner_config(dir, data, 2)).unwrap();
    let cfg = base
        .replace("  channels: [8, 16]\n", "  channels: [8, 16]\n  stem: 4\n")
        .replace(
            "  attribute_context: true\n",
            "  attribute_context: true\n  attribute_mix: true\n  attribute_words: true\n",
        )
        .replace(
            "augment_shift: 1\n",
            "augment_shift: 1\npretrain:\n  train:\n    steps: 3\n    batch_size: 4\n    lr: 3.0e-3\n    warmup: 1\n    eval_every: 3\n  extra_renders: 8\n",
        );
    assert!(cfg.contains("attribute_words") && cfg.contains("pretrain:"));
    write(dir, "captioner-pretrain.yaml", cfg)
}

fn ok(args: &[&str]) -> String {
    let (ok, out, err) = run(args);
    assert!(ok, "{args:?} failed: {err}");
    format!("{out}{err}")
}

#[test]
fn the_pretrained_encoder_stays_frozen_and_the_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = tiny_dataset(d);
    let cfg = pretrain_config(d, &data);
    let run_dir = d.join("run");
    let r = run_dir.to_str().unwrap();
    let out = ok(&[
        "train",
        "captioner",
        "-c",
        &cfg,
        "--run",
        r,
        "--device",
        "cpu",
    ]);
    assert!(out.contains("+ 8 rendered scenes"), "{out}");
    assert!(out.contains("captioner encoder trained: 3 steps"), "{out}");
    assert!(run_dir.join("encoder/done.json").exists());

    let (_, pretrained) = checkpoint::load(&run_dir.join("encoder"), "latest").unwrap();
    let (_, trained) = checkpoint::load(&run_dir, "latest").unwrap();
    let (mut frozen, mut moved) = (0, 0);
    for (name, t) in trained.iter().filter(|(n, _)| n.starts_with("model.")) {
        let before = &pretrained[name];
        let same = t.equal(before);
        if name.starts_with("model.cnn.") || name.starts_with("model.aux_attributes.") {
            assert!(same, "{name} changed after the encoder was frozen");
            frozen += 1;
        } else if !same {
            moved += 1;
        }
    }
    assert!(frozen > 0 && moved > 0, "frozen {frozen}, moved {moved}");

    // Resuming rebuilds the same optimizer (the encoder frozen again) and goes on.
    let out = ok(&[
        "train",
        "captioner",
        "-c",
        &cfg,
        "--run",
        r,
        "--resume",
        "--device",
        "cpu",
        "--set",
        "train.steps=4",
    ]);
    assert!(out.contains("resuming"), "{out}");
    assert!(!out.contains("captioner encoder trained"), "{out}");

    ok(&[
        "eval",
        "captioner",
        "--run",
        r,
        "--split",
        "test",
        "--device",
        "cpu",
    ]);
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("eval_test/metrics.json")).unwrap(),
    )
    .unwrap();
    for key in [
        "attr_f1",
        "attr_f1.colour",
        "attr_f1.detail",
        "heads_fact_f1",
        "caption_fact_f1",
    ] {
        let v = m[key].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&v), "{key} = {v}");
    }
}

#[test]
fn pretraining_without_attribute_heads_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = tiny_dataset(d);
    let cfg = std::fs::read_to_string(pretrain_config(d, &data))
        .unwrap()
        .replace("  attribute_weight: 0.5\n", "  attribute_weight: 0.0\n")
        .replace(
            "  attribute_context: true\n",
            "  attribute_context: false\n",
        )
        .replace("  attribute_words: true\n", "");
    let cfg = write(d, "no-heads.yaml", cfg);
    let r = d.join("run");
    assert_clean_error(
        &[
            "train",
            "captioner",
            "-c",
            &cfg,
            "--run",
            r.to_str().unwrap(),
            "--device",
            "cpu",
        ],
        "pretrain needs model.attribute_weight > 0",
    );
}
