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

use super::images::load_rgb;
use super::layout::{metadata_csv, MetadataRow};
use crate::util::fsio::{atomic_write, write_json};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

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

fn read_text(path: &Path, non_utf8: &mut usize) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            *non_utf8 += 1;
            String::from_utf8_lossy(e.as_bytes()).into_owned()
        }
    })
}

/// Joins `rel` to `base`, refusing anything that could leave `base`.
pub fn safe_join(base: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if rel.is_empty()
        || p.is_absolute()
        || p.components().any(|c| {
            matches!(
                c,
                Component::ParentDir | Component::RootDir | Component::Prefix(_)
            )
        })
    {
        bail!("path {rel:?} leaves the data folder");
    }
    Ok(base.join(p))
}

fn stem(name: &str) -> String {
    Path::new(name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A safe id: letters, digits, '-', '_' and '.' only (ids become file names).
fn clean_id(raw: &str) -> String {
    raw.trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

const IMAGE_EXTS: [&str; 6] = ["jpg", "jpeg", "png", "webp", "bmp", "gif"];

fn is_image(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| IMAGE_EXTS.contains(&e.to_string_lossy().to_lowercase().as_str()))
}

/// Reads a CSV into header-keyed rows (headers lower-cased and trimmed).
fn csv_rows(path: &Path, non_utf8: &mut usize) -> Result<Vec<HashMap<String, String>>> {
    let text = read_text(path, non_utf8)?;
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = rdr
        .headers()
        .with_context(|| format!("{}: no header row", path.display()))?
        .iter()
        .map(|h| h.trim().to_lowercase())
        .collect();
    let mut rows = vec![];
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: row {}", path.display(), i + 2))?;
        // A short row (the reader is flexible) gets empty fields, so every row has every
        // header key: a missing caption is then rejected as empty, never a panic.
        rows.push(
            headers
                .iter()
                .enumerate()
                .map(|(j, h)| (h.clone(), rec.get(j).unwrap_or("").trim().to_string()))
                .collect(),
        );
    }
    Ok(rows)
}

fn pick(row: &HashMap<String, String>, names: &[&str]) -> String {
    names
        .iter()
        .find_map(|n| row.get(*n).filter(|v| !v.is_empty()).cloned())
        .unwrap_or_default()
}

const ID_COLUMNS: [&str; 7] = [
    "id",
    "artwork_id",
    "image_id",
    "file",
    "filename",
    "file_name",
    "image",
];

/// The art dataset: images named by id, two metadata CSVs joined on id or file stem.
fn collect_art(o: &PrepareOptions, non_utf8: &mut usize) -> Result<(PathBuf, Vec<Candidate>)> {
    let art_dir = o.src.join("artwork");
    if !art_dir.is_dir() {
        bail!("{}: no artwork/ folder (expected artwork/*.jpg, artwork_dataset.csv, info_dataset.csv)", o.src.display());
    }
    let mut meta: HashMap<String, HashMap<String, String>> = HashMap::new();
    for name in ["artwork_dataset.csv", "info_dataset.csv"] {
        let path = o.src.join(name);
        if !path.exists() {
            eprintln!(
                "warning: {} not found; continuing without it",
                path.display()
            );
            continue;
        }
        for row in csv_rows(&path, non_utf8)? {
            let key = stem(&pick(&row, &ID_COLUMNS));
            if !key.is_empty() {
                meta.entry(key).or_default().extend(row);
            }
        }
    }
    let captions: HashMap<String, String> = match &o.captions {
        Some(p) => read_captions_file(p, non_utf8)?,
        None => HashMap::new(),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&art_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_image(p))
        .collect();
    files.sort();
    let mut out = vec![];
    for f in files {
        let name = f
            .file_name()
            .expect("directory entries have names")
            .to_string_lossy()
            .into_owned();
        let id = stem(&name);
        let m = meta.get(&id).cloned().unwrap_or_default();
        let field = |names: &[&str]| pick(&m, names);
        let (title, artist, year) = (
            field(&["title", "name"]),
            field(&["artist", "author", "painter"]),
            field(&["year", "date"]),
        );
        let (medium, style, description) = (
            field(&["medium", "technique"]),
            field(&["style", "movement", "genre"]),
            field(&["description", "desc"]),
        );
        let (caption, source) = match captions.get(&id) {
            Some(c) => (c.clone(), "captions".to_string()),
            None => (
                compose_from_metadata(&title, &artist, &year, &medium, &style, &description),
                "metadata-composed".to_string(),
            ),
        };
        out.push(Candidate {
            id: clean_id(&id),
            image: format!("artwork/{name}"),
            captions: vec![caption],
            meta: MetadataRow {
                id: clean_id(&id),
                title,
                artist,
                year,
                medium,
                style,
                source,
                attributes: String::new(),
            },
        });
    }
    Ok((o.src.clone(), out))
}

/// A plain paragraph from metadata, used when no descriptions were supplied; marked as
/// such in metadata.csv (`source = metadata-composed`).
fn compose_from_metadata(
    title: &str,
    artist: &str,
    year: &str,
    medium: &str,
    style: &str,
    description: &str,
) -> String {
    let mut parts = vec![];
    match (title.is_empty(), artist.is_empty()) {
        (false, false) => parts.push(format!("This work, titled \"{title}\", is by {artist}.")),
        (false, true) => parts.push(format!("This work is titled \"{title}\".")),
        (true, false) => parts.push(format!("This work is by {artist}.")),
        _ => {}
    }
    if !year.is_empty() {
        parts.push(format!("It dates from {year}."));
    }
    if !medium.is_empty() {
        parts.push(format!("The medium is {medium}."));
    }
    if !style.is_empty() {
        parts.push(format!("It belongs to {style}."));
    }
    if !description.is_empty() {
        parts.push(description.to_string());
    }
    parts.join(" ")
}

fn read_captions_file(path: &Path, non_utf8: &mut usize) -> Result<HashMap<String, String>> {
    let text = read_text(path, non_utf8)?;
    if path.extension().is_some_and(|e| e == "jsonl") {
        let mut out = HashMap::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}: line {}", path.display(), i + 1))?;
            let id = v.get("id").or_else(|| v.get("image_id")).and_then(|x| {
                x.as_str()
                    .map(String::from)
                    .or_else(|| x.as_i64().map(|n| n.to_string()))
            });
            let cap = v
                .get("caption")
                .or_else(|| v.get("text"))
                .and_then(|x| x.as_str());
            match (id, cap) {
                (Some(id), Some(c)) => {
                    out.insert(stem(&id), c.to_string());
                }
                _ => bail!(
                    "{}: line {} needs \"id\" and \"caption\"",
                    path.display(),
                    i + 1
                ),
            }
        }
        Ok(out)
    } else {
        let map: HashMap<String, String> = serde_json::from_str(&text)
            .with_context(|| format!("{}: expected {{\"id\": \"caption\", …}}", path.display()))?;
        Ok(map.into_iter().map(|(k, v)| (stem(&k), v)).collect())
    }
}

