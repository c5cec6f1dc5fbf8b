//! What `ekphrasis serve` has to show: the exported models found under `--models` (one
//! per kind), the unified-generator run, and a cycle report's examples for browsing.
//! A model that is missing hides its view; it is never an error.

use crate::export::manifest::{Manifest, ModelKind};
pub use crate::report::cycle::Example;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The folders the server loads; `None` hides the views that need it.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub captioner: Option<PathBuf>,
    pub generator: Option<PathBuf>,
    pub unified: Option<PathBuf>,
    /// Whether the captioner and the generator share a tokenizer, so a caption can be
    /// painted back (the live cycle).
    pub cycle: bool,
    /// One line per folder that was skipped, and why (shown at start and in /healthz).
    pub skipped: Vec<String>,
}

/// Which views the page shows.
#[derive(Clone, Debug, Serialize)]
pub struct Views {
    pub describe: bool,
    pub reconstruct: bool,
    pub paint: bool,
    pub one_seed: bool,
    pub browse: bool,
}

impl Catalog {
    /// Scans `models` for exports: every subfolder with a `manifest.json`. When a kind
    /// has several, the folder named after the kind (`models/captioner`) wins, else the
    /// first by name.
    pub fn scan(models: &Path, unified: Option<&Path>) -> Result<Catalog> {
        if !models.is_dir() {
            bail!(
                "--models {}: no such folder (make one with `make export`, or `ekphrasis export --run RUN --out {}/NAME`)",
                models.display(),
                models.display()
            );
        }
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(models)
            .with_context(|| format!("listing {}", models.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("manifest.json").is_file())
            .collect();
        dirs.sort();
        let mut c = Catalog::default();
        let mut found: Vec<(ModelKind, PathBuf, Option<String>)> = vec![];
        for d in dirs {
            match Manifest::read(&d) {
                Ok(m) => found.push((m.kind, d, m.tokenizer.map(|t| t.hash))),
                Err(e) => c.skipped.push(format!("{}: {e:#}", d.display())),
            }
        }
        let pick = |kind: ModelKind| -> Option<(PathBuf, Option<String>)> {
            let of_kind: Vec<_> = found.iter().filter(|(k, ..)| *k == kind).collect();
            of_kind
                .iter()
                .find(|(_, d, _)| d.file_name().is_some_and(|n| n == kind.name()))
                .or(of_kind.first())
                .map(|(_, d, h)| (d.clone(), h.clone()))
        };
        let cap = pick(ModelKind::Captioner);
        let gen = pick(ModelKind::T2i);
        c.cycle = matches!((&cap, &gen), (Some((_, a)), Some((_, b))) if a == b);
        if cap.is_some() && gen.is_some() && !c.cycle {
            c.skipped.push(
                "the captioner and the generator were trained with different tokenizers: the describe view shows no reconstruction".into(),
            );
        }
        c.captioner = cap.map(|(d, _)| d);
        c.generator = gen.map(|(d, _)| d);
        if let Some(u) = unified {
            if u.join("config.yaml").is_file() {
                c.unified = Some(u.to_path_buf());
            } else {
                c.skipped.push(format!(
                    "{}: not a unified-generator run (no config.yaml); the one-seed view is hidden",
                    u.display()
                ));
            }
        }
        Ok(c)
    }

    pub fn views(&self, browse: bool) -> Views {
        Views {
            describe: self.captioner.is_some(),
            reconstruct: self.cycle,
            paint: self.generator.is_some(),
            one_seed: self.unified.is_some(),
            browse,
        }
    }
}

/// A cycle report's examples with their captions lower-cased once for searching.
pub struct Browse {
    pub report: PathBuf,
    pub examples: Vec<Example>,
    haystacks: Vec<String>,
}

impl Browse {
    /// Reads `report/examples.json`; `None` when the report has none.
    pub fn open(report: &Path) -> Result<Option<Browse>> {
        let path = report.join("examples.json");
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let examples: Vec<Example> = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a cycle report's examples", path.display()))?;
        let haystacks = examples
            .iter()
            .map(|e| format!("{} {} {}", e.id, e.caption, e.generated).to_lowercase())
            .collect();
        Ok(Some(Browse {
            report: report.to_path_buf(),
            examples,
            haystacks,
        }))
    }

    /// The examples whose id or captions hold every word of `query` (all when empty):
    /// the total count and the page `offset .. offset + limit`.
    pub fn search(&self, query: &str, offset: usize, limit: usize) -> (usize, Vec<&Example>) {
        let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
        let hits: Vec<&Example> = self
            .examples
            .iter()
            .zip(&self.haystacks)
            .filter(|(_, h)| words.iter().all(|w| h.contains(w.as_str())))
            .map(|(e, _)| e)
            .collect();
        let total = hits.len();
        (total, hits.into_iter().skip(offset).take(limit).collect())
    }
}
