//! Generated numbers, not mutated text: every numeric field of every shipped config set
//! to values without meaning (zero, negative, huge, fractional, NaN, text), and every
//! numeric flag of the commands given the same. Each case must be refused with an error
//! or run: a refused config is never built, an accepted one builds its model and runs
//! one training forward pass here without panicking, and the binary never panics, is
//! killed, or runs past a timeout.
//!
//! `make fuzz` tries every case and prints the counts (the table in
//! docs/reliability.md). In `make test` each config's cases are drawn at random until
//! `EKPHRASIS_FUZZ_SECONDS` (2) are spent, and each flag gets three of the values.

mod common;

use common::*;
use ekphrasis::data::tokenizer::{train_bpe, TextTokenizer, TokenizerConfig};
use ekphrasis::stages::{captioner, evaluators, invertible, t2i, unified};
use ekphrasis::util::memory;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_yaml::Value;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// `make fuzz` (a budget given) tries every case; `make test` a random share.
fn exhaustive() -> bool {
    std::env::var("EKPHRASIS_FUZZ_SECONDS").is_ok_and(|s| s != "2")
}

/// The values tried in every numeric field.
fn hostile_values() -> Vec<Value> {
    [
        "0",
        "-1",
        "-32",
        "1",
        "3",
        "7",
        "0.5",
        "2.5",
        "1000000000",
        "1.0e11",
        "18446744073709551615",
        ".nan",
        ".inf",
        "-.inf",
        "abc",
        "[]",
        "~",
    ]
    .iter()
    .map(|s| serde_yaml::from_str(s).unwrap())
    .collect()
}

