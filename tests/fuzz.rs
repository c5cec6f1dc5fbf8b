//! Mutation fuzzing of every parser of user input: YAML configs and `--set` overrides,
//! the captions CSV, COCO JSON, metadata.jsonl, the art CSVs, tokenizer files, image
//! files, the describe journal and checkpoints. Each mutated input must give a clean
//! error or a counted rejection: never a panic, never an out-of-memory.
//!
//! Time-bounded: `EKPHRASIS_FUZZ_SECONDS` per target (default 2 in `make test`;
//! `make fuzz` runs longer). Failing inputs are saved under target/fuzz-failures/.

mod common;

use common::fuzz_budget;
use ekphrasis::data::prepare::{prepare, Format, Multi, PrepareOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

const INTERESTING: [&[u8]; 14] = [
    b"\0",
    b"\xff\xfe",
    b"\"",
    b",",
    b"\n",
    b"{",
    b"}",
    b":",
    b"-1",
    b"99999999999999999999",
    b"1e308",
    b"NaN",
    b"\xe9",
    b"../../etc/passwd",
];

/// One random mutation of `seed`: flips, inserts, deletions, truncation, duplication.
fn mutate(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        let n = v.len();
        let at = if n == 0 { 0 } else { rng.gen_range(0..=n) };
        match rng.gen_range(0..6) {
            0 if n > 0 => {
                let i = rng.gen_range(0..n);
                v[i] ^= 1 << rng.gen_range(0..8);
            }
            1 => {
                let s = INTERESTING[rng.gen_range(0..INTERESTING.len())];
                v.splice(at..at, s.iter().copied());
            }
            2 if n > 0 => {
                let end = (at + rng.gen_range(1..16)).min(n);
                v.drain(at.min(end)..end);
            }
            3 => v.truncate(at),
            4 if n > 0 => {
                let end = (at + rng.gen_range(1..64)).min(n);
                let chunk: Vec<u8> = v[at.min(end)..end].to_vec();
                v.splice(at..at, chunk);
            }
            _ => {
                let b: u8 = rng.gen();
                v.insert(at, b);
            }
        }
    }
    v
}

/// Runs `check` on mutations of `seed` until the budget is spent; returns (inputs,
/// rejected cleanly). A panic fails the test and keeps the input.
fn fuzz(
    name: &str,
    seed: &[u8],
    mut check: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> (usize, usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(name.bytes().map(u64::from).sum());
    let deadline = Instant::now() + fuzz_budget();
    let (mut tried, mut rejected) = (0, 0);
    // The seed itself must be accepted: otherwise the fuzzing tests nothing.
    check(seed).unwrap_or_else(|e| panic!("{name}: the unmutated seed is rejected: {e:#}"));
    while Instant::now() < deadline {
        let input = mutate(seed, &mut rng);
        tried += 1;
        match catch_unwind(AssertUnwindSafe(|| check(&input))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                rejected += 1;
                let msg = format!("{e:#}");
                assert!(!msg.trim().is_empty(), "{name}: an empty error message");
            }
            Err(_) => {
                let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
                std::fs::create_dir_all(&dir).unwrap();
                let p = dir.join(format!("{name}-{tried}"));
                std::fs::write(&p, &input).unwrap();
                panic!("{name}: panic on input #{tried}, saved to {}", p.display());
            }
        }
    }
    eprintln!(
        "fuzz {name}: {tried} mutated inputs, {rejected} rejected with an error, none panicked"
    );
    // The row of `make fuzz`'s table: area | tried | clean errors | ran | panics | data loss.
    eprintln!(
        "FUZZ|mutated {name}|{tried}|{rejected}|{}|0|n/a",
        tried - rejected
    );
    (tried, rejected)
}

