//! The cycle report: `reports/<name>/index.html` (self-contained, images inlined) with
//! the metric table (cycle between its floor, ceiling and nearest-neighbour baseline), a
//! short answer to the research question written from the numbers, a gallery and the
//! seed-004 grid (5 captions × 5 noises).

use super::{escape, rgb_data_url, STYLE};
use crate::data::loader::SplitData;
use crate::util::fsio::atomic_write;
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

type Table = BTreeMap<String, BTreeMap<String, f64>>;

const COLUMNS: [&str; 4] = [
    "floor (random caption)",
    "cycle",
    "nearest neighbour",
    "ceiling (true caption)",
];

fn image_url(images: &Tensor, i: i64) -> Result<String> {
    let s = images.size()[2] as u32;
    let rgb: Vec<u8> = Vec::try_from(images.get(i).permute([1, 2, 0]).contiguous().view([-1]))?;
    rgb_data_url(&rgb, s, s)
}

fn get(t: &Table, col: &str, metric: &str) -> Option<f64> {
    t.get(col).and_then(|m| m.get(metric)).copied()
}

/// A few sentences answering the research question from the table.
pub fn answer(t: &Table) -> String {
    let mut out = vec![];
    let key = if get(t, "cycle", "probe_attr_agreement").is_some() {
        "probe_attr_agreement"
    } else {
        "clip_image_text"
    };
    if let (Some(c), Some(f), Some(h)) = (
        get(t, "cycle", key),
        get(t, "floor (random caption)", key),
        get(t, "ceiling (true caption)", key),
    ) {
        let closed = if h > f {
            (c - f) / (h - f) * 100.0
        } else {
            0.0
        };
        out.push(format!(
            "Through a paragraph written by the captioner, the reconstruction reaches {key} {c:.3}, against {f:.3} for a random caption (floor) and {h:.3} for the true caption (ceiling): language carries {closed:.0} % of what this generator can carry at all."
        ));
        if closed >= 90.0 {
            out.push("The cycle sits at its ceiling, so the limit is the generator's drawing, not the paragraph.".to_string());
        }
    }
    if let (Some(c), Some(f), Some(h)) = (
        get(t, "cycle", "r_precision"),
        get(t, "floor (random caption)", "r_precision"),
        get(t, "ceiling (true caption)", "r_precision"),
    ) {
        out.push(format!("The reconstruction picks its original's caption out of 100 with R-precision {c:.3} (floor {f:.3}, ceiling {h:.3})."));
    }
    if let (Some(c), Some(n)) = (
        get(t, "cycle", "r_precision"),
        get(t, "nearest neighbour", "r_precision"),
    ) {
        let verdict = if c >= n {
            "matches or beats"
        } else {
            "falls short of"
        };
        out.push(format!("Generation {verdict} retrieving the nearest training image by caption (R-precision {n:.3})."));
    }
    if let Some(p) = get(t, "cycle", "psnr") {
        out.push(format!("Pixel agreement stays low (PSNR {p:.1} dB): a paragraph keeps what is in the picture and where, not the exact pixels."));
    }
    if out.is_empty() {
        "Not enough metrics to answer.".into()
    } else {
        out.join(" ")
    }
}

