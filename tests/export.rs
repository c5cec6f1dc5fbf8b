//! TorchScript export: tiny runs of every exportable model are exported; the exported
//! modules give the trainer's outputs (same greedy and beam tokens, images within 1e-5
//! for the deterministic samplers, the same embeddings), the venv's Python loads every
//! `.pt` and agrees, the inference commands run on them, and broken exports are clean
//! errors.

mod common;
use common::*;
use ekphrasis::data::images::load_batch;
use ekphrasis::data::loader::to_float;
use ekphrasis::export::exported::{ExportedCaptioner, ExportedClip, ExportedPainter};
use ekphrasis::models::captioner::decode::{DecodeOptions, Strategy};
use ekphrasis::stages::t2i::Painter;
use ekphrasis::stages::{captioner, evaluators, t2i};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn ok(args: &[&str]) -> String {
    let (ok, out, err) = run(args);
    assert!(ok, "{args:?} failed: {err}");
    out
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Trains `stage` from `cfg` into `dir/<name>_run` and exports it to `dir/models/<name>`.
fn train_and_export(d: &Path, stage: &str, kind: &str, name: &str, cfg: &str) -> PathBuf {
    let run_dir = d.join(format!("{name}_run"));
    let out = d.join("models").join(name);
    let r = run_dir.to_str().unwrap();
    if !run_dir.join("done.json").exists() {
        ok(&["train", stage, "-c", cfg, "--run", r, "--device", "cpu"]);
    }
    let o = out.to_str().unwrap();
    let printed = ok(&[
        "export", "--run", r, "--out", o, "--kind", kind, "--device", "cpu",
    ]);
    assert!(printed.contains("exported"), "{printed}");
    out
}

/// Inputs and the trainer's outputs for the Python check, as .npy files.
struct PythonCases {
    dir: PathBuf,
    modules: Vec<serde_json::Value>,
}

impl PythonCases {
    fn npy(&self, name: &str, t: &Tensor) -> serde_json::Value {
        let kind = t.kind();
        let t = if kind == Kind::Bool {
            t.to_kind(Kind::Uint8)
        } else {
            t.shallow_clone()
        };
        t.contiguous().write_npy(self.dir.join(name)).unwrap();
        let mut v = serde_json::json!({ "npy": name });
        if kind == Kind::Bool {
            v["dtype"] = "bool".into();
        }
        v
    }

    fn case(&mut self, name: &str, model: &Path, module: &str, inputs: &[&Tensor], want: &Tensor) {
        let specs: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| self.npy(&format!("{name}_in{i}.npy"), t))
            .collect();
        let expected = format!("{name}_expected.npy");
        self.npy(&expected, want);
        self.modules.push(serde_json::json!({
            "name": name,
            "model": model,
            "module": module,
            "inputs": specs,
            "expected": expected,
            "atol": 1e-5,
        }));
    }
}