fn png_bytes(w: u32, h: u32, shade: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([shade, (x * 7) as u8, (y * 5) as u8])
    });
    let mut out = std::io::Cursor::new(vec![]);
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn jpg_bytes() -> Vec<u8> {
    let img = image::RgbImage::from_fn(24, 16, |x, y| {
        image::Rgb([(x * 9) as u8, 90, (y * 11) as u8])
    });
    let mut out = std::io::Cursor::new(vec![]);
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

fn options(format: Format, src: &Path, images: Option<&Path>, out: &Path) -> PrepareOptions {
    PrepareOptions {
        format,
        src: src.to_path_buf(),
        images: images.map(Path::to_path_buf),
        captions: None,
        multi: Multi::First,
        size: 16,
        seed: 0,
        out: out.to_path_buf(),
        force: true,
        splits: None,
    }
}

#[test]
fn fuzz_configs_and_overrides() {
    use ekphrasis::stages::{captioner, evaluators, t2i};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    macro_rules! one {
        ($file:expr, $ty:ty) => {{
            let seed = std::fs::read(root.join($file)).unwrap();
            fuzz($file, &seed, |b| {
                std::fs::write(&path, b)?;
                ekphrasis::config::load::<$ty>(&path, &[]).map(|_| ())
            });
        }};
    }
    one!("scenes/captioner.yaml", captioner::CaptionerStageConfig);
    one!("demo/clip.yaml", evaluators::ClipStageConfig);
    one!("demo/probe.yaml", evaluators::ProbeStageConfig);
    one!("scenes/t2i-vae.yaml", t2i::T2IStageConfig);
    one!("demo/t2i-diffusion.yaml", t2i::T2IStageConfig);
    one!("general/t2i-vae.yaml", t2i::T2IStageConfig);
    one!("general/captioner.yaml", captioner::CaptionerStageConfig);
    one!(
        "general/align.yaml",
        ekphrasis::stages::align::AlignStageConfig
    );
    one!(
        "demo/tokenizer.yaml",
        ekphrasis::data::tokenizer::TokenizerConfig
    );
    let cfg = root.join("scenes/captioner.yaml");
    fuzz("set-override", b"train.steps=100", |b| {
        let s = String::from_utf8_lossy(b).to_string();
        ekphrasis::config::load::<captioner::CaptionerStageConfig>(&cfg, &[s]).map(|_| ())
    });
}

#[test]
fn fuzz_captions_csv_coco_imagefolder_and_art_sources() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let imgs = d.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    for i in 0..3u8 {
        std::fs::write(imgs.join(format!("a{i}.png")), png_bytes(20, 14, i * 60)).unwrap();
    }
    let out = d.join("out");

    let csv = d.join("captions.csv");
    let seed = b"image,caption\na0.png,A red house on green grass.\na1.png,\"A tree, tall, under a blue sky.\"\na2.png,A boat.\n";
    fuzz("captions-csv", seed, |b| {
        std::fs::write(&csv, b)?;
        prepare(&options(Format::CaptionsCsv, &csv, Some(&imgs), &out)).map(|_| ())
    });

    let coco = d.join("coco.json");
    let seed = serde_json::json!({
        "images": [{"id": 1, "file_name": "a0.png"}, {"id": 2, "file_name": "a1.png"}, {"id": 3, "file_name": "a2.png"}],
        "annotations": [{"image_id": 1, "caption": "A red house."}, {"image_id": 2, "caption": "A tree."}, {"image_id": 3, "caption": "A boat."}],
    })
    .to_string();
    fuzz("coco-json", seed.as_bytes(), |b| {
        std::fs::write(&coco, b)?;
        prepare(&options(Format::Coco, &coco, Some(&imgs), &out)).map(|_| ())
    });

    let folder = d.join("folder");
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..3u8 {
        std::fs::write(folder.join(format!("a{i}.png")), png_bytes(20, 14, i * 60)).unwrap();
    }
    let seed = b"{\"file_name\": \"a0.png\", \"text\": \"A red house.\"}\n{\"file_name\": \"a1.png\", \"text\": \"A tree.\"}\n{\"file_name\": \"a2.png\", \"text\": \"A boat.\"}\n";
    fuzz("metadata-jsonl", seed, |b| {
        std::fs::write(folder.join("metadata.jsonl"), b)?;
        prepare(&options(Format::Imagefolder, &folder, None, &out)).map(|_| ())
    });

    let art = d.join("art");
    std::fs::create_dir_all(art.join("artwork")).unwrap();
    for i in 0..3u8 {
        std::fs::write(
            art.join(format!("artwork/{i}.png")),
            png_bytes(20, 14, i * 60),
        )
        .unwrap();
    }
    std::fs::write(
        art.join("info_dataset.csv"),
        "ID,Medium,Style\n0,oil,Impressionism\n1,ink,Ukiyo-e\n2,oil,\n",
    )
    .unwrap();
    let seed = b"ID,Title,Artist,Year\n0,Sunflowers,Vincent van Gogh,1888\n1,The Wave,Hokusai,1831\n2,Untitled,,\n";
    fuzz("art-csv", seed, |b| {
        std::fs::write(art.join("artwork_dataset.csv"), b)?;
        prepare(&options(Format::Art, &art, None, &out)).map(|_| ())
    });
}

