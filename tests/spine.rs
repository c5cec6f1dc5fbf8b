//! The whole spine on tiny data: captioner, contrastive model, probe and generator each
//! train a few steps; `eval t2i`, `draw` and `cycle` run; the report is well formed and
//! loads in a real browser; bad inputs to the cycle are clean errors.

mod common;
use common::*;
use std::path::Path;

/// The GAN (two optimizers, interrupted and resumed) and diffusion (drawn with sampler
/// options) train, evaluate and draw through the same commands as the VAE.
fn other_generators(d: &Path, data: &Path) {
    let vae = std::fs::read_to_string(t2i_cfg(d, data)).unwrap();
    let head = "kind: vae\n  image_size: 32\n";
    assert!(vae.contains(head));
    let gan = vae.replace(
        head,
        "kind: gan\n  image_size: 32\n  gan: {disc_channels: [8, 16], interpolate: true, truncation: 1.5}\n",
    );
    let diffusion = vae.replace(
        head,
        "kind: diffusion\n  image_size: 16\n  unet: {channels: [8, 16], attention_max_side: 8}\n  diffusion: {sample_steps: 3}\n",
    ).replace("  generator: {z_dim: 8, channels: [32, 16, 8], attention_max_side: 8}\n", "");
    let facts = std::fs::read_to_string(t2i_facts_cfg(d, data)).unwrap();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    for (name, cfg) in [("gan", gan), ("diffusion", diffusion), ("facts", facts)] {
        let cfg_path = write(d, &format!("{name}.yaml"), cfg);
        let run = p(&format!("{name}_run"));
        let args = [
            "train", "t2i", "-c", &cfg_path, "--run", &run, "--device", "cpu",
        ];
        if name == "gan" || name == "facts" {
            // Stop after step 2, then resume. The GAN gets both optimizers' moments
            // back; the facts VAE stops in its text side's phase, and both phases finish.
            let out = bin()
                .args(args)
                .env("EKPHRASIS_STOP_AFTER_STEP", "2")
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && err.contains("interrupted at step 2"),
                "{err}"
            );
            let mut resumed = args.to_vec();
            resumed.push("--resume");
            ok(&resumed);
            if name == "facts" {
                assert!(Path::new(&run).join("text/done.json").exists());
            }
        } else {
            ok(&args);
        }
        let out = ok(&[
            "eval", "t2i", "--run", &run, "--split", "test", "--device", "cpu",
        ]);
        assert!(out.contains("r_precision"), "{name}: {out}");
        assert_eq!(
            out.contains("reader_fact_accuracy"),
            name == "facts",
            "{out}"
        );
    }
    let out_dir = p("drawn_diffusion");
    ok(&[
        "draw",
        "--run",
        &p("diffusion_run"),
        "A red house.",
        "--n",
        "2",
        "--sampler",
        "ddpm",
        "--sample-steps",
        "4",
        "--guidance",
        "3",
        "--out",
        &out_dir,
        "--device",
        "cpu",
    ]);
    assert!(Path::new(&out_dir).join("caption000_noise1.png").exists());
    // A text longer than the text encoder's context is cut, with a warning.
    let long = "A small red house stands in the bottom left. ".repeat(60);
    let (okay, _, err) = run(&[
        "draw",
        "--run",
        &p("diffusion_run"),
        &long,
        "--n",
        "1",
        "--out",
        &out_dir,
        "--device",
        "cpu",
    ]);
    assert!(okay && err.contains("only the first 256 are used"), "{err}");
    let (okay, _, err) = run(&[
        "draw",
        "--run",
        &p("gan_run"),
        "A red house.",
        "--guidance",
        "3",
        "--out",
        &out_dir,
        "--device",
        "cpu",
    ]);
    assert!(!okay && err.contains("diffusion runs only"), "{err}");
}

