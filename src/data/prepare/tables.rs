//! Sources whose captions stand in tables: the artwork dataset's CSVs, a captions CSV,
//! and COCO captions JSON.

use super::*;

/// The art dataset: images named by id, two metadata CSVs joined on id or file stem.
pub(super) fn collect_art(
    o: &PrepareOptions,
    non_utf8: &mut usize,
) -> Result<(PathBuf, Vec<Candidate>)> {
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

pub(super) fn collect_captions_csv(
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

pub(super) fn collect_coco(
    o: &PrepareOptions,
    non_utf8: &mut usize,
) -> Result<(PathBuf, Vec<Candidate>)> {
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