fn grouped(
    base: PathBuf,
    pairs: Vec<(String, String)>,
    meta_source: &str,
) -> (PathBuf, Vec<Candidate>) {
    // Keep first-seen order of images; collect all captions per image.
    let mut order = vec![];
    let mut by_image: HashMap<String, Vec<String>> = HashMap::new();
    for (img, cap) in pairs {
        if !by_image.contains_key(&img) {
            order.push(img.clone());
        }
        by_image.entry(img).or_default().push(cap);
    }
    let items = order
        .into_iter()
        .map(|img| {
            // An image under a subfolder keeps the folder in its id (`animals/cat.png`:
            // `animals_cat`), so that equal names in two folders stay two images.
            let id = if meta_source == "imagefolder" {
                clean_id(&img[..img.rfind('.').unwrap_or(img.len())])
            } else {
                clean_id(&stem(&img))
            };
            Candidate {
                meta: MetadataRow {
                    id: id.clone(),
                    source: meta_source.into(),
                    ..Default::default()
                },
                id,
                captions: by_image.remove(&img).unwrap_or_default(),
                image: img,
            }
        })
        .collect();
    (base, items)
}

fn collect_captions_csv(
    o: &PrepareOptions,
    non_utf8: &mut usize,
) -> Result<(PathBuf, Vec<Candidate>)> {
    let rows = csv_rows(&o.src, non_utf8)?;
    if rows
        .first()
        .is_some_and(|r| !r.contains_key("image") || !r.contains_key("caption"))
    {
        bail!(
            "{}: the header must have `image` and `caption` columns",
            o.src.display()
        );
    }
    let base = o
        .images
        .clone()
        .unwrap_or_else(|| o.src.parent().unwrap_or(Path::new(".")).to_path_buf());
    let pairs = rows
        .into_iter()
        .map(|r| (r["image"].clone(), r["caption"].clone()))
        .collect();
    Ok(grouped(base, pairs, "captions-csv"))
}

