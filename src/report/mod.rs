//! Reports: self-contained HTML pages (images inlined as base64 PNG), plots and
//! TensorBoard projector files.

pub mod cycle;
pub mod grid;
pub mod headline;
pub mod plots;
pub mod projector;

use crate::data::layout::Dataset;
use crate::util::fsio::atomic_write;
use anyhow::Result;
use base64::Engine;
use std::collections::BTreeMap;
use std::path::Path;

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A `data:` URL of an image file's bytes.
pub fn data_url(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path)?;
    let mime = if path.extension().is_some_and(|e| e == "png") {
        "image/png"
    } else {
        "image/jpeg"
    };
    Ok(format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

/// A `data:` URL of RGB bytes (HWC) as PNG.
pub fn rgb_data_url(rgb: &[u8], width: u32, height: u32) -> Result<String> {
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_raw(width, height, rgb.to_vec())
        .ok_or_else(|| anyhow::anyhow!("image buffer does not match {width}×{height}"))?
        .write_to(&mut png, image::ImageFormat::Png)?;
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png.get_ref())
    ))
}

pub const STYLE: &str =
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}\
img{image-rendering:pixelated;width:128px;height:128px}.cap{font-size:13px;max-width:420px}";

pub fn metrics_table(m: &BTreeMap<String, f64>) -> String {
    let rows: String = m
        .iter()
        .map(|(k, v)| format!("<tr><td>{}</td><td>{v:.4}</td></tr>", escape(k)))
        .collect();
    format!("<table><tr><th>metric</th><th>value</th></tr>{rows}</table>")
}

/// The captioner's evaluation page: image | generated paragraph | reference paragraph.
pub fn caption_page(
    out: &Path,
    ds: &Dataset,
    rows: &[(String, String, String)],
    metrics: &BTreeMap<String, f64>,
) -> Result<()> {
    let mut body = String::new();
    for (id, generated, reference) in rows {
        let img = data_url(&ds.image_path(id)?)?;
        body.push_str(&format!(
            "<tr><td><img src=\"{img}\" alt=\"{id}\"><br>{id}</td><td class=cap>{}</td><td class=cap>{}</td></tr>",
            escape(generated),
            escape(reference)
        ));
    }
    let html = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>captioner evaluation</title><style>{STYLE}</style></head><body>\
<h1>Captioner evaluation</h1>{}<h2>Samples</h2><table><tr><th>image</th><th>generated</th><th>reference</th></tr>{body}</table></body></html>",
        metrics_table(metrics)
    );
    atomic_write(&out.join("index.html"), html.as_bytes())
}
