//! Sources whose captions stand beside the images: an image folder (metadata.jsonl or a
//! .txt per image, as Tux Paint's stamps) and the Oxford-102 / CUB `text_c10` layout.

use super::*;

pub(super) fn collect_imagefolder(
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

pub(super) fn collect_text_c10(
    o: &PrepareOptions,
    non_utf8: &mut usize,
) -> Result<(PathBuf, Vec<Candidate>)> {
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