/// Seed 002's bridge: trains (autoencoder, then the invertible MLP), evaluates, and a
/// latent that is not as wide as the sentence embedding is a config error.
fn invertible_bridge(d: &Path, data: &Path) {
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    let cfg = |latent_channels: u32| {
        format!(
            "data: {}\nseed: 0\ntext_embedder: {}\nautoencoder:\n  model: {{image_size: 32, channels: [8, 16, 16], latent_channels: {latent_channels}}}\n  train: {{steps: 4, batch_size: 8, lr: 1.0e-3, warmup: 1, eval_every: 4}}\nbridge:\n  layers: 2\n  bidirectional: 0.5\n  train: {{steps: 6, batch_size: 8, lr: 1.0e-3, warmup: 1, eval_every: 3}}\neval: {{clip: {}, probe: {}, subset: 4}}\n",
            data.display(), p("clip_run"), p("clip_run"), p("probe_run")
        )
    };
    // The tiny contrastive model embeds in 16 dimensions: 1 × 4 × 4 fits, 2 × 4 × 4 not.
    let bad = write(d, "inv_bad.yaml", cfg(2));
    assert_clean_error(
        &[
            "train",
            "invertible",
            "-c",
            &bad,
            "--run",
            &p("inv_bad"),
            "--device",
            "cpu",
        ],
        "must be equal",
    );
    let good = write(d, "inv.yaml", cfg(1));
    ok(&[
        "train",
        "invertible",
        "-c",
        &good,
        "--run",
        &p("inv_run"),
        "--device",
        "cpu",
    ]);
    let out = ok(&[
        "eval",
        "invertible",
        "--run",
        &p("inv_run"),
        "--device",
        "cpu",
    ]);
    for key in [
        "forward_mse",
        "roundtrip_max_error",
        "inverted_r_precision",
        "inverted_probe_attr_accuracy",
        "noisy_prediction_psnr",
    ] {
        assert!(out.contains(key), "eval invertible prints {key}: {out}");
    }
    assert!(d.join("inv_run/eval_test/grid.png").exists());
}

/// Seed 001's unified generator (the shipped kind: both decoders told the latent's
/// facts): trains, evaluates its prior samples, and generates the same image and caption
/// for the same seed, alone or in a batch.
fn unified_generator(d: &Path, data: &Path) {
    use ekphrasis::stages::unified::{MultimodalGenerator, SceneChoice};
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    let cfg = write(d, "unified.yaml", format!(
        "data: {}\nseed: 0\nmodel:\n  latent_dim: 32\n  memory_tokens: 4\n  captioner: {{encoder: cnn, channels: [8, 16], dim: 32, layers: 1, heads: 2, mlp: 64, max_len: 256, image_size: 32}}\n  generator: {{z_dim: 32, channels: [16, 16, 8], attention_max_side: 8}}\n  beta_warmup: 2\n  facts: true\n  fact_weight: 10\n  caption_memory: false\ntrain: {{steps: 4, batch_size: 8, lr: 1.0e-3, warmup: 1, eval_every: 4}}\neval:\n  clip: {}\n  probe: {}\n  samples: 6\n  decode: {{strategy: greedy, max_tokens: 24}}\nbest: {{name: attribute_agreement, higher_is_better: true}}\n",
        data.display(), p("clip_run"), p("probe_run")
    ));
    ok(&[
        "train",
        "unified",
        "-c",
        &cfg,
        "--run",
        &p("unified_run"),
        "--device",
        "cpu",
    ]);
    let run = p("unified_run");
    // `eval unified` on six prior samples, with `extra` arguments.
    let eval_unified = |extra: &[&str]| {
        let mut args = vec![
            "eval", "unified", "--run", &run, "--n", "6", "--device", "cpu",
        ];
        args.extend_from_slice(extra);
        ok(&args)
    };
    let out = eval_unified(&[]);
    for key in [
        "attribute_agreement",
        "clip_score",
        "fd_own",
        "degenerate_fraction",
        "diversity",
        "distinct_2",
        "image_objects",
        "caption_objects",
    ] {
        assert!(out.contains(key), "eval unified prints {key}: {out}");
    }
    let gen_dir = p("generated");
    ok(&[
        "generate",
        "--run",
        &p("unified_run"),
        "--seeds",
        "3..6",
        "--out",
        &gen_dir,
        "--device",
        "cpu",
    ]);
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&gen_dir).join("metadata.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta.as_array().unwrap().len(), 3);
    assert!(Path::new(&gen_dir).join("seed4.png").exists());
    assert_clean_error(
        &[
            "generate",
            "--run",
            &p("unified_run"),
            "--seeds",
            "5..x",
            "--device",
            "cpu",
        ],
        "--seeds",
    );

    // Scenes drawn from the fact heads instead of their most likely values.
    eval_unified(&["--scene", "sampled"]);
    assert!(d
        .join("unified_run/eval_prior_sampled/metrics.json")
        .exists());

    // The library API, for either scene choice: per-seed determinism, and a batch equals
    // single calls.
    let mut g = MultimodalGenerator::load(Path::new(&p("unified_run")), tch::Device::Cpu).unwrap();
    for scene in [SceneChoice::MostLikely, SceneChoice::Sampled] {
        g.set_scene(scene).unwrap();
        let a = g.generate(7);
        let b = g.generate(7);
        assert!(a.image.equal(&b.image) && a.caption == b.caption);
        assert_eq!(a.image.size(), vec![3, 32, 32]);
        let batch = g.generate_batch(&[7, 8]);
        let single8 = g.generate(8);
        let close = |x: &tch::Tensor, y: &tch::Tensor| {
            (x.to_kind(tch::Kind::Float) - y.to_kind(tch::Kind::Float))
                .abs()
                .max()
                .double_value(&[])
                <= 1.0
        };
        assert!(close(&batch[0].image, &a.image) && close(&batch[1].image, &single8.image));
        assert_eq!(batch[0].caption, a.caption);
        assert_eq!(batch[1].caption, single8.caption);
        let (s, meta) = g.generate_with_metadata(7);
        assert_eq!(meta["seed"], 7);
        assert_eq!(meta["caption"], s.caption.as_str());
        assert_eq!(meta["scene"], serde_json::to_value(scene).unwrap());
    }
}

