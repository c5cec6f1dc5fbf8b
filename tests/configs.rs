//! Every shipped experiment config parses (unknown keys are refused) and builds its model,
//! so a GPU config nobody can run in CI still cannot rot into a typo or a shape mismatch.

use ekphrasis::models::align::{AlignConfig, Aligner};
use ekphrasis::models::{captioner::Captioner, clip::Clip, t2i::TextToImage, unified::Unified};
use ekphrasis::scenes::{fact_words::FactWords, probe::Probe};
use ekphrasis::stages::{
    align::AlignStageConfig,
    captioner::CaptionerStageConfig,
    evaluators::{ClipStageConfig, ProbeStageConfig},
    invertible::InvertibleStageConfig,
    t2i::T2IStageConfig,
    unified::UnifiedStageConfig,
};
use std::path::{Path, PathBuf};
use tch::nn;

const VOCAB: i64 = 1000;

/// The model of the align config beside `config` (`experiments/<profile>/align.yaml`),
/// the align run that profile's captioner and generators read.
fn shipped_aligner(config: &Path) -> AlignConfig {
    let path = config.with_file_name("align.yaml");
    let mut c: AlignStageConfig = ekphrasis::config::load(&path, &[])
        .unwrap_or_else(|e| panic!("{} reads an align run: {e:#}", config.display()));
    c.model.text.vocab_size = VOCAB;
    c.model.text.sentence_ends = vec![1];
    c.model
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
}

/// Parses `path` as the config its file name says it is and builds that model on the CPU;
/// returns the parameter count (0 for configs without a model).
fn build(path: &Path) -> anyhow::Result<usize> {
    let name = path.file_stem().unwrap().to_str().unwrap();
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let root = vs.root();
    if name.starts_with("captioner") {
        let mut c: CaptionerStageConfig = ekphrasis::config::load(path, &[])?;
        c.model.vocab_size = VOCAB;
        if c.encoder_from.is_some() {
            // The align run it reads, as the align config beside it would train it; the
            // stage refuses an image encoder of another shape.
            let a = shipped_aligner(path);
            let m = &c.model;
            if (m.channels.as_slice(), m.stem, m.image_size)
                != (a.channels.as_slice(), a.stem, a.image_size)
            {
                anyhow::bail!("the captioner's encoder differs from the align config beside it");
            }
            c.model.aligned = Some(a);
        }
        // A stand-in word table: the real one comes from the dataset's tokenizer.
        let words = c
            .model
            .attribute_words
            .then(|| FactWords::new(|t| Ok(vec![t.len() as i64]), VOCAB, tch::Device::Cpu))
            .transpose()?;
        Captioner::with_words(&root, &c.model, words)?;
    } else if name.starts_with("clip") {
        let mut c: ClipStageConfig = ekphrasis::config::load(path, &[])?;
        c.model.text.vocab_size = VOCAB;
        Clip::new(&root, &c.model)?;
    } else if name.starts_with("probe") {
        let c: ProbeStageConfig = ekphrasis::config::load(path, &[])?;
        Probe::new(&root, &c.model)?;
    } else if name.starts_with("t2i") || name == "gan" {
        let mut c: T2IStageConfig = ekphrasis::config::load(path, &[])?;
        c.model.text.vocab_size = VOCAB;
        if let Some(a) = &mut c.model.align {
            // The text side of the align run it reads, as the shipped align config has it.
            let aligner = shipped_aligner(path);
            c.model.text = aligner.text;
            a.places = aligner.places;
        }
        TextToImage::new(&root, &c.model)?;
    } else if name.starts_with("align") {
        let mut c: AlignStageConfig = ekphrasis::config::load(path, &[])?;
        c.model.text.vocab_size = VOCAB;
        Aligner::new(&root, &c.model)?;
    } else if name.starts_with("unified") {
        let mut c: UnifiedStageConfig = ekphrasis::config::load(path, &[])?;
        c.model.captioner.vocab_size = VOCAB;
        if let Some(a) = &mut c.model.align {
            a.places = shipped_aligner(path).places;
        }
        Unified::new(&root, &c.model)?;
    } else if name.starts_with("invertible") {
        let _: InvertibleStageConfig = ekphrasis::config::load(path, &[])?;
    } else if name.starts_with("tokenizer") {
        let _: ekphrasis::data::tokenizer::TokenizerConfig = ekphrasis::config::load(path, &[])?;
    } else {
        anyhow::bail!("no rule says which config {name}.yaml is: name it after its stage");
    }
    Ok(vs.variables().values().map(|t| t.numel()).sum())
}

#[test]
fn every_shipped_config_parses_and_builds_its_model() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut files = vec![];
    yaml_files(&root, &mut files);
    files.sort();
    assert!(
        files.len() >= 15,
        "expected the demo, art and flowers configs"
    );
    for path in &files {
        match build(path) {
            Ok(params) => eprintln!("{}: {params} parameters", path.display()),
            Err(e) => panic!("{}: {e:#}", path.display()),
        }
    }
}
