//! Reading user-supplied caption files.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// The `caption` column of a CSV file (header required), one text per row. Rows are
/// numbered in errors as in a spreadsheet (the header is row 1).
pub fn read_caption_column(path: &Path) -> Result<Vec<String>> {
    let mut rdr =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let headers = rdr
        .headers()
        .with_context(|| format!("{}: no header row", path.display()))?
        .clone();
    let Some(col) = headers.iter().position(|h| h.trim() == "caption") else {
        bail!(
            "{}: no `caption` column (header: {})",
            path.display(),
            headers.iter().collect::<Vec<_>>().join(",")
        );
    };
    let mut out = vec![];
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: row {}", path.display(), i + 2))?;
        let text = rec.get(col).unwrap_or("").trim().to_string();
        if text.is_empty() {
            bail!("{}: row {} has an empty caption", path.display(), i + 2);
        }
        out.push(text);
    }
    if out.is_empty() {
        bail!("{}: no captions", path.display());
    }
    Ok(out)
}