fn ok(args: &[&str]) -> String {
    let (ok, out, err) = run(args);
    assert!(ok, "{args:?} failed: {err}");
    out
}

#[test]
fn tiny_spine_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = tiny_dataset(d);
    let cap_cfg = tiny_captioner_config(d, &data, 4);
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    ok(&[
        "train",
        "captioner",
        "-c",
        cap_cfg.to_str().unwrap(),
        "--run",
        &p("cap_run"),
        "--device",
        "cpu",
    ]);
    ok(&[
        "train",
        "clip",
        "-c",
        &clip_cfg(d, &data),
        "--run",
        &p("clip_run"),
        "--device",
        "cpu",
    ]);
    let out = ok(&[
        "train",
        "probe",
        "-c",
        &probe_cfg(d, &data),
        "--run",
        &p("probe_run"),
        "--device",
        "cpu",
    ]);
    assert!(out.contains("+ 16 rendered scenes"), "{out}");
    ok(&[
        "train",
        "t2i",
        "-c",
        &t2i_cfg(d, &data),
        "--run",
        &p("t2i_run"),
        "--device",
        "cpu",
    ]);
    assert!(
        d.join("t2i_run/samples/step_000004.png").exists(),
        "sample grid written"
    );
    other_generators(d, &data);

    let out = ok(&[
        "eval",
        "t2i",
        "--run",
        &p("t2i_run"),
        "--split",
        "test",
        "--device",
        "cpu",
    ]);
    for key in [
        "clip_score",
        "r_precision",
        "fd_own",
        "kid_own",
        "probe_attr_accuracy",
        "probe_acc_presence",
        "probe_acc_size",
        "is_style",
        "diversity",
        "diversity_data",
        "fd_own_mean_image_baseline",
    ] {
        assert!(out.contains(key), "eval t2i prints {key}: {out}");
    }
    let out = ok(&[
        "eval",
        "clip",
        "--run",
        &p("clip_run"),
        "--split",
        "test",
        "--device",
        "cpu",
    ]);
    assert!(
        out.contains("i2t_r1") && out.contains("t2i_median_rank"),
        "{out}"
    );
    for f in [
        "pca.png",
        "tsne.png",
        "plots.html",
        "projector/projector_config.pbtxt",
        "projector/sprite.png",
        "projector/tensors.tsv",
    ] {
        assert!(d.join("clip_run/eval_test").join(f).exists(), "{f}");
    }
    ok(&[
        "eval",
        "captioner",
        "--run",
        &p("cap_run"),
        "--split",
        "val",
        "--device",
        "cpu",
    ]);

    // draw: one text, N noises, and a captions CSV as a grid.
    ok(&[
        "draw",
        "--run",
        &p("t2i_run"),
        "A small red house stands in the bottom left.",
        "--n",
        "3",
        "--out",
        &p("drawn"),
        "--device",
        "cpu",
    ]);
    assert_eq!(std::fs::read_dir(d.join("drawn")).unwrap().count(), 3);
    let csv = write(
        d,
        "captions.csv",
        "caption\nA red sun.\nA blue boat on the sea.\n".into(),
    );
    ok(&[
        "draw",
        "--run",
        &p("t2i_run"),
        "--captions",
        &csv,
        "--n",
        "2",
        "--grid",
        "--out",
        &p("drawn2"),
        "--device",
        "cpu",
    ]);
    assert!(d.join("drawn2/grid.png").exists());
    assert_clean_error(
        &["draw", "--run", &p("t2i_run"), "   ", "--device", "cpu"],
        "empty",
    );

    invertible_bridge(d, &data);
    unified_generator(d, &data);

    // The cycle and its report.
    let report = d.join("report");
    let cycle = |extra: &[&str]| {
        let mut a: Vec<String> = [
            "cycle",
            "--captioner",
            &p("cap_run"),
            "--generator",
            &p("t2i_run"),
            "--clip",
            &p("clip_run"),
            "--probe",
            &p("probe_run"),
            "--split",
            "test",
            "--device",
            "cpu",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let args = cycle(&[
        "--out",
        report.to_str().unwrap(),
        "--invertible",
        &p("inv_run"),
    ]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("metrics.json")).unwrap())
            .unwrap();
    for col in [
        "cycle",
        "ceiling (true caption)",
        "floor (random caption)",
        "nearest neighbour",
        "cycle (invertible bridge)",
    ] {
        let m = &metrics[col];
        for k in [
            "r_precision",
            "psnr",
            "ssim",
            "colour_histogram",
            "probe_attr_agreement",
            "clip_image_image",
        ] {
            assert!(m[k].is_number(), "{col}.{k} in metrics.json");
        }
        // Every per-image figure carries its spread.
        for k in ["r_precision", "psnr", "clip_image_image", "clip_image_text"] {
            let se = m[format!("{k}_se")].as_f64().unwrap_or(-1.0);
            assert!(se >= 0.0 && se.is_finite(), "{col}.{k}_se in metrics.json");
        }
    }
    assert!(metrics["cycle"]["second_pass_bleu4"].is_number());
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(
        html.contains("cycle (invertible bridge)"),
        "the bridge has its column"
    );
    assert!(
        html.contains(" ± ") && !html.contains("<td>psnr_se</td>"),
        "spreads shown beside their figures, not as rows"
    );
    assert!(
        html.contains("<h2>Answer</h2>") && html.matches("<img").count() >= 4 * 3 + 4 * 5,
        "gallery and grid present"
    );
    browser_check(&report.join("index.html"));

    // The headline figures, and another report's beside them.
    let headline: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("headline.json")).unwrap())
            .unwrap();
    assert!(
        headline["figures"]["cycle_r_precision"].is_number(),
        "{headline}"
    );
    let second = d.join("report_beside");
    let beside = cycle(&[
        "--out",
        second.to_str().unwrap(),
        "--beside",
        report.to_str().unwrap(),
    ]);
    ok(&beside.iter().map(String::as_str).collect::<Vec<_>>());
    let html = std::fs::read_to_string(second.join("index.html")).unwrap();
    let name = report.file_name().unwrap().to_str().unwrap();
    assert!(
        html.contains(&format!("<th>{name}<br>")) && html.contains("<th>report_beside<br>"),
        "both reports head a column"
    );
    let no_headline = cycle(&["--out", second.to_str().unwrap(), "--beside", &p("cap_run")]);
    assert_clean_error(
        &no_headline.iter().map(String::as_str).collect::<Vec<_>>(),
        "headline.json does not exist",
    );

    // Bad inputs: a missing model folder, and an empty split.
    let missing = cycle(&["--out", report.to_str().unwrap()])
        .into_iter()
        .map(|s| if s.ends_with("t2i_run") { p("nope") } else { s })
        .collect::<Vec<_>>();
    assert_clean_error(
        &missing.iter().map(String::as_str).collect::<Vec<_>>(),
        "nope",
    );
    std::fs::write(data.join("splits/test_ids.txt"), "\n").unwrap();
    assert_clean_error(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        "lists no image ids",
    );
}

