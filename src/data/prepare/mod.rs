//! `ekphrasis data prepare`: real datasets into the common layout
//! (`data::layout`). Five sources: the artwork dataset (artwork CSVs), a captions CSV, COCO captions
//! JSON, an image folder (metadata.jsonl or a .txt beside each image) and the
//! Oxford-102 / CUB layout (`text_c10/**/<image>.txt`).
//!
//! Every bad input has a rule and a count, never a crash:
//! - an image that cannot be decoded (corrupt, truncated, zero bytes, over the pixel
//!   limit) is listed in `rejected.csv` with the reason;
//! - a path that leaves the source folder (`../`, absolute) is refused and listed;
//! - a duplicate id keeps its first occurrence; later ones are counted and listed;
//! - an item with no caption, or only empty ones, is listed as "missing caption";
//! - text that is not UTF-8 is decoded lossily (U+FFFD) and counted.
//!
//! The sources are read in `tables` and `folders` (shared readers in `read`); this
//! file validates, decodes, resizes and writes.

use super::images::load_rgb;
use super::layout::{metadata_csv, MetadataRow};
use crate::util::fsio::{atomic_write, write_json};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

mod folders;
mod read;
mod tables;
use folders::*;
pub use read::*;
use tables::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// artwork/*.jpg + artwork_dataset.csv + info_dataset.csv
    Art,
    /// a CSV with header `image,caption` (several rows per image allowed)
    CaptionsCsv,
    /// COCO-style captions JSON: `images` + `annotations`
    Coco,
    /// images with metadata.jsonl (`file_name`, `text`) or a same-named .txt beside each
    Imagefolder,
    /// Oxford-102 flowers / CUB birds: images + text_c10/**/<image>.txt
    TextC10,
}

/// What to do with several captions of one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Multi {
    /// keep the first caption
    First,
    /// one item per caption (ids get a `_N` suffix; splits keep an image's items together)
    Pairs,
    /// join the captions into one paragraph
    Join,
}

pub struct PrepareOptions {
    pub format: Format,
    /// The source folder (or file, for captions-csv and coco).
    pub src: PathBuf,
    /// Image folder, where the format keeps images apart from its text.
    pub images: Option<PathBuf>,
    /// Captions for the art format: a captions.json (`{id: text}`) or .jsonl
    /// (`{"id": …, "caption": …}` per line).
    pub captions: Option<PathBuf>,
    pub multi: Multi,
    pub size: u32,
    pub seed: u64,
    pub out: PathBuf,
    pub force: bool,
    /// Given train/val/test id lists (see [`super::splits::given_splits`]) instead of the
    /// seeded 80/10/10.
    pub splits: Option<PathBuf>,
}