#[test]
fn exported_models_match_the_trainer_python_and_commands() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = tiny_dataset(d);
    let cap_cfg = tiny_captioner_config(d, &data, 4);
    let cap = train_and_export(
        d,
        "captioner",
        "captioner",
        "cap",
        cap_cfg.to_str().unwrap(),
    );
    let clip = train_and_export(d, "clip", "clip", "clip", &clip_cfg(d, &data));
    let probe = train_and_export(d, "probe", "probe", "probe", &probe_cfg(d, &data));
    let vae = train_and_export(d, "t2i", "t2i", "vae", &t2i_cfg(d, &data));
    let diffusion_cfg = std::fs::read_to_string(t2i_cfg(d, &data))
        .unwrap()
        .replace(
            "kind: vae\n  image_size: 32\n",
            "kind: diffusion\n  image_size: 16\n  unet: {channels: [8, 16], attention_max_side: 8}\n  diffusion: {sample_steps: 3, sampler: ddim, eta: 0.0, guidance: 2.5}\n",
        )
        .replace("  generator: {z_dim: 8, channels: [32, 16, 8], attention_max_side: 8}\n", "");
    let diffusion_cfg = write(d, "diffusion.yaml", diffusion_cfg);
    let diffusion = train_and_export(d, "t2i", "t2i", "diffusion", &diffusion_cfg);
    let facts = train_and_export(d, "t2i", "t2i", "facts", &t2i_facts_cfg(d, &data));

    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cap.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["kind"], "captioner");
    assert_eq!(
        manifest["ema"], true,
        "the tiny captioner keeps an EMA shadow"
    );
    assert!(cap.join("tokenizer.json").exists() && cap.join("step.pt").exists());

    let cpu = Device::Cpu;
    let images: Vec<PathBuf> = std::fs::read_dir(data.join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .take(5)
        .collect();
    let mut py = PythonCases {
        dir: d.join("python_cases"),
        modules: vec![],
    };
    std::fs::create_dir_all(&py.dir).unwrap();

    // Captioner: the same tokens as the trainer's decoder, greedy and beam, with a
    // batch size (5) other than the one traced (2).
    let lc = captioner::load_run(&d.join("cap_run"), "best", cpu).unwrap();
    let ec = ExportedCaptioner::load(&cap, cpu).unwrap();
    let x = to_float(&load_batch(&images, 32).unwrap(), cpu);
    let t = &lc.tok;
    for opts in [
        DecodeOptions::default(),
        DecodeOptions {
            strategy: Strategy::Beam,
            beam: 3,
            max_tokens: 20,
            ..Default::default()
        },
        DecodeOptions {
            no_repeat_ngram: 2,
            repetition_penalty: 1.3,
            max_tokens: 30,
            ..Default::default()
        },
    ] {
        let want = lc.model.generate(&x, &opts, t.bos, t.eos, t.pad);
        assert_eq!(ec.generate(&x, &opts).unwrap(), want, "{opts:?}");
    }
    x.write_npy(py.dir.join("cap_images.npy")).unwrap();
    let greedy_ids = lc
        .model
        .generate(&x, &DecodeOptions::default(), t.bos, t.eos, t.pad);

    // Generators: equal images for the same noise (VAE; diffusion with DDIM, η = 0, and
    // guidance, which runs the null condition too).
    let texts = vec![
        "A small red house stands in the bottom left.".to_string(),
        "A blue boat on a calm sea.".to_string(),
        "A yellow sun.".to_string(),
    ];
    for (name, exported) in [("vae", &vae), ("diffusion", &diffusion), ("facts", &facts)] {
        let lt = t2i::load_run(&d.join(format!("{name}_run")), cpu).unwrap();
        let ep = ExportedPainter::load(exported, cpu).unwrap();
        let tokens = ep.tokens(&texts).unwrap();
        let pad = lt.tok.pad;
        let cond = lt.model.condition(&tokens, pad, false);
        tch::manual_seed(5);
        let z = lt.model.noise(3, cpu);
        let want = lt.model.sample(&cond, &z);
        let got = ep
            .paint(&ep.condition_of(&tokens, pad).unwrap(), &z)
            .unwrap();
        assert!(
            max_diff(&want, &got) < 1e-5,
            "{name}: {}",
            max_diff(&want, &got)
        );
        if name == "facts" {
            // The same traced modules as the VAE's: the Python cases cover those.
            continue;
        }
        let states = Tensor::cat(&[cond.global.unsqueeze(1), cond.tokens.shallow_clone()], 1);
        py.case(
            &format!("{name}_text"),
            exported,
            "text_encoder.pt",
            &[&tokens],
            &states,
        );
        if name == "vae" {
            py.case(
                "vae_generator",
                exported,
                "generator.pt",
                &[&z, &cond.global, &cond.tokens, &cond.mask],
                &want,
            );
        } else {
            let t = Tensor::from_slice(&[0i64, 5, 9]);
            let out = lt.model.denoise_at(&z, &t, &cond).unwrap();
            py.case(
                "diffusion_denoiser",
                exported,
                "denoiser.pt",
                &[&z, &t, &cond.global, &cond.tokens, &cond.mask],
                &out,
            );
        }
    }

    // Contrastive towers and the probe.
    let lclip = evaluators::load_clip(&d.join("clip_run"), cpu).unwrap();
    let eclip = ExportedClip::load(&clip, cpu).unwrap();
    let u8_images = load_batch(&images, 32).unwrap();
    let want = lclip.model.embed_images(&to_float(&u8_images, cpu), false);
    assert!(max_diff(&want, &eclip.embed_images(&u8_images).unwrap()) < 1e-5);
    let tokens = evaluators::tokenize_batch(&lclip.tok, &texts, 256).unwrap();
    let want_t = lclip.model.embed_texts(&tokens, lclip.tok.pad, false);
    assert!(max_diff(&want_t, &eclip.embed_texts(&texts).unwrap()) < 1e-5);
    let xf = to_float(&u8_images, cpu);
    py.case("clip_image", &clip, "image_encoder.pt", &[&xf], &want);
    let feats = lclip.model.image_features(&xf, false);
    py.case("clip_features", &clip, "image_features.pt", &[&xf], &feats);
    py.case("clip_text", &clip, "text_encoder.pt", &[&tokens], &want_t);
    let lp = evaluators::load_probe(&d.join("probe_run"), cpu).unwrap();
    let (g, c) = tch::no_grad(|| lp.model.head_logits(&xf));
    let logits = Tensor::cat(&[g, c.flatten(1, 2)], 1);
    py.case("probe", &probe, "probe.pt", &[&xf], &logits);

    // The venv's Python loads every module and agrees.
    match python() {
        Some(python) => {
            let cases = serde_json::json!({
                "modules": py.modules,
                "captioner": { "model": cap, "images": "cap_images.npy", "ids": greedy_ids },
            });
            let path = py.dir.join("cases.json");
            std::fs::write(&path, serde_json::to_string_pretty(&cases).unwrap()).unwrap();
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_export.py");
            let out = std::process::Command::new(python)
                .arg(script)
                .arg(&path)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(text.matches("ok ").count(), py.modules.len() + 1, "{text}");
        }
        None => eprintln!(
            "SKIPPED the Python check: EKPHRASIS_PYTHON not set (run through `make test`)"
        ),
    }

    // The inference commands on exported models.
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let img: Vec<String> = images.iter().take(2).map(|p| s(p)).collect();
    let out = ok(&[
        "caption",
        "--model",
        &s(&cap),
        &img[0],
        &img[1],
        "--strategy",
        "beam",
        "--device",
        "cpu",
    ]);
    assert_eq!(out.lines().count(), 2, "{out}");
    let drawn = d.join("drawn");
    ok(&[
        "draw",
        "--model",
        &s(&diffusion),
        "A red house.",
        "--n",
        "2",
        "--sampler",
        "ddpm",
        "--out",
        &s(&drawn),
        "--device",
        "cpu",
    ]);
    assert!(drawn.join("caption000_noise1.png").exists());
    let cyc = d.join("cycle_out");
    let out = ok(&[
        "cycle",
        &img[0],
        &img[1],
        "--captioner",
        &s(&cap),
        "--generator",
        &s(&vae),
        "--out",
        &s(&cyc),
        "--device",
        "cpu",
    ]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(cyc.join("cycle.json").exists());
    assert_eq!(
        std::fs::read_dir(&cyc).unwrap().count(),
        5,
        "2 captions, 2 pictures, cycle.json"
    );
    score_command(d, &data, &clip, &vae);
    let emb = d.join("emb");
    ok(&[
        "embed",
        "--model",
        &s(&clip),
        "--images",
        &img[0],
        &img[1],
        "--out",
        &s(&emb),
        "--device",
        "cpu",
    ]);
    assert_eq!(
        Tensor::read_npy(emb.join("embeddings.npy")).unwrap().size()[0],
        2
    );
    let out = ok(&[
        "retrieve",
        "--model",
        &s(&clip),
        "--query",
        "A red house.",
        "--images",
        &img[0],
        &img[1],
        "--k",
        "1",
        "--device",
        "cpu",
    ]);
    assert_eq!(out.lines().count(), 1, "{out}");

    // Clean errors: the wrong kind, a run folder that is not under runs/<kind>/, a
    // missing file, a manifest from a newer format.
    assert_clean_error(
        &["caption", "--model", &s(&vae), &img[0], "--device", "cpu"],
        "needs a captioner model",
    );
    assert_clean_error(
        &[
            "export",
            "--run",
            &s(&d.join("cap_run")),
            "--out",
            &s(&d.join("x")),
            "--device",
            "cpu",
        ],
        "--kind",
    );
    // A failed export (a captioner run exported as a contrastive model) leaves nothing.
    let bad = d.join("models/bad");
    assert_clean_error(
        &[
            "export",
            "--run",
            &s(&d.join("cap_run")),
            "--out",
            &s(&bad),
            "--kind",
            "clip",
            "--device",
            "cpu",
        ],
        "",
    );
    assert!(!bad.exists() && !d.join("models/bad.partial").exists());
    std::fs::remove_file(clip.join("text_encoder.pt")).unwrap();
    assert_clean_error(
        &[
            "retrieve",
            "--model",
            &s(&clip),
            "--query",
            "x",
            "--images",
            &img[0],
        ],
        "text_encoder.pt, which is missing",
    );
    let m = cap.join("manifest.json");
    let text = std::fs::read_to_string(&m)
        .unwrap()
        .replace("\"format_version\": 1", "\"format_version\": 99");
    std::fs::write(&m, text).unwrap();
    assert_clean_error(
        &["caption", "--model", &s(&cap), &img[0], "--device", "cpu"],
        "format_version 99",
    );
}

/// `score`: pictures drawn two per caption, paired in name order, and real images named
/// in an `image` column, against the exported contrastive model; the CSV's distances are
/// 1 − cos of the model's own embeddings.
fn score_command(d: &Path, data: &Path, clip: &Path, painter: &Path) {
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let captions: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("captions.json")).unwrap())
            .unwrap();
    let ids = ["synth_00000", "synth_00001", "synth_00002"];
    let text = |id: &str| captions[id].as_str().unwrap().to_string();
    let mut w = csv::Writer::from_path(d.join("score_captions.csv")).unwrap();
    w.write_record(["caption"]).unwrap();
    for id in ids {
        w.write_record([text(id)]).unwrap();
    }
    w.flush().unwrap();
    let drawn = d.join("score_drawn");
    let csv_path = s(&d.join("score_captions.csv"));
    ok(&[
        "draw",
        "--model",
        &s(painter),
        "--captions",
        &csv_path,
        "--n",
        "2",
        "--grid",
        "--out",
        &s(&drawn),
        "--device",
        "cpu",
    ]);
    assert!(
        drawn.join("grid.png").exists(),
        "the sheet lies beside the pictures"
    );
    let out = d.join("drawn_score.csv");
    let line = ok(&[
        "score",
        "--images",
        &s(&drawn),
        "--captions",
        &csv_path,
        "--model",
        &s(clip),
        "--out",
        &s(&out),
        "--device",
        "cpu",
    ]);
    assert!(
        line.contains("scored 6 images against 3 distinct captions"),
        "{line}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
            .unwrap();
    let is = summary["inception_style"].as_f64().unwrap();
    assert!((1.0..=3.0 + 1e-9).contains(&is), "{summary}");
    let rows = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        csv::Reader::from_reader(rows.as_bytes()).records().count(),
        6
    );

    // Real images named in an `image` column: the distances are the model's own.
    let named = d.join("score_named.csv");
    let mut w = csv::Writer::from_path(&named).unwrap();
    w.write_record(["image", "caption"]).unwrap();
    for id in ids {
        w.write_record([format!("{id}.png"), text(id)]).unwrap();
    }
    w.flush().unwrap();
    let out = d.join("real_score.csv");
    ok(&[
        "score",
        "--images",
        &s(&data.join("images")),
        "--captions",
        &s(&named),
        "--model",
        &s(clip),
        "--out",
        &s(&out),
        "--device",
        "cpu",
    ]);
    let m = ExportedClip::load(clip, Device::Cpu).unwrap();
    let paths: Vec<PathBuf> = ids
        .iter()
        .map(|id| data.join("images").join(format!("{id}.png")))
        .collect();
    let img = m
        .embed_images(&load_batch(&paths, m.manifest.image_size as u32).unwrap())
        .unwrap();
    let txt = m
        .embed_texts(&ids.iter().map(|id| text(id)).collect::<Vec<_>>())
        .unwrap();
    let want: Vec<f64> =
        Vec::try_from((img * txt).sum_dim_intlist(1, false, Kind::Double).neg() + 1.0).unwrap();
    let mut r = csv::Reader::from_path(&out).unwrap();
    for (rec, want) in r.records().zip(want) {
        let got: f64 = rec.unwrap()[2].parse().unwrap();
        assert!((got - want).abs() < 1e-5, "distance {got} vs {want}");
    }

    // Bad input is named before the model loads.
    let refused = |captions: &Path, expect: &str| {
        assert_clean_error(
            &[
                "score",
                "--images",
                &s(&drawn),
                "--captions",
                &s(captions),
                "--model",
                &s(clip),
            ],
            expect,
        );
    };
    let bad = d.join("score_bad.csv");
    std::fs::write(&bad, "image,caption\nnope.png,a house\n").unwrap();
    refused(&bad, "row 2 names image \"nope.png\"");
    refused(&named, "not a file");
    std::fs::write(&bad, "caption\na\nb\nc\nd\n").unwrap();
    refused(&bad, "4 captions");
}