#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Paths of the numeric leaves of `v` (list items included).
fn numeric_leaves(v: &Value, at: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    match v {
        Value::Number(_) => out.push(at.clone()),
        Value::Mapping(m) => {
            for (k, x) in m {
                if let Some(k) = k.as_str() {
                    at.push(Seg::Key(k.into()));
                    numeric_leaves(x, at, out);
                    at.pop();
                }
            }
        }
        Value::Sequence(s) => {
            for (i, x) in s.iter().enumerate() {
                at.push(Seg::Index(i));
                numeric_leaves(x, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn set_at(v: &mut Value, path: &[Seg], to: Value) {
    let slot = path.iter().fold(v, |v, seg| match seg {
        Seg::Key(k) => v.get_mut(k.as_str()).expect("path from the tree"),
        Seg::Index(i) => v.get_mut(*i).expect("path from the tree"),
    });
    *slot = to;
}

fn show(path: &[Seg]) -> String {
    path.iter()
        .map(|s| match s {
            Seg::Key(k) => k.clone(),
            Seg::Index(i) => i.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[derive(Default)]
struct Counts {
    tried: usize,
    refused_at_load: usize,
    refused_later: usize,
    ran: usize,
    panics: Vec<String>,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.tried += other.tried;
        self.refused_at_load += other.refused_at_load;
        self.refused_later += other.refused_later;
        self.ran += other.ran;
        self.panics.extend(other.panics);
    }

    /// Prints the `make fuzz` row of `area` and fails on any panic, listing them.
    fn finish(&self, area: &str) {
        eprintln!("{}", self.row(area));
        assert!(
            self.panics.is_empty(),
            "{area}: {} cases failed badly:\n{}",
            self.panics.len(),
            self.panics.join("\n")
        );
    }

    fn row(&self, area: &str) -> String {
        format!(
            "FUZZ|{area}|{}|{}|{}|{}|n/a",
            self.tried,
            self.refused_at_load + self.refused_later,
            self.ran,
            self.panics.len(),
        )
    }
}

fn images(n: i64, size: i64) -> Tensor {
    Tensor::rand([n, 3, size, size], (Kind::Float, Device::Cpu)) * 2.0 - 1.0
}

fn tokens(tok: &TextTokenizer) -> Tensor {
    let rows: Vec<Vec<i64>> = ["A red boat sails. The sea is calm.", "A tall tree."]
        .iter()
        .map(|t| {
            let mut ids = tok.encode(t, 24).unwrap();
            ids.resize(24, tok.pad);
            ids
        })
        .collect();
    Tensor::from_slice2(&rows)
}

/// Scene-fact targets of two images (every head's first class), for models that
/// train on the embedded set's facts.
fn facts() -> Tensor {
    Tensor::zeros([2, 39], (Kind::Int64, Device::Cpu))
}

/// Builds the model of an accepted config and runs one training forward pass.
fn build_and_step(kind: &str, path: &Path, tok: &TextTokenizer) -> anyhow::Result<()> {
    let cpu = Device::Cpu;
    let t = tokens(tok);
    match kind {
        "captioner" => {
            let c: captioner::CaptionerStageConfig = ekphrasis::config::load(path, &[])?;
            let (_vs, m) = captioner::build_model(&c.model, tok, cpu)?;
            let x = images(2, c.model.image_size);
            // The stage refuses token rows longer than model.max_len; rows within it here.
            let t = t.narrow(1, 0, 24.min(c.model.max_len));
            let _ = m
                .loss(&x, &t, None, tok.pad, 0.1, 0.0, true)
                .f_sum(Kind::Float)?;
        }
        "clip" => {
            let c: evaluators::ClipStageConfig = ekphrasis::config::load(path, &[])?;
            let (_vs, m) = evaluators::build_clip(&c.model, tok, cpu)?;
            let _ = m
                .loss(&images(2, c.model.image_size), &t, tok.pad, true)
                .f_sum(Kind::Float)?;
        }
        "probe" => {
            let c: evaluators::ProbeStageConfig = ekphrasis::config::load(path, &[])?;
            let vs = tch::nn::VarStore::new(cpu);
            let m = ekphrasis::scenes::probe::Probe::new(&vs.root(), &c.model)?;
            m.predict_rows(&images(2, c.model.image_size));
        }
        "t2i" => {
            let c: t2i::T2IStageConfig = ekphrasis::config::load(path, &[])?;
            let (_vs, m) = t2i::build(&c.model, tok, cpu)?;
            let x = images(2, c.model.image_size);
            let facts = facts();
            let facts = m.wants_attributes().then_some(&facts);
            if m.is_gan() {
                let _ = m.gan_losses(0, &x, &t, tok.pad)?.f_sum(Kind::Float)?;
            } else {
                let _ = m.loss(&x, &t, facts, tok.pad, 0)?.f_sum(Kind::Float)?;
            }
        }
        "unified" => {
            let c: unified::UnifiedStageConfig = ekphrasis::config::load(path, &[])?;
            let (_vs, m) = unified::build(&c.model, tok, cpu)?;
            let facts = c.model.facts.then(facts);
            let x = images(2, c.model.captioner.image_size);
            let t = t.narrow(1, 0, 24.min(c.model.captioner.max_len));
            m.loss(&x, &t, tok.pad, facts.as_ref())?;
        }
        "invertible" => {
            // Its models are built from a trained contrastive run; the config is checked.
            let _: invertible::InvertibleStageConfig = ekphrasis::config::load(path, &[])?;
        }
        "tokenizer" => {
            let _: TokenizerConfig = ekphrasis::config::load(path, &[])?;
        }
        other => unreachable!("{other}"),
    }
    Ok(())
}

fn stage_of(file: &Path) -> &'static str {
    let name = file.file_name().unwrap().to_str().unwrap();
    match name {
        n if n.starts_with("captioner") => "captioner",
        n if n.starts_with("clip") => "clip",
        n if n.starts_with("probe") => "probe",
        n if n.starts_with("unified") => "unified",
        n if n.starts_with("invertible") => "invertible",
        n if n.starts_with("tokenizer") => "tokenizer",
        _ => "t2i",
    }
}

fn tiny_tokenizer(dir: &Path) -> TextTokenizer {
    let texts: Vec<String> = (0..40)
        .map(|i| format!("A red boat {i} sails on a calm sea. The tall tree stands to the left."))
        .collect();
    let cfg = TokenizerConfig {
        vocab_size: 300,
        min_frequency: 1,
        max_len: 256,
    };
    let p = dir.join("tokenizer.json");
    train_bpe(&texts, &cfg, &p).unwrap();
    TextTokenizer::load(&p).unwrap()
}

#[test]
fn every_numeric_config_field_given_hostile_values_is_refused_or_runs() {
    // Allocations past a few GB fail at once here, as they do past RAM + swap in the
    // binary, and the failure must come back as an error, not abort the process.
    memory::cap_data_bytes(6 << 30);
    // Panics are counted and listed at the end; their backtraces would drown the list.
    std::panic::set_hook(Box::new(|_| {}));
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer(dir.path());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let exhaustive = exhaustive();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut all = Counts::default();
    for file in &files {
        let kind = stage_of(file);
        let text = std::fs::read_to_string(file).unwrap();
        let tree: Value = serde_yaml::from_str(&text).unwrap();
        let mut leaves = vec![];
        numeric_leaves(&tree, &mut vec![], &mut leaves);
        let mut cases: Vec<(Vec<Seg>, Value)> = leaves
            .iter()
            .flat_map(|p| hostile_values().into_iter().map(move |v| (p.clone(), v)))
            .collect();
        cases.shuffle(&mut rng);
        let deadline = Instant::now() + fuzz_budget();
        let path = dir.path().join("case.yaml");
        let mut c = Counts::default();
        for (leaf, value) in cases {
            if !exhaustive && Instant::now() > deadline {
                break;
            }
            let mut v = tree.clone();
            set_at(&mut v, &leaf, value.clone());
            std::fs::write(&path, serde_yaml::to_string(&v).unwrap()).unwrap();
            c.tried += 1;
            let case = format!(
                "{} {}={}",
                file.strip_prefix(&root).unwrap().display(),
                show(&leaf),
                serde_yaml::to_string(&value).unwrap().trim()
            );
            if ekphrasis::config::load::<Value>(&path, &[]).is_err() {
                c.refused_at_load += 1;
                continue;
            }
            match catch_unwind(AssertUnwindSafe(|| build_and_step(kind, &path, &tok))) {
                Ok(Ok(())) => c.ran += 1,
                Ok(Err(e)) => {
                    let msg = format!("{e:#}");
                    assert!(!msg.trim().is_empty(), "{case}: an empty error");
                    if msg.contains("unknown field") || msg.contains("invalid type") {
                        c.refused_at_load += 1;
                    } else {
                        c.refused_later += 1;
                    }
                }
                Err(payload) if memory::allocation_failure(payload.as_ref()).is_some() => {
                    c.refused_later += 1
                }
                Err(payload) => {
                    let msg = payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    let first = msg.lines().next().unwrap_or("").chars().take(300);
                    c.panics
                        .push(format!("{case}: {}", first.collect::<String>()));
                }
            }
        }
        eprintln!(
            "{}: {} cases, {} refused at load, {} refused at build, {} ran, {} panicked",
            file.strip_prefix(&root).unwrap().display(),
            c.tried,
            c.refused_at_load,
            c.refused_later,
            c.ran,
            c.panics.len()
        );
        all.add(c);
    }
    drop(std::panic::take_hook());
    all.finish("config values");
}

/// The values tried in every numeric flag, as typed on a command line.
const HOSTILE_FLAGS: [&str; 17] = [
    "0",
    "-1",
    "1",
    "3",
    "65",
    "1000000000",
    "18446744073709551615",
    "99999999999999999999",
    "NaN",
    "inf",
    "-inf",
    "0.5",
    "-0.5",
    "1.5",
    "1e308",
    "abc",
    "",
];

/// How one command line ended: `Ok(true)` ran, `Ok(false)` refused with an error
/// line, `Err` a panic, an abort, a kill or a hang (with what was seen).
fn outcome(args: &[String]) -> Result<bool, String> {
    use std::process::Stdio;
    let mut child = bin()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!("{args:?}: still running after 120 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    match status.code() {
        Some(0) => Ok(true),
        Some(1 | 2) if !err.contains("panicked") && err.contains("error") => Ok(false),
        code => Err(format!("{args:?}: exit {code:?}: {}", err.trim())),
    }
}

#[test]
fn every_numeric_flag_given_hostile_values_is_refused_or_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let data = tiny_dataset(d);
    let cap = d.join("cap");
    train_ok("captioner", &s(&tiny_captioner_config(d, &data, 2)), &cap);
    train_ok("clip", &clip_cfg(d, &data), &d.join("clip_run"));
    train_ok("probe", &probe_cfg(d, &data), &d.join("probe_run"));
    let diffusion = write(d, "diffusion.yaml", format!(
        "data: {}\nseed: 0\nmodel:\n  kind: diffusion\n  image_size: 32\n  text: {{dim: 32, layers: 1, heads: 2, mlp: 64, max_len: 256}}\n  unet: {{channels: [16, 32], attention_max_side: 8}}\n  diffusion: {{timesteps: 50, sample_steps: 4}}\ntrain: {{steps: 2, batch_size: 4, lr: 1.0e-3, warmup: 1, eval_every: 2}}\neval: {{clip: {}, probe: {}, subset: 4}}\nbest: {{name: r_precision, higher_is_better: true}}\n",
        data.display(), d.join("clip_run").display(), d.join("probe_run").display()
    ));
    let gen = d.join("gen");
    train_ok("t2i", &diffusion, &gen);
    let image = first_image(&data);
    let csv = d.join("src.csv");
    std::fs::write(
        &csv,
        format!("image,caption\n{},a red boat\n", image.display()),
    )
    .unwrap();
    let out = d.join("out");
    // (command, the flag under test, flags that make it apply)
    let mut lines: Vec<(Vec<String>, &str)> = vec![];
    let mut add = |base: Vec<String>, flags: &[&'static str]| {
        for f in flags {
            lines.push((base.clone(), f));
        }
    };
    let words = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let caption = words(&["caption", "--run", &s(&cap), &s(&image), "--device", "cpu"]);
    add(
        [caption.clone(), words(&["--strategy", "beam"])].concat(),
        &["--beam"],
    );
    add(
        [caption.clone(), words(&["--strategy", "sample"])].concat(),
        &["--temperature", "--top-p", "--seed"],
    );
    add(caption, &["--repetition-penalty", "--no-repeat-ngram"]);
    add(
        words(&[
            "draw",
            "--run",
            &s(&gen),
            "a red boat",
            "--out",
            &s(&out),
            "--device",
            "cpu",
        ]),
        &["--n", "--seed", "--sample-steps", "--guidance", "--eta"],
    );
    add(
        words(&["eval", "captioner", "--run", &s(&cap), "--device", "cpu"]),
        &["--limit"],
    );
    add(
        words(&[
            "cycle",
            "--captioner",
            &s(&cap),
            "--generator",
            &s(&gen),
            "--clip",
            &s(&d.join("clip_run")),
            "--probe",
            &s(&d.join("probe_run")),
            "--out",
            &s(&d.join("cycle")),
            "--device",
            "cpu",
        ]),
        &["--limit"],
    );
    add(
        words(&[
            "data",
            "synth",
            "--out",
            &s(&d.join("synth")),
            "--size",
            "16",
            "--force",
        ]),
        &["--n"],
    );
    add(
        words(&[
            "data",
            "synth",
            "--out",
            &s(&d.join("synth")),
            "--n",
            "3",
            "--force",
        ]),
        &["--size"],
    );
    add(
        words(&[
            "data",
            "prepare",
            "--format",
            "captions-csv",
            "--src",
            &s(&csv),
            "--out",
            &s(&d.join("prepared")),
            "--force",
        ]),
        &["--size"],
    );
    let mut c = Counts::default();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for (base, flag) in &lines {
        let mut values = HOSTILE_FLAGS.to_vec();
        if !exhaustive() {
            // Three values per flag in `make test`; all of them in `make fuzz`.
            values.shuffle(&mut rng);
            values.truncate(3);
        }
        for v in values {
            let mut args = base.clone();
            args.push(flag.to_string());
            args.push(v.to_string());
            c.tried += 1;
            match outcome(&args) {
                Ok(true) => c.ran += 1,
                Ok(false) => c.refused_later += 1,
                Err(e) => c.panics.push(e),
            }
        }
    }
    c.finish("command-line numbers");
}
