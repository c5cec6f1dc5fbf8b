//! The general path on tiny data: `train align` learns from images and paragraphs alone;
//! a captioner reads its frozen image encoder, each generator (vae, gan, diffusion) its
//! frozen text side, the unified generator its caption features and the invertible
//! bridge its sentence vector; mismatched or unfinished align runs are refused before
//! training.

mod common;
use common::*;
use ekphrasis::train::checkpoint;
use std::path::Path;

fn align_cfg(dir: &Path, data: &Path) -> String {
    write(dir, "align.yaml", format!(
        "data: {}\nseed: 0\nmodel:\n  image_size: 32\n  channels: [8, 16]\n  stem: 4\n  places: 2\n  text: {{dim: 32, layers: 1, heads: 2, mlp: 64, max_len: 256, local_layers: 1}}\n  bag_weight: 1.0\n  pair_buckets: 64\n  place_hardness: 1.0\npretrain: {{train: {{steps: 3, batch_size: 8, lr: 2.0e-3, warmup: 1, eval_every: 3}}}}\ntrain: {{steps: 6, batch_size: 8, lr: 2.0e-3, warmup: 1, eval_every: 3, log_every: 1}}\neval_subset: 4\nbest: {{name: mean_r1, higher_is_better: true}}\n",
        data.display()
    ))
}

/// `train align -c cfg --run run_dir` on the CPU: (success, stdout, stderr).
fn train_align(cfg: &str, run_dir: &Path) -> (bool, String, String) {
    run(&[
        "train",
        "align",
        "-c",
        cfg,
        "--run",
        run_dir.to_str().unwrap(),
        "--device",
        "cpu",
    ])
}

fn captioner_cfg(dir: &Path, data: &Path, align_run: &Path, channels: &str) -> String {
    write(dir, "captioner_general.yaml", format!(
        "data: {}\nseed: 0\nencoder_from: {}\nmodel: {{encoder: cnn, channels: {channels}, stem: 4, dim: 32, layers: 1, heads: 2, mlp: 64, max_len: 256, image_size: 32, context_places: true}}\ntrain: {{steps: 4, batch_size: 4, lr: 3.0e-3, warmup: 1, eval_every: 4}}\nloss: {{}}\neval: {{subset: 2, decode: {{strategy: greedy, max_tokens: 12}}}}\nbest: {{name: loss}}\n",
        data.display(),
        align_run.display()
    ))
}

/// A tiny generator of `kind` painting from the align run's places.
fn generator_cfg(dir: &Path, data: &Path, align_run: &Path, kind: &str) -> String {
    let body = match kind {
        "vae" => "kind: vae\n  image_size: 32\n  generator: {z_dim: 8, channels: [32, 16, 8], attention_max_side: 8, cell_coordinates: true}\n  encoder_channels: [8, 16]\n  beta_warmup: 2",
        "gan" => "kind: gan\n  image_size: 32\n  generator: {z_dim: 8, channels: [32, 16, 8], attention_max_side: 8}\n  gan: {disc_channels: [8, 16]}",
        _ => "kind: diffusion\n  image_size: 16\n  unet: {channels: [8, 16], attention_max_side: 8}\n  diffusion: {sample_steps: 3}",
    };
    // The one-pass generators also learn from the align model's score of their
    // pictures (`match_weight`); diffusion has no such term.
    // The GAN also attends to the align run's word vectors after its places.
    let matching = match kind {
        "diffusion" => "",
        "gan" => ", match_weight: 1.0, words: true",
        _ => ", match_weight: 1.0",
    };
    write(dir, &format!("{kind}_general.yaml"), format!(
        "data: {}\nseed: 0\nmodel:\n  {body}\n  align: {{run: {}{matching}}}\ntrain: {{steps: 4, batch_size: 8, lr: 1.0e-3, warmup: 1, eval_every: 4}}\neval: {{clip: {}, subset: 4}}\nbest: {{name: r_precision, higher_is_better: true}}\n",
        data.display(),
        align_run.display(),
        dir.join("clip_run").display()
    ))
}

/// `train <stage>` on `cfg` fails with a clean error holding `expect`.
fn refused(stage: &str, cfg: &str, run_dir: &Path, expect: &str) {
    let r = run_dir.to_str().unwrap();
    assert_clean_error(
        &["train", stage, "-c", cfg, "--run", r, "--device", "cpu"],
        expect,
    );
}