fn collect_coco(o: &PrepareOptions, non_utf8: &mut usize) -> Result<(PathBuf, Vec<Candidate>)> {
    let text = read_text(&o.src, non_utf8)?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", o.src.display()))?;
    let (Some(images), Some(anns)) = (
        v.get("images").and_then(|x| x.as_array()),
        v.get("annotations").and_then(|x| x.as_array()),
    ) else {
        bail!(
            "{}: expected `images` and `annotations` arrays (COCO captions format)",
            o.src.display()
        );
    };
    let mut files: HashMap<i64, String> = HashMap::new();
    let mut order = vec![];
    for (i, im) in images.iter().enumerate() {
        let (Some(id), Some(f)) = (
            im.get("id").and_then(|x| x.as_i64()),
            im.get("file_name").and_then(|x| x.as_str()),
        ) else {
            bail!(
                "{}: images[{i}] needs `id` and `file_name`",
                o.src.display()
            );
        };
        if let Some(first) = files.insert(id, f.to_string()) {
            bail!(
                "{}: images[{i}] ({f}) repeats the id {id} of {first}; COCO image ids must be unique",
                o.src.display()
            );
        }
        order.push(id);
    }
    let mut caps: HashMap<i64, Vec<String>> = HashMap::new();
    for (i, a) in anns.iter().enumerate() {
        let (Some(id), Some(c)) = (
            a.get("image_id").and_then(|x| x.as_i64()),
            a.get("caption").and_then(|x| x.as_str()),
        ) else {
            bail!(
                "{}: annotations[{i}] needs `image_id` and `caption`",
                o.src.display()
            );
        };
        caps.entry(id).or_default().push(c.to_string());
    }
    let base = o
        .images
        .clone()
        .unwrap_or_else(|| o.src.parent().unwrap_or(Path::new(".")).to_path_buf());
    let pairs: Vec<(String, String)> = order
        .iter()
        .flat_map(|id| {
            let f = files[id].clone();
            let cs = caps.remove(id).unwrap_or_else(|| vec![String::new()]);
            cs.into_iter().map(move |c| (f.clone(), c))
        })
        .collect();
    let orphans: usize = caps.values().map(Vec::len).sum();
    if orphans > 0 {
        eprintln!(
            "warning: {}: {orphans} annotations name an image_id that `images` does not list; they were skipped",
            o.src.display()
        );
    }
    Ok(grouped(base, pairs, "coco"))
}

fn collect_imagefolder(
    o: &PrepareOptions,
    non_utf8: &mut usize,
) -> Result<(PathBuf, Vec<Candidate>)> {
    let jsonl = o.src.join("metadata.jsonl");
    let mut pairs = vec![];
    if jsonl.exists() {
        let text = read_text(&jsonl, non_utf8)?;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}: line {}", jsonl.display(), i + 1))?;
            let (Some(f), Some(t)) = (
                v.get("file_name").and_then(|x| x.as_str()),
                v.get("text").and_then(|x| x.as_str()),
            ) else {
                bail!(
                    "{}: line {} needs \"file_name\" and \"text\"",
                    jsonl.display(),
                    i + 1
                );
            };
            pairs.push((f.to_string(), t.to_string()));
        }
    } else {
        let mut files = vec![];
        images_below(&o.src, &mut files)?;
        files.sort();
        for f in files {
            let txt = f.with_extension("txt");
            let cap = if txt.exists() {
                first_language(&read_text(&txt, non_utf8)?)
            } else {
                String::new()
            };
            let rel = f.strip_prefix(&o.src).expect("walked below the source");
            pairs.push((rel.to_string_lossy().into_owned(), cap));
        }
    }
    Ok(grouped(o.src.clone(), pairs, "imagefolder"))
}

/// The image files in `dir` and its subfolders; linked folders are not walked (a link
/// could lead outside the source, or in a circle).
fn images_below(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        let path = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            images_below(&path, out)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// A caption file's text without the translations that follow it as `<lang>.utf8=…`
/// lines (Tux Paint's stamp descriptions: the English line first, then one per language).
fn first_language(text: &str) -> String {
    let is_translation = |l: &str| {
        l.split_once(".utf8=").is_some_and(|(lang, _)| {
            !lang.is_empty()
                && lang.len() <= 16
                && lang
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_@-".contains(c))
        })
    };
    text.lines()
        .take_while(|l| !is_translation(l))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

fn collect_text_c10(o: &PrepareOptions, non_utf8: &mut usize) -> Result<(PathBuf, Vec<Candidate>)> {
    let text_dir = o.src.join("text_c10");
    if !text_dir.is_dir() {
        bail!("{}: no text_c10/ folder", o.src.display());
    }
    let images = o.images.clone().unwrap_or_else(|| o.src.join("images"));
    // Index the image folder (recursively) by file stem.
    let mut by_stem: HashMap<String, String> = HashMap::new();
    let mut stack = vec![images.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .with_context(|| format!("reading {}", d.display()))?
            .flatten()
        {
            let p = e.path();
            // A linked folder is not walked: it could lead out of the source.
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if is_image(&p) {
                let rel = p
                    .strip_prefix(&images)
                    .expect("the walk starts at the image folder")
                    .to_string_lossy()
                    .into_owned();
                by_stem.entry(stem(&rel)).or_insert(rel);
            }
        }
    }
    let mut txts = vec![];
    let mut stack = vec![text_dir];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "txt") {
                txts.push(p);
            }
        }
    }
    txts.sort();
    let mut pairs = vec![];
    for t in txts {
        let s = stem(&t.to_string_lossy());
        let img = by_stem
            .get(&s)
            .cloned()
            .unwrap_or_else(|| format!("{s}.jpg"));
        for line in read_text(&t, non_utf8)?.lines() {
            pairs.push((img.clone(), line.trim().to_string()));
        }
    }
    Ok(grouped(images, pairs, "text_c10"))
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
