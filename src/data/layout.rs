//! The prepared-dataset layout on disk (also drawn in the README): where every file
//! of `data/<name>/` lives, and typed readers for them.

use crate::util::fsio::read_json;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// One row of `metadata.csv`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MetadataRow {
    pub id: String,
    pub title: String,
    pub artist: String,
    pub year: String,
    pub medium: String,
    pub style: String,
    pub source: String,
    /// JSON or empty; for the embedded set, the scene.
    pub attributes: String,
}

/// The `source` of the embedded set's rows: the only rows whose `attributes` hold a
/// scene (its facts), which the probe, the caption parser and the facts options read.
pub const SCENE_SOURCE: &str = "synthetic";

impl MetadataRow {
    /// Whether this row carries the embedded set's scene facts.
    pub fn has_scene(&self) -> bool {
        self.source == SCENE_SOURCE
    }
}

#[derive(Clone, Debug)]
pub struct Dataset {
    pub root: PathBuf,
}

impl Dataset {
    /// Opens a prepared dataset, checking that it looks like one.
    pub fn open(root: &Path) -> Result<Self> {
        let ds = Dataset {
            root: root.to_path_buf(),
        };
        if !ds.captions_path().exists() {
            bail!(
                "{} is not a prepared dataset (no captions.json); create one with `ekphrasis data synth` or `ekphrasis data prepare`",
                root.display()
            );
        }
        Ok(ds)
    }

    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn captions_path(&self) -> PathBuf {
        self.root.join("captions.json")
    }
    pub fn metadata_path(&self) -> PathBuf {
        self.root.join("metadata.csv")
    }
    pub fn tokenizer_path(&self) -> PathBuf {
        self.root.join("tokenizer.json")
    }
    pub fn tokenized_path(&self) -> PathBuf {
        self.root.join("tokenized_captions.json")
    }
    pub fn splits_dir(&self) -> PathBuf {
        self.root.join("splits")
    }
    /// `images.json`: each image's item ids (`data prepare --multi pairs` makes one item
    /// per caption). Absent (the embedded set), every item is its own image.
    pub fn images_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    /// The image each item of `images.json` shows, by item id; empty without the file.
    pub fn image_of_items(&self) -> Result<std::collections::HashMap<String, String>> {
        let path = self.images_path();
        if !path.exists() {
            return Ok(Default::default());
        }
        let groups: std::collections::BTreeMap<String, Vec<String>> =
            crate::util::fsio::read_json(&path)?;
        Ok(groups
            .into_iter()
            .flat_map(|(image, items)| items.into_iter().map(move |i| (i, image.clone())))
            .collect())
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    pub fn captions(&self) -> Result<BTreeMap<String, String>> {
        read_json(&self.captions_path())
    }

    pub fn split_ids(&self, split: Split) -> Result<Vec<String>> {
        let path = self.splits_dir().join(format!("{}_ids.txt", split.name()));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading split file {}", path.display()))?;
        let ids: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if ids.is_empty() {
            bail!("split file {} lists no image ids", path.display());
        }
        Ok(ids)
    }

    /// The image file of `id`, whichever extension it was stored with.
    pub fn image_path(&self, id: &str) -> Result<PathBuf> {
        for ext in ["png", "jpg", "jpeg"] {
            let p = self.images_dir().join(format!("{id}.{ext}"));
            if p.exists() {
                return Ok(p);
            }
        }
        bail!(
            "no image file for id {id:?} in {}",
            self.images_dir().display()
        )
    }

    /// Whether every image has the embedded set's scene facts: the capability that the
    /// probe, the caption parser's scores and every `facts`/`attribute_*` option need.
    pub fn has_scene_facts(&self) -> Result<bool> {
        let rows = self.metadata()?;
        Ok(!rows.is_empty() && rows.iter().all(MetadataRow::has_scene))
    }

    /// Refuses, before any training, an option that reads the scene facts when this
    /// dataset has none (`what`: the option, as the config names it).
    pub fn require_scene_facts(&self, what: &str) -> Result<()> {
        if !self.has_scene_facts()? {
            anyhow::bail!(
                "{what} reads the embedded set's scene facts, and {} has none (a real dataset has only images and captions): leave it out of the config",
                self.root.display()
            );
        }
        Ok(())
    }

    pub fn metadata(&self) -> Result<Vec<MetadataRow>> {
        let path = self.metadata_path();
        let mut rdr =
            csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut rows = vec![];
        for (i, row) in rdr.deserialize().enumerate() {
            let row: MetadataRow =
                row.with_context(|| format!("{}: row {}", path.display(), i + 2))?;
            rows.push(row);
        }
        Ok(rows)
    }
}

/// Writes `metadata.csv` rows.
pub fn metadata_csv(rows: &[MetadataRow]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(vec![]);
    for r in rows {
        w.serialize(r)?;
    }
    Ok(w.into_inner()?)
}