/// The best checkpoint's `model.<prefix>…` tensors of a run, by the name after `prefix`.
fn weights(run: &Path, prefix: &str) -> Vec<(String, tch::Tensor)> {
    let (_, t) = checkpoint::load(run, "best").unwrap();
    let mut v: Vec<_> = t
        .into_iter()
        .filter_map(|(k, t)| Some((k.strip_prefix(prefix)?.to_string(), t)))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn assert_same(a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)], what: &str) {
    assert!(
        !a.is_empty() && a.len() == b.len(),
        "{what}: {} vs {}",
        a.len(),
        b.len()
    );
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb, "{what}");
        assert!(ta.equal(tb), "{what}: {na} moved");
    }
}

#[test]
fn the_general_path_trains_from_a_frozen_aligned_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = tiny_dataset(d);
    let align_run = d.join("align_run");
    // A run that has not finished is refused before any captioner trains.
    let unfinished = d.join("align_unfinished");
    let cfg = captioner_cfg(d, &data, &unfinished, "[8, 16]");
    refused("captioner", &cfg, &d.join("c0"), "is not a align run");
    let (okay, out, err) = train_align(&align_cfg(d, &data), &align_run);
    assert!(okay, "{err}");
    assert!(out.contains("align trained: 6 steps"), "{out}");
    for term in ["sentence", "words", "places", "bag", "bag_map"] {
        assert!(err.contains(term), "the log names the {term} term: {err}");
    }

    assert!(
        align_run.join("image/done.json").exists(),
        "the first phase ran"
    );
    // The captioner: its CNN is the align run's, and stays so while the decoder learns.
    let cap_run = d.join("cap_run");
    let cfg = captioner_cfg(d, &data, &align_run, "[8, 16]");
    train_ok("captioner", &cfg, &cap_run);
    assert_same(
        &weights(&cap_run, "model.cnn."),
        &weights(&align_run, "model.image.cnn."),
        "the captioner's frozen encoder",
    );
    let heads = |run: &Path| -> Vec<_> {
        weights(run, "model.image.")
            .into_iter()
            .filter(|(n, _)| !n.starts_with("cnn."))
            .collect()
    };
    assert_same(
        &heads(&cap_run),
        &heads(&align_run),
        "the captioner's frozen place heads",
    );
    // Fine-tuned (`encoder_lr_scale`): the encoder learns on, its batch-norm statistics
    // stay the align run's.
    let tuned_run = d.join("cap_tuned");
    let tuned = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("seed: 0\n", "seed: 0\nencoder_lr_scale: 0.1\n");
    let tuned_cfg = write(d, "captioner_tuned.yaml", tuned.clone());
    train_ok("captioner", &tuned_cfg, &tuned_run);
    let (stats, learned): (Vec<_>, Vec<_>) = weights(&tuned_run, "model.cnn.")
        .into_iter()
        .zip(weights(&align_run, "model.image.cnn."))
        .partition(|((n, _), _)| n.contains("running_"));
    assert!(!stats.is_empty() && !learned.is_empty());
    for ((n, a), (_, b)) in &stats {
        assert!(a.equal(b), "the batch norm's {n} moved");
    }
    assert!(
        learned.iter().any(|((_, a), (_, b))| !a.equal(b)),
        "the fine-tuned encoder did not learn"
    );
    let cfg_no_source = tuned.replace(&format!("encoder_from: {}\n", align_run.display()), "");
    refused(
        "captioner",
        &write(d, "captioner_tuned_alone.yaml", cfg_no_source),
        &d.join("c_alone"),
        "give encoder_from too",
    );
    let (okay, out, err) = run(&[
        "eval",
        "captioner",
        "--run",
        cap_run.to_str().unwrap(),
        "--split",
        "test",
        "--device",
        "cpu",
    ]);
    assert!(okay && out.contains("bleu4"), "{err}");
    // An encoder of another shape is refused by name before training.
    let cfg = captioner_cfg(d, &data, &align_run, "[8, 24]");
    refused(
        "captioner",
        &cfg,
        &d.join("c1"),
        "its image encoder has channels [8, 16]",
    );

    // Each generator paints from the frozen text side.
    train_ok("clip", &clip_cfg(d, &data), &d.join("clip_run"));
    for kind in ["vae", "gan", "diffusion"] {
        let run_dir = d.join(format!("{kind}_run"));
        train_ok("t2i", &generator_cfg(d, &data, &align_run, kind), &run_dir);
        assert_same(
            &weights(&run_dir, "model.text."),
            &weights(&align_run, "model.text."),
            &format!("the {kind}'s frozen text side"),
        );
        let (okay, out, err) = run(&[
            "eval",
            "t2i",
            "--run",
            run_dir.to_str().unwrap(),
            "--split",
            "test",
            "--device",
            "cpu",
        ]);
        assert!(okay && out.contains("r_precision"), "{kind}: {err}");
    }
    // The unified generator reads the caption features off its latent: it trains,
    // evaluates its prior samples by the contrastive model and generates.
    let unified = write(d, "unified_general.yaml", format!(
        "data: {}\nseed: 0\nmodel:\n  latent_dim: 32\n  memory_tokens: 4\n  captioner: {{encoder: cnn, channels: [8, 16], dim: 32, layers: 1, heads: 2, mlp: 64, max_len: 256, image_size: 32}}\n  generator: {{z_dim: 32, channels: [16, 16, 8], attention_max_side: 8, cell_coordinates: true}}\n  beta_warmup: 2\n  align: {{run: {}}}\n  caption_memory: false\ntrain: {{steps: 4, batch_size: 8, lr: 1.0e-3, warmup: 1, eval_every: 4}}\neval:\n  clip: {}\n  samples: 6\n  decode: {{strategy: greedy, max_tokens: 24}}\nbest: {{name: caption_r_precision, higher_is_better: true}}\n",
        data.display(),
        align_run.display(),
        d.join("clip_run").display()
    ));
    let unified_run = d.join("unified_run");
    train_ok("unified", &unified, &unified_run);
    let (okay, out, err) = run(&[
        "eval",
        "unified",
        "--run",
        unified_run.to_str().unwrap(),
        "--n",
        "6",
        "--device",
        "cpu",
    ]);
    assert!(okay && out.contains("caption_r_precision"), "{err}");
    assert!(
        !out.contains("attribute_agreement"),
        "no probe, no facts: {out}"
    );
    let seeds = d.join("seeds");
    let (okay, _, err) = run(&[
        "generate",
        "--run",
        unified_run.to_str().unwrap(),
        "--seeds",
        "0..2",
        "--out",
        seeds.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(okay && seeds.join("seed1.png").exists(), "{err}");

    // The invertible bridge embeds with the align run's sentence vector (32 wide: a
    // 2 × 4 × 4 latent), and is graded by the contrastive model it never read.
    let bridge_cfg = |embedder: &Path| {
        format!(
            "data: {}\nseed: 0\ntext_embedder: {}\nautoencoder:\n  model: {{image_size: 32, channels: [8, 16, 16], latent_channels: 2}}\n  train: {{steps: 4, batch_size: 8, lr: 1.0e-3, warmup: 1, eval_every: 4}}\nbridge:\n  layers: 2\n  train: {{steps: 6, batch_size: 8, lr: 1.0e-3, warmup: 1, eval_every: 3}}\neval: {{clip: {}, subset: 4}}\n",
            data.display(),
            embedder.display(),
            d.join("clip_run").display()
        )
    };
    let bridge_run = d.join("bridge_run");
    train_ok(
        "invertible",
        &write(d, "bridge.yaml", bridge_cfg(&align_run)),
        &bridge_run,
    );
    let (okay, out, err) = run(&[
        "eval",
        "invertible",
        "--run",
        bridge_run.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(okay && out.contains("inverted_r_precision"), "{err}");
    assert!(!out.contains("probe"), "no probe, no facts: {out}");
    refused(
        "invertible",
        &write(d, "bridge_bad.yaml", bridge_cfg(&data)),
        &d.join("b1"),
        "neither an align run",
    );

    // The exported VAE, and the GAN reading words, draw from a caption without the
    // align run's help, as their runs do.
    for kind in ["vae", "gan"] {
        let models = d.join(format!("{kind}_export"));
        let (okay, _, err) = run(&[
            "export",
            "--run",
            d.join(format!("{kind}_run")).to_str().unwrap(),
            "--kind",
            "t2i",
            "--out",
            models.to_str().unwrap(),
            "--device",
            "cpu",
        ]);
        assert!(okay, "{kind}: {err}");
        let draw = |from: &str, source: &Path, out: &Path| {
            let (okay, _, err) = run(&[
                "draw",
                from,
                source.to_str().unwrap(),
                "A red house.",
                "--n",
                "2",
                "--seed",
                "3",
                "--out",
                out.to_str().unwrap(),
                "--device",
                "cpu",
            ]);
            assert!(okay, "{kind}: {err}");
            std::fs::read(out.join("caption000_noise1.png")).unwrap()
        };
        let exported = draw("--model", &models, &d.join(format!("{kind}_drawn")));
        let trained = draw(
            "--run",
            &d.join(format!("{kind}_run")),
            &d.join(format!("{kind}_drawn_run")),
        );
        assert!(
            exported == trained,
            "{kind}: the export paints its run's picture"
        );
    }

    // A text encoder given beside the align run must be that run's.
    let vae = std::fs::read_to_string(generator_cfg(d, &data, &align_run, "vae")).unwrap();
    let mismatched = vae.replace(
        "  align:",
        "  text: {dim: 48, layers: 1, heads: 2, mlp: 64, max_len: 256}\n  align:",
    );
    let cfg = write(d, "vae_mismatched.yaml", mismatched);
    refused(
        "t2i",
        &cfg,
        &d.join("v1"),
        "model.text differs from the text encoder of model.align.run",
    );
}

/// A config counted in epochs (the GPU profile's) trains the steps its training split
/// needs, both align phases alike; steps and epochs together are refused before training.
#[test]
fn epochs_are_counted_over_the_training_split() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = tiny_dataset(d);
    let by_epochs = std::fs::read_to_string(align_cfg(d, &data))
        .unwrap()
        .replace(
            "pretrain: {train: {steps: 3,",
            "pretrain: {train: {epochs: 0.5,",
        )
        .replace("train: {steps: 6,", "train: {epochs: 1.5,");
    let cfg = write(d, "align_epochs.yaml", by_epochs);
    let run_dir = d.join("align_epochs");
    let (okay, out, err) = train_align(&cfg, &run_dir);
    assert!(okay, "{err}");
    let examples = ekphrasis::data::layout::Dataset::open(&data)
        .unwrap()
        .split_ids(ekphrasis::data::layout::Split::Train)
        .unwrap()
        .len();
    let steps = |epochs: f64| (epochs * examples as f64 / 8.0).ceil() as u64;
    for (section, epochs) in [("pretrain.train", 0.5), ("train", 1.5)] {
        let note = format!(
            "{section}.epochs {epochs}: {} steps over {examples}",
            steps(epochs)
        );
        assert!(err.contains(&note), "{note}: {err}");
    }
    assert!(
        out.contains(&format!("align trained: {} steps", steps(1.5))),
        "{out}"
    );
    // The run's config.yaml reads back: a captioner trains on its encoder.
    let cap = captioner_cfg(d, &data, &run_dir, "[8, 16]");
    train_ok("captioner", &cap, &d.join("captioner_on_epochs"));
    let both = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("train: {epochs: 1.5,", "train: {epochs: 1.5, steps: 6,");
    refused(
        "align",
        &write(d, "align_both.yaml", both),
        &d.join("a2"),
        "train.steps and train.epochs are both given",
    );
}

/// `eval align` trains a head on a finished align run's frozen place vectors and writes
/// each cell fact's validation accuracy; a run whose place grid is not the scenes' 3×3
/// is refused before any head trains.
#[test]
fn eval_align_reads_the_cells_facts_off_the_place_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = tiny_dataset(d);
    let three = std::fs::read_to_string(align_cfg(d, &data))
        .unwrap()
        .replace("places: 2", "places: 3");
    let cfg = write(d, "align_places3.yaml", three);
    let (two, nine) = (d.join("align_places2"), d.join("align_places3"));
    for (cfg, run_dir) in [(align_cfg(d, &data), &two), (cfg, &nine)] {
        let (okay, _, err) = train_align(&cfg, run_dir);
        assert!(okay, "{err}");
    }
    let eval = |run_dir: &Path, side: &str| {
        run(&[
            "eval",
            "align",
            "--run",
            run_dir.to_str().unwrap(),
            "--side",
            side,
            "--steps",
            "3",
            "--device",
            "cpu",
        ])
    };
    let (okay, _, err) = eval(&two, "text");
    assert!(!okay && err.contains("model.places is 2"), "{err}");
    for side in ["text", "image", "words"] {
        let (okay, out, err) = eval(&nine, side);
        assert!(okay, "{side}: {err}");
        let path = nine.join(format!("eval_places_{side}/metrics.json"));
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for fact in ["kind", "kind_held", "colour", "size"] {
            let a = m[fact].as_f64().unwrap_or(-1.0);
            assert!((0.0..=1.0).contains(&a), "{side} {fact}: {a} ({out})");
        }
        assert_eq!(
            m["captions"].as_f64(),
            Some(4.0),
            "{side}: the validation split"
        );
    }
}