#[test]
fn cycle_refuses_models_with_different_tokenizers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = tiny_dataset(&d.join("a"));
    let b = d.join("b/data");
    std::fs::create_dir_all(d.join("b")).unwrap();
    ok(&[
        "data",
        "synth",
        "--out",
        b.to_str().unwrap(),
        "--n",
        "40",
        "--size",
        "32",
    ]);
    std::fs::write(
        d.join("b/tok.yaml"),
        "vocab_size: 320\nmin_frequency: 1\nmax_len: 256\n",
    )
    .unwrap();
    ok(&[
        "tokenizer",
        "train",
        "--data",
        b.to_str().unwrap(),
        "-c",
        d.join("b/tok.yaml").to_str().unwrap(),
    ]);
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    ok(&[
        "train",
        "captioner",
        "-c",
        tiny_captioner_config(&d.join("b"), &b, 2).to_str().unwrap(),
        "--run",
        &p("cap_b"),
        "--device",
        "cpu",
    ]);
    let da = d.join("a");
    ok(&[
        "train",
        "clip",
        "-c",
        &clip_cfg(&da, &a),
        "--run",
        &p("a/clip_run"),
        "--device",
        "cpu",
    ]);
    ok(&[
        "train",
        "probe",
        "-c",
        &probe_cfg(&da, &a),
        "--run",
        &p("a/probe_run"),
        "--device",
        "cpu",
    ]);
    ok(&[
        "train",
        "t2i",
        "-c",
        &t2i_cfg(&da, &a),
        "--run",
        &p("t2i_a"),
        "--device",
        "cpu",
    ]);
    assert_clean_error(
        &[
            "cycle",
            "--captioner",
            &p("cap_b"),
            "--generator",
            &p("t2i_a"),
            "--clip",
            &p("a/clip_run"),
            "--probe",
            &p("a/probe_run"),
            "--out",
            &p("r"),
            "--device",
            "cpu",
        ],
        "different tokenizers",
    );
}