/// Writes the cycle's page. `grid_images` holds 5 pictures for each of the split's first
/// captions, one row per caption (the Reverse Image Caption competition's 5 captions ×
/// 5 noises), drawn by the caller.
pub fn write(
    out: &Path,
    data: &SplitData,
    generated: &[String],
    recon: &Tensor,
    ceiling: &Tensor,
    table: &Table,
    grid_images: Option<&Tensor>,
) -> Result<()> {
    let metrics: Vec<String> = {
        let mut m: Vec<String> = table.values().flat_map(|c| c.keys().cloned()).collect();
        m.sort();
        m.dedup();
        m
    };
    // The four fixed columns, then any extra generator (the invertible bridge).
    let columns: Vec<&str> = COLUMNS
        .iter()
        .copied()
        .chain(
            table
                .keys()
                .map(String::as_str)
                .filter(|k| !COLUMNS.contains(k)),
        )
        .collect();
    let mut rows = String::new();
    for m in &metrics {
        rows.push_str(&format!("<tr><td>{}</td>", escape(m)));
        for &c in &columns {
            match get(table, c, m) {
                Some(v) => rows.push_str(&format!("<td>{v:.3}</td>")),
                None => rows.push_str("<td></td>"),
            }
        }
        rows.push_str("</tr>");
    }
    let head: String = columns
        .iter()
        .map(|c| format!("<th>{}</th>", escape(c)))
        .collect();
    let mut gallery = String::new();
    for i in 0..(data.ids.len().min(24)) as i64 {
        gallery.push_str(&format!(
            "<tr><td><img src=\"{}\" alt=\"original {id}\"><br>{id}</td><td class=cap>{}</td><td><img src=\"{}\" alt=\"reconstruction\"></td><td><img src=\"{}\" alt=\"from the true caption\"></td></tr>",
            image_url(&data.images, i)?,
            escape(&generated[i as usize]),
            image_url(recon, i)?,
            image_url(ceiling, i)?,
            id = escape(&data.ids[i as usize]),
        ));
    }
    let mut grid = String::new();
    if let Some(imgs) = grid_images {
        for r in 0..imgs.size()[0] / 5 {
            let cells: Vec<String> = (0..5)
                .map(|c| {
                    image_url(imgs, r * 5 + c)
                        .map(|u| format!("<td><img src=\"{u}\" alt=\"noise {c}\"></td>"))
                })
                .collect::<Result<_>>()?;
            grid.push_str(&format!(
                "<tr><td class=cap>{}</td>{}</tr>",
                escape(&data.captions[r as usize]),
                cells.concat()
            ));
        }
    }
    let html = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>ekphrasis cycle report</title><style>{STYLE}</style></head><body>\
<h1>Image → caption → image</h1>\
<p>Does a 100–200-word paragraph, written by one network and read by another trained independently, carry an image's meaning? {n} {split} images.</p>\
<h2>Answer</h2><p>{answer}</p>\
<h2>Metrics</h2><p>Each column compares the original image with the image drawn from: a random other caption (floor), the captioner's paragraph (cycle), \
nothing (the training image whose caption is nearest to the paragraph), the true caption (ceiling). Embedding scores use the contrastive model trained here \
(\"own encoder\", not CLIP); probe scores use the attribute probe trained on real images.</p>\
<table><tr><th>metric</th>{head}</tr>{rows}</table>\
<h2>Gallery</h2><table><tr><th>original</th><th>generated paragraph</th><th>reconstruction</th><th>from the true caption</th></tr>{gallery}</table>\
<h2>5 captions × 5 noises</h2><table>{grid}</table></body></html>",
        n = data.ids.len(),
        split = "test",
        answer = escape(&answer(table)),
    );
    atomic_write(&out.join("index.html"), html.as_bytes())?;
    write_examples(out, data, generated, recon)
}

/// One image of a cycle report: the original, the captioner's paragraph, the true
/// paragraph and the picture painted back (PNG data URLs). `examples.json` holds every
/// image of the split; `ekphrasis serve --report` browses it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Example {
    pub id: String,
    pub caption: String,
    pub generated: String,
    pub original: String,
    pub reconstruction: String,
}

fn write_examples(
    out: &Path,
    data: &SplitData,
    generated: &[String],
    recon: &Tensor,
) -> Result<()> {
    let examples = (0..data.ids.len())
        .map(|i| {
            Ok(Example {
                id: data.ids[i].clone(),
                caption: data.captions[i].clone(),
                generated: generated[i].clone(),
                original: image_url(&data.images, i as i64)?,
                reconstruction: image_url(recon, i as i64)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    atomic_write(&out.join("examples.json"), &serde_json::to_vec(&examples)?)
}