/// One candidate item before validation.
#[derive(Clone, Debug, Default)]
struct Candidate {
    id: String,
    /// The image path as written in the source, relative to `base`.
    image: String,
    captions: Vec<String>,
    meta: MetadataRow,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PrepareReport {
    pub candidates: usize,
    pub kept: usize,
    pub rejected: BTreeMap<String, usize>,
    pub non_utf8_texts: usize,
    pub splits: [usize; 3],
}

/// Runs the whole preparation; returns the counted report (also written as report.json).
pub fn prepare(o: &PrepareOptions) -> Result<PrepareReport> {
    crate::util::signals::stop_gracefully();
    if let Some(dir) = &o.splits {
        super::splits::given_split_files(dir)?;
    }
    if !(MIN_SIZE..=MAX_SIZE).contains(&o.size) {
        bail!("--size {}: give {MIN_SIZE} to {MAX_SIZE} pixels", o.size);
    }
    if o.out.exists() && !o.force {
        bail!(
            "{} already exists; pass --force to replace it",
            o.out.display()
        );
    }
    // The new dataset is built aside; the old one (tokenizer and describe journal
    // included) is replaced only once the new one is whole.
    let partial = o.out.with_extension("partial");
    let result = build(o, &partial);
    if result.is_err() && partial.exists() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    let report = result?;
    crate::util::fsio::replace_dir(&partial, &o.out)?;
    Ok(report)
}

/// Smallest and largest image side `data prepare` writes.
const MIN_SIZE: u32 = 8;
const MAX_SIZE: u32 = 4096;

/// `path` resolved through its links, refused unless it stays inside `root` (the source
/// folder, already resolved) and is a regular file (not a FIFO, a device or a folder).
fn contained_file(root: &Path, path: &Path) -> Result<PathBuf, String> {
    let real = path
        .canonicalize()
        .map_err(|e| format!("unreadable image: {}: {e}", path.display()))?;
    if !real.starts_with(root) {
        return Err(format!(
            "unsafe path: {} resolves to {}, outside the data folder",
            path.display(),
            real.display()
        ));
    }
    match std::fs::metadata(&real) {
        Ok(m) if m.is_file() => Ok(real),
        Ok(_) => Err(format!(
            "unreadable image: {} is not a regular file",
            path.display()
        )),
        Err(e) => Err(format!("unreadable image: {}: {e}", path.display())),
    }
}

/// A `size`² RGB image as PNG bytes.
fn png_bytes(rgb: Vec<u8>, size: u32) -> Result<Vec<u8>> {
    let img = image::RgbImage::from_raw(size, size, rgb)
        .with_context(|| format!("the decoded image is not {size}×{size}"))?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

fn build(o: &PrepareOptions, partial: &Path) -> Result<PrepareReport> {
    let mut non_utf8 = 0;
    let (base, candidates) = match o.format {
        Format::Art => collect_art(o, &mut non_utf8)?,
        Format::CaptionsCsv => collect_captions_csv(o, &mut non_utf8)?,
        Format::Coco => collect_coco(o, &mut non_utf8)?,
        Format::Imagefolder => collect_imagefolder(o, &mut non_utf8)?,
        Format::TextC10 => collect_text_c10(o, &mut non_utf8)?,
    };
    let mut report = PrepareReport {
        candidates: candidates.len(),
        non_utf8_texts: non_utf8,
        ..Default::default()
    };
    let mut rejected: Vec<(String, String, String)> = vec![];
    let mut reject = |report: &mut PrepareReport, id: &str, image: &str, why: &str| {
        *report
            .rejected
            .entry(why.split(':').next().unwrap_or(why).to_string())
            .or_insert(0) += 1;
        rejected.push((id.to_string(), image.to_string(), why.to_string()));
    };
    // Rules that need no decoding: ids, paths, captions. Candidates that share an id
    // stay together in source order: the first that decodes claims the id.
    let mut order: Vec<String> = vec![];
    let mut by_id: HashMap<String, Vec<(Candidate, PathBuf)>> = HashMap::new();
    for mut c in candidates {
        if c.id.is_empty() {
            reject(&mut report, &c.id, &c.image, "empty id");
            continue;
        }
        let path = match safe_join(&base, &c.image) {
            Ok(p) => p,
            Err(e) => {
                reject(&mut report, &c.id, &c.image, &format!("unsafe path: {e}"));
                continue;
            }
        };
        c.captions.retain(|t| !t.trim().is_empty());
        if c.captions.is_empty() {
            reject(&mut report, &c.id, &c.image, "missing caption");
            continue;
        }
        let group = by_id.entry(c.id.clone()).or_default();
        if group.is_empty() {
            order.push(c.id.clone());
        }
        group.push((c, path));
    }
    let ready: Vec<Vec<(Candidate, PathBuf)>> =
        order.iter().filter_map(|id| by_id.remove(id)).collect();
    // Decode, resize and write in parallel, one id at a time per worker; failures
    // become rejections. Every PNG is written atomically.
    std::fs::create_dir_all(partial.join("images"))?;
    // Resolved once: every image path must resolve inside it.
    let root = base
        .canonicalize()
        .with_context(|| format!("resolving the source folder {}", base.display()))?;
    let pb = crate::util::progress::bar(ready.len() as u64, "images");
    let space = crate::util::space::SpaceWatch::new(partial, ready.len(), "the prepared set");
    let decoded: Vec<(Option<usize>, Vec<String>)> = ready
        .par_iter()
        .map(|group| {
            let mut errors = vec![];
            let mut winner = None;
            for (i, (c, path)) in group.iter().enumerate() {
                if crate::util::signals::interrupted() {
                    errors.push("interrupted".to_string());
                    break;
                }
                let r = contained_file(&root, path)
                    .and_then(|real| {
                        load_rgb(&real, o.size).map_err(|e| format!("unreadable image: {e:#}"))
                    })
                    .and_then(|rgb| {
                        let png = png_bytes(rgb, o.size)
                            .map_err(|e| format!("encoding failed: {e:#}"))?;
                        atomic_write(&partial.join("images").join(format!("{}.png", c.id)), &png)
                            .and_then(|()| space.wrote(png.len() as u64))
                            .map_err(|e| format!("write failed: {e:#}"))
                    });
                match r {
                    Ok(()) => {
                        winner = Some(i);
                        break;
                    }
                    Err(e) => errors.push(e),
                }
            }
            pb.inc(1);
            (winner, errors)
        })
        .collect();
    pb.finish_and_clear();
    if crate::util::signals::interrupted() {
        bail!("interrupted: nothing was written to {}", o.out.display());
    }
    if let Some(e) = decoded
        .iter()
        .flat_map(|(_, errs)| errs)
        .find(|e| e.starts_with("write failed"))
    {
        // A full disk is not a property of one image: stop rather than reject them all.
        bail!("{e}");
    }
    let mut captions = BTreeMap::new();
    let mut rows = vec![];
    // Each image's item ids, for the splits (pairs of one image stay together).
    let mut groups: Vec<(String, Vec<String>)> = vec![];
    for (group, (winner, errors)) in ready.into_iter().zip(decoded) {
        let mut errors = errors.into_iter();
        let mut kept = None;
        for (i, (c, _)) in group.into_iter().enumerate() {
            match winner {
                Some(w) if i == w => kept = Some(c),
                Some(w) if i > w => {
                    let first = kept.as_ref().map_or("", |k: &Candidate| k.image.as_str());
                    reject(
                        &mut report,
                        &c.id,
                        &c.image,
                        &format!("duplicate id: kept {first}"),
                    );
                }
                _ => {
                    let why = errors.next().unwrap_or_else(|| "unreadable image".into());
                    reject(&mut report, &c.id, &c.image, &why);
                }
            }
        }
        let Some(c) = kept else { continue };
        let mut items = vec![];
        match o.multi {
            Multi::First => {
                captions.insert(c.id.clone(), c.captions[0].trim().to_string());
                rows.push(c.meta.clone());
                items.push(c.id.clone());
            }
            Multi::Join => {
                let joined: Vec<String> = c
                    .captions
                    .iter()
                    .map(|t| t.trim().trim_end_matches('.').to_string() + ".")
                    .collect();
                captions.insert(c.id.clone(), joined.join(" "));
                rows.push(c.meta.clone());
                items.push(c.id.clone());
            }
            Multi::Pairs => {
                for (i, t) in c.captions.iter().enumerate() {
                    let id = format!("{}_{i}", c.id);
                    if i > 0 {
                        // Every pair shares the image file of the first.
                        std::fs::copy(
                            partial.join("images").join(format!("{}.png", c.id)),
                            partial.join("images").join(format!("{id}.png")),
                        )?;
                    }
                    captions.insert(id.clone(), t.trim().to_string());
                    rows.push(MetadataRow {
                        id: id.clone(),
                        ..c.meta.clone()
                    });
                    items.push(id);
                }
                std::fs::rename(
                    partial.join("images").join(format!("{}.png", c.id)),
                    partial.join("images").join(format!("{}_0.png", c.id)),
                )?;
            }
        }
        groups.push((c.id, items));
    }
    if captions.len() < 3 {
        bail!(
            "only {} usable items (need at least 3); the rejections by reason: {:?}",
            captions.len(),
            report.rejected
        );
    }
    report.kept = captions.len();
    write_json(&partial.join("captions.json"), &captions)?;
    atomic_write(&partial.join("metadata.csv"), &metadata_csv(&rows)?)?;
    // Split by image: pairs of one image never straddle two splits. Items are looked
    // up by their image, never by a name prefix (`img` and `img_1` are two images).
    let by_image: BTreeMap<&str, &Vec<String>> =
        groups.iter().map(|(g, i)| (g.as_str(), i)).collect();
    write_json(&partial.join("images.json"), &by_image)?;
    let names: Vec<String> = groups.iter().map(|(g, _)| g.clone()).collect();
    let items: HashMap<&str, &Vec<String>> = groups.iter().map(|(g, i)| (g.as_str(), i)).collect();
    let [tr, va, te] = match &o.splits {
        Some(dir) => {
            let (parts, unknown, unlisted) = super::splits::given_splits(dir, &names)?;
            if unknown + unlisted > 0 {
                eprintln!(
                    "given splits: {unknown} listed lines name no prepared image (rejected or absent); {unlisted} prepared images are in no list and left out of every split"
                );
            }
            parts
        }
        None => super::splits::split_ids(&names, o.seed),
    };
    let expand = |g: &[String]| -> Vec<String> {
        g.iter()
            .flat_map(|id| {
                items
                    .get(id.as_str())
                    .into_iter()
                    .flat_map(|v| v.iter().cloned())
            })
            .collect()
    };
    let (tr, va, te) = (expand(&tr), expand(&va), expand(&te));
    for (name, ids) in [("train", &tr), ("val", &va), ("test", &te)] {
        atomic_write(
            &partial.join("splits").join(format!("{name}_ids.txt")),
            (ids.join("\n") + "\n").as_bytes(),
        )?;
    }
    report.splits = [tr.len(), va.len(), te.len()];
    let mut w = csv::Writer::from_writer(vec![]);
    w.write_record(["id", "image", "reason"])?;
    for (id, img, why) in &rejected {
        w.write_record([id, img, why])?;
    }
    atomic_write(&partial.join("rejected.csv"), &w.into_inner()?)?;
    write_json(&partial.join("report.json"), &report)?;
    Ok(report)
}