/// Loads the page in headless Chromium: no console errors, every image decoded.
fn browser_check(page: &Path) {
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find(|b| which(b))
    else {
        eprintln!("\n*** SKIPPED: no chromium on this machine; the report was not checked in a browser ***\n");
        return;
    };
    // The page reports its own state into the DOM, which --dump-dom prints.
    let probe_page = page.with_file_name("browser_check.html");
    let html = std::fs::read_to_string(page).unwrap().replace(
        "</body>",
        "<script>window.addEventListener('load',()=>{const imgs=[...document.images];const bad=imgs.filter(i=>!(i.complete&&i.naturalWidth>0)).length;\
         document.body.setAttribute('data-check',`images=${imgs.length} broken=${bad} errors=${window.__errors||0}`)});\
         window.addEventListener('error',()=>{window.__errors=(window.__errors||0)+1});</script></body>",
    );
    std::fs::write(&probe_page, html).unwrap();
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!(
            "--user-data-dir={}",
            page.with_file_name("chrome-profile").display()
        ))
        .args(["--virtual-time-budget=5000", "--dump-dom"])
        .arg(format!("file://{}", probe_page.display()))
        .output()
        .expect("running chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    let check = dom
        .split("data-check=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or("");
    assert!(
        check.starts_with("images=") && check.contains("broken=0") && check.ends_with("errors=0"),
        "browser check: {check:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n: usize = check
        .trim_start_matches("images=")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(n > 0);
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(bin).is_file()))
}