#[test]
fn fuzz_image_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    let load = |b: &[u8]| {
        std::fs::write(&p, b)?;
        ekphrasis::data::images::load_rgb(&p, 16).map(|_| ())
    };
    fuzz("png", &png_bytes(20, 14, 7), load);
    fuzz("jpeg", &jpg_bytes(), load);
    // Headers that promise enormous images must be refused before any allocation.
    let mut huge = png_bytes(2, 2, 1);
    huge[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    huge[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    std::fs::write(&p, &huge).unwrap();
    assert!(ekphrasis::data::images::load_rgb(&p, 16).is_err());
}

#[test]
fn fuzz_tokenizer_and_journal_files() {
    let dir = tempfile::tempdir().unwrap();
    let texts: Vec<String> = (0..40)
        .map(|i| format!("A red house number {i} stands beside a tall green tree under the sky."))
        .collect();
    let tok_path = dir.path().join("tokenizer.json");
    let cfg = ekphrasis::data::tokenizer::TokenizerConfig {
        vocab_size: 300,
        min_frequency: 1,
        max_len: 64,
    };
    ekphrasis::data::tokenizer::train_bpe(&texts, &cfg, &tok_path).unwrap();
    let seed = std::fs::read(&tok_path).unwrap();
    let p = dir.path().join("t.json");
    fuzz("tokenizer-json", &seed, |b| {
        std::fs::write(&p, b)?;
        let t = ekphrasis::data::tokenizer::TextTokenizer::load(&p)?;
        let ids = t.encode("A red house stands under the sky.", 32)?;
        let _ = t.decode(&ids);
        Ok(())
    });

    let j = dir.path().join("captions.jsonl");
    let seed = b"{\"id\":\"a\",\"status\":\"ok\",\"text\":\"A red house.\",\"words\":3,\"asks\":1,\"prompt_tokens\":5,\"completion_tokens\":3,\"model\":\"m\"}\n{\"id\":\"b\",\"status\":\"refused\",\"text\":\"I cannot.\",\"words\":2,\"asks\":1,\"prompt_tokens\":5,\"completion_tokens\":3,\"model\":\"m\"}\n";
    fuzz("describe-journal", seed, |b| {
        std::fs::write(&j, b)?;
        ekphrasis::data::vlm::journal::read(&j).map(|_| ())
    });
}

#[test]
fn fuzz_checkpoints() {
    use ekphrasis::train::checkpoint;
    use tch::{nn, Device, Kind, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = nn::linear(vs.root() / "lin", 4, 3, Default::default());
    let state = checkpoint::TrainState {
        format_version: checkpoint::FORMAT_VERSION,
        step: 3,
        seed: 0,
        best_metric: Some(0.5),
        best_step: Some(3),
        stale_evals: 0,
        tokenizer_hash: "abc".into(),
        arch: serde_json::json!({"dim": 4}),
        metrics: Default::default(),
        weights: None,
    };
    let tensors = checkpoint::model_tensors(&vs);
    checkpoint::save(run, "latest", &tensors, &state).unwrap();
    let meta = checkpoint::meta_path(run, "latest");
    let saved = checkpoint::load(run, "latest").unwrap().0;
    let weights = checkpoint::weights_path(run, "latest", &saved);
    let (meta_seed, weights_seed) = (
        std::fs::read(&meta).unwrap(),
        std::fs::read(&weights).unwrap(),
    );
    let try_load = || -> anyhow::Result<()> {
        let (_, t) = checkpoint::load(run, "latest")?;
        checkpoint::load_into(&vs, &t, "model.")
    };
    fuzz("checkpoint-json", &meta_seed, |b| {
        std::fs::write(&meta, b)?;
        try_load()
    });
    std::fs::write(&meta, &meta_seed).unwrap();
    fuzz("checkpoint-safetensors", &weights_seed, |b| {
        std::fs::write(&weights, b)?;
        try_load()
    });
    // A checkpoint from a newer format is refused by name.
    std::fs::write(&weights, &weights_seed).unwrap();
    let newer = String::from_utf8(meta_seed).unwrap().replace(
        &format!("\"format_version\": {}", checkpoint::FORMAT_VERSION),
        "\"format_version\": 99",
    );
    std::fs::write(&meta, newer).unwrap();
    let err = checkpoint::load(run, "latest").unwrap_err().to_string();
    assert!(err.contains("format 99"), "{err}");
    let _ = Tensor::zeros([1], (Kind::Float, Device::Cpu));
}
