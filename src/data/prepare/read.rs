//! What every source shares: text read lossily as UTF-8 (and counted), CSV rows keyed
//! by header, caption files, captions grouped per image, paths that cannot leave the
//! source, and ids safe as file names.

use super::*;

pub(super) fn read_text(path: &Path, non_utf8: &mut usize) -> Result<String> {
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

pub(super) fn stem(name: &str) -> String {
    Path::new(name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A safe id: letters, digits, '-', '_' and '.' only (ids become file names).
pub(super) fn clean_id(raw: &str) -> String {
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

pub(super) const IMAGE_EXTS: [&str; 6] = ["jpg", "jpeg", "png", "webp", "bmp", "gif"];

pub(super) fn is_image(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| IMAGE_EXTS.contains(&e.to_string_lossy().to_lowercase().as_str()))
}

/// Reads a CSV into header-keyed rows (headers lower-cased and trimmed).
pub(super) fn csv_rows(path: &Path, non_utf8: &mut usize) -> Result<Vec<HashMap<String, String>>> {
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

pub(super) fn pick(row: &HashMap<String, String>, names: &[&str]) -> String {
    names
        .iter()
        .find_map(|n| row.get(*n).filter(|v| !v.is_empty()).cloned())
        .unwrap_or_default()
}

pub(super) const ID_COLUMNS: [&str; 7] = [
    "id",
    "artwork_id",
    "image_id",
    "file",
    "filename",
    "file_name",
    "image",
];

pub(super) fn read_captions_file(
    path: &Path,
    non_utf8: &mut usize,
) -> Result<HashMap<String, String>> {
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

pub(super) fn grouped(
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
