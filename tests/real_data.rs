//! A real dataset through the general path: Tux Paint's stamp drawings (Debian's
//! `tuxpaint-stamps-default`, unpacked by `.ci/run` and named by `EKPHRASIS_TUXPAINT`),
//! or, where the package is absent, a generated folder in its layout (nested folders, a
//! `.txt` beside each PNG whose first line is English and the rest translations).
//! prepare → tokenizer → contrastive model → captioner → generator → cycle, a few steps
//! each, with no scene facts anywhere.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// Up to `n` (PNG, description) pairs below `root`, in path order.
fn stamps(root: &Path, n: usize) -> Vec<(PathBuf, PathBuf)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "png") && p.with_extension("txt").exists()
            {
                out.push(p);
            }
        }
    }
    let mut found = vec![];
    walk(root, &mut found);
    found.sort();
    found
        .into_iter()
        .take(n)
        .map(|p| (p.clone(), p.with_extension("txt")))
        .collect()
}

/// A source folder of 24 drawings: Tux Paint's own when present, else generated ones.
fn source(dir: &Path) -> (PathBuf, bool) {
    let src = dir.join("stamps");
    let tux = std::env::var_os("EKPHRASIS_TUXPAINT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/tuxpaint/stamps"));
    let real = stamps(&tux, 24);
    if real.len() == 24 {
        for (png, txt) in &real {
            let rel = png.strip_prefix(&tux).unwrap();
            let to = src.join(rel);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(png, &to).unwrap();
            std::fs::copy(txt, to.with_extension("txt")).unwrap();
        }
        return (src, true);
    }
    let kinds = ["animals/cat", "animals/dog", "plants/tree", "vehicles/boat"];
    for i in 0..24u32 {
        let name = format!("{}{i}", kinds[i as usize % 4]);
        let png = src.join(format!("{name}.png"));
        std::fs::create_dir_all(png.parent().unwrap()).unwrap();
        let shade = (i * 10) as u8;
        image::RgbaImage::from_fn(40, 40, |x, y| {
            let inside = (x as i32 - 20).pow(2) + (y as i32 - 20).pow(2) < 150 + i as i32 * 4;
            image::Rgba([
                shade,
                255 - shade,
                (x * 6) as u8,
                if inside { 255 } else { 0 },
            ])
        })
        .save(&png)
        .unwrap();
        let word = name
            .rsplit('/')
            .next()
            .unwrap()
            .trim_end_matches(char::is_numeric);
        std::fs::write(
            png.with_extension("txt"),
            format!(
                "A drawing of a {word}, number {i}.\nfr.utf8=Un dessin.\nde.utf8=Eine Zeichnung.\n"
            ),
        )
        .unwrap();
    }
    (src, false)
}

#[test]
fn a_real_dataset_runs_the_general_path_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (src, real) = source(d);
    eprintln!(
        "real-data test on {}",
        if real {
            "Tux Paint's stamps"
        } else {
            "generated drawings"
        }
    );
    let data = d.join("data");
    let ds = data.to_str().unwrap();
    let (ok, _, err) = run(&[
        "data",
        "prepare",
        "--format",
        "imagefolder",
        "--src",
        src.to_str().unwrap(),
        "--size",
        "32",
        "--out",
        ds,
    ]);
    assert!(ok, "{err}");
    let captions: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(data.join("captions.json")).unwrap())
            .unwrap();
    assert!(captions.len() >= 20, "{captions:?}");
    // Translations are dropped, and folders stay in the ids.
    assert!(
        captions
            .values()
            .all(|c| !c.contains(".utf8=") && !c.is_empty()),
        "{captions:?}"
    );
    assert!(captions.keys().all(|k| k.contains('_')), "{captions:?}");
    train_tokenizer(&data, 48);

    let clip = d.join("clip");
    train_ok(
        "clip",
        &clip_cfg(d, &data).replace("max_len: 256", "max_len: 48"),
        &clip,
    );
    let cap = d.join("cap");
    let cap_cfg = write(d, "cap.yaml", format!(
        "data: {ds}\nseed: 0\nmodel: {{encoder: cnn, channels: [8, 16], dim: 32, layers: 1, heads: 2, mlp: 64, max_len: 48, dropout: 0.0, image_size: 32}}\ntrain: {{steps: 3, batch_size: 4, lr: 3.0e-3, warmup: 1, eval_every: 3}}\nloss: {{label_smoothing: 0.0, sampling_start: 0.8, sampling_fraction: 0.0}}\neval: {{subset: 2, decode: {{strategy: greedy, max_tokens: 16}}}}\nbest: {{name: loss}}\n"
    ));
    train_ok("captioner", &cap_cfg, &cap);
    let gen = d.join("gen");
    let gen_cfg = write(d, "vae.yaml", format!(
        "data: {ds}\nseed: 0\nmodel:\n  kind: vae\n  image_size: 32\n  text: {{dim: 32, layers: 1, heads: 2, mlp: 64, max_len: 48}}\n  generator: {{z_dim: 8, channels: [32, 16, 8], attention_max_side: 8}}\n  encoder_channels: [8, 16]\ntrain: {{steps: 3, batch_size: 4, lr: 1.0e-3, warmup: 1, eval_every: 3}}\neval: {{clip: {}, subset: 4}}\nbest: {{name: r_precision, higher_is_better: true}}\n",
        clip.display()
    ));
    train_ok("t2i", &gen_cfg, &gen);
    let (ok, _, err) = run(&[
        "eval",
        "captioner",
        "--run",
        cap.to_str().unwrap(),
        "--split",
        "test",
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    let m: std::collections::BTreeMap<String, f64> =
        serde_json::from_str(&std::fs::read_to_string(cap.join("eval_test/metrics.json")).unwrap())
            .unwrap();
    assert!(
        m.contains_key("bleu4") && !m.contains_key("attr_f1"),
        "{m:?}"
    );
    // The cycle, graded by the contrastive model alone (no probe off the embedded set).
    let report = d.join("report");
    let (ok, _, err) = run(&[
        "cycle",
        "--captioner",
        cap.to_str().unwrap(),
        "--generator",
        gen.to_str().unwrap(),
        "--clip",
        clip.to_str().unwrap(),
        "--out",
        report.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    assert!(report.join("index.html").exists() && report.join("metrics.json").exists());
}
