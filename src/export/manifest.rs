//! `manifest.json` of an exported model: what it is, how to feed it, which files hold
//! it, and where it came from. The inference commands and Python read it first.

use crate::data::tokenizer::TextTokenizer;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Raised whenever the files or their inputs change meaning; a reader refuses newer ones.
pub const FORMAT_VERSION: u32 = 1;

pub const FILE: &str = "manifest.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// How images enter every exported module.
pub const NORMALISATION: &str =
    "float32 RGB, NCHW, pixel/127.5 - 1 (uint8 0..255 → -1..1); outputs in the same range";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Captioner,
    T2i,
    Clip,
    Probe,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Captioner => "captioner",
            ModelKind::T2i => "t2i",
            ModelKind::Clip => "clip",
            ModelKind::Probe => "probe",
        }
    }
}

/// The tokenizer an exported model reads, copied beside it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenizerInfo {
    pub file: String,
    /// SHA-256 of tokenizer.json (a copy that differs is refused).
    pub hash: String,
    pub bos: i64,
    pub eos: i64,
    pub pad: i64,
    /// Token rows are padded (or cut) to this length before the text encoder.
    pub max_len: i64,
}

/// One traced module: its file, its inputs in order and its one output, described for
/// whoever calls it without this code (Python).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModuleInfo {
    pub file: String,
    pub inputs: Vec<String>,
    pub output: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub kind: ModelKind,
    pub image_size: i64,
    pub normalisation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<TokenizerInfo>,
    /// Role (e.g. `encoder`, `step`) → module.
    pub modules: BTreeMap<String, ModuleInfo>,
    /// The run's resolved stage config (model, decoding and sampling settings).
    pub config: serde_json::Value,
    /// Training step of the exported weights, and whether they are the EMA shadow.
    pub step: u64,
    pub ema: bool,
    /// The run's metrics at export (its test evaluation when there is one).
    pub metrics: serde_json::Value,
    pub source_run: String,
}

/// Largest image side and token count a manifest may declare.
const MAX_IMAGE_SIZE: i64 = 4096;
const MAX_TOKENS: i64 = 65_536;

impl Manifest {
    /// Reads `dir/manifest.json` and checks that it can be served: a known format and
    /// every file it names present.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(FILE);
        if !path.exists() {
            bail!(
                "{} is not an exported model (no {FILE}); make one with `ekphrasis export --run RUN --out {}`",
                dir.display(),
                dir.display()
            );
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        // The version first, so a newer manifest is refused for the right reason even
        // when its other fields changed shape.
        let version: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        let v = version["format_version"].as_u64().unwrap_or(0);
        if v > FORMAT_VERSION as u64 {
            bail!(
                "{} has format_version {v}; this ekphrasis reads up to {FORMAT_VERSION}: upgrade ekphrasis or re-export the model",
                path.display()
            );
        }
        let m: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("{}: not an ekphrasis manifest", path.display()))?;
        let mut files: Vec<&str> = m.modules.values().map(|i| i.file.as_str()).collect();
        if let Some(t) = &m.tokenizer {
            files.push(&t.file);
        }
        for f in files {
            // A manifest may only name files inside its own folder.
            let mut parts = Path::new(f).components();
            let plain = matches!(
                (parts.next(), parts.next()),
                (Some(std::path::Component::Normal(_)), None)
            );
            if !plain {
                bail!(
                    "{}: the manifest names {f:?}, which is not a file name inside the model folder",
                    path.display()
                );
            }
            if !dir.join(f).is_file() {
                bail!(
                    "{}: the manifest names {f}, which is missing; re-export the model",
                    dir.display()
                );
            }
        }
        // Sizes that would make the loaders allocate without bound.
        if !(1..=MAX_IMAGE_SIZE).contains(&m.image_size) {
            bail!(
                "{}: image_size {} is outside 1 … {MAX_IMAGE_SIZE}",
                path.display(),
                m.image_size
            );
        }
        if let Some(t) = &m.tokenizer {
            if !(1..=MAX_TOKENS).contains(&t.max_len) {
                bail!(
                    "{}: tokenizer max_len {} is outside 1 … {MAX_TOKENS}",
                    path.display(),
                    t.max_len
                );
            }
        }
        Ok(m)
    }

    /// The module for `role`, or an error naming the model folder.
    pub fn module(&self, dir: &Path, role: &str) -> Result<&ModuleInfo> {
        self.modules.get(role).with_context(|| {
            format!(
                "{}: a {} export has no {role} module",
                dir.display(),
                self.kind.name()
            )
        })
    }

    /// Refuses a model of another kind than the command serves.
    pub fn expect_kind(&self, dir: &Path, kind: ModelKind) -> Result<()> {
        if self.kind != kind {
            bail!(
                "{} holds a {} model; this needs a {} model",
                dir.display(),
                self.kind.name(),
                kind.name()
            );
        }
        Ok(())
    }

    /// The copied tokenizer, checked against the hash recorded at export.
    pub fn load_tokenizer(&self, dir: &Path) -> Result<TextTokenizer> {
        let info = self
            .tokenizer
            .as_ref()
            .with_context(|| format!("{}: this model has no tokenizer", dir.display()))?;
        let tok = TextTokenizer::load(&dir.join(&info.file))?;
        if tok.hash != info.hash {
            bail!(
                "{}: {} differs from the one the model was exported with (hash mismatch)",
                dir.display(),
                info.file
            );
        }
        Ok(tok)
    }
}
