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

/// The standard error of a proportion `p` measured on `n` images.
fn proportion_se(p: f64, n: usize) -> f64 {
    (p * (1.0 - p) / n.max(1) as f64).sqrt()
}

/// Whether column `a` is clearly above column `b` on `metric` (Some(true)), clearly
/// below (Some(false)) or within noise (None): apart by more than twice the standard
/// error of their difference. R-precision is a proportion; other figures carry their
/// own `<metric>_se` (taken as 0 where a table has none). None when either is missing.
fn compare(t: &Table, n: usize, a: &str, b: &str, metric: &str) -> Option<bool> {
    let (x, y) = (get(t, a, metric)?, get(t, b, metric)?);
    let se = |col: &str, v: f64| {
        if metric == "r_precision" {
            proportion_se(v, n)
        } else {
            get(t, col, &format!("{metric}_se")).unwrap_or(0.0)
        }
    };
    let spread = 2.0 * (se(a, x).powi(2) + se(b, y).powi(2)).sqrt();
    if x - y > spread {
        Some(true)
    } else if y - x > spread {
        Some(false)
    } else {
        None
    }
}

/// A few sentences answering the research question from the table of `n` images. A
/// share of the ceiling is stated only when the ceiling (true captions) is clearly above
/// the floor (random captions): R-precision apart by more than twice the standard error
/// of their difference. Otherwise the generator does not use its text, and the cycle
/// cannot say how much of an image the paragraph carries through it.
pub fn answer(t: &Table, n: usize) -> String {
    let mut out = vec![];
    let (floor, ceiling) = ("floor (random caption)", "ceiling (true caption)");
    let uses_text = match (get(t, ceiling, "r_precision"), get(t, floor, "r_precision")) {
        (Some(h), Some(f)) => {
            let se = (proportion_se(h, n).powi(2) + proportion_se(f, n).powi(2)).sqrt();
            let clear = h - f > 2.0 * se;
            if !clear {
                out.push(format!(
                    "This generator does not use its text: from the true captions its pictures find their caption with R-precision {h:.3} (± {:.3}), and from random captions {f:.3} (± {:.3}), within noise of each other on {n} images. So this cycle cannot say how much of an image a paragraph carries.",
                    proportion_se(h, n),
                    proportion_se(f, n)
                ));
            }
            clear
        }
        _ => true,
    };
    let key = if get(t, "cycle", "probe_attr_agreement").is_some() {
        "probe_attr_agreement"
    } else {
        "clip_image_text"
    };
    if let (true, Some(c), Some(f), Some(h)) = (
        uses_text,
        get(t, "cycle", key),
        get(t, floor, key),
        get(t, ceiling, key),
    ) {
        if h > f {
            let closed = (c - f) / (h - f) * 100.0;
            out.push(format!(
                "Through a paragraph written by the captioner, the reconstruction reaches {key} {c:.3}, against {f:.3} for a random caption (floor) and {h:.3} for the true caption (ceiling): it keeps {closed:.0} % of the way from floor to ceiling."
            ));
            if closed >= 90.0 {
                out.push("The cycle sits at its ceiling, so the limit is the generator's drawing, not the paragraph.".to_string());
            }
        }
    }
    if let (Some(c), Some(f), Some(h)) = (
        get(t, "cycle", "r_precision"),
        get(t, floor, "r_precision"),
        get(t, ceiling, "r_precision"),
    ) {
        let noisy = compare(t, n, "cycle", floor, "r_precision") != Some(true);
        out.push(format!(
            "The reconstruction picks its original's caption among up to 100 with R-precision {c:.3} (± {:.3}; floor {f:.3}, ceiling {h:.3}){}.",
            proportion_se(c, n),
            if noisy { ", within noise of its floor" } else { "" }
        ));
    }
    // Retrieval against generation, figure by figure, said only where the two are apart
    // by more than noise.
    let nn = "nearest neighbour";
    let (mut retrieval, mut generation, mut tied) = (vec![], vec![], vec![]);
    for (m, name) in [
        ("r_precision", "R-precision"),
        ("clip_image_image", "the contrastive image–image score"),
    ] {
        match compare(t, n, nn, "cycle", m) {
            Some(true) => retrieval.push(name),
            Some(false) => generation.push(name),
            None if get(t, "cycle", m).is_some() && get(t, nn, m).is_some() => tied.push(name),
            None => {}
        }
    }
    if !retrieval.is_empty() {
        out.push(format!(
            "Retrieval beats generation: the training image whose caption is nearest to the paragraph is closer to the original on {}.",
            retrieval.join(" and ")
        ));
    }
    if !generation.is_empty() {
        out.push(format!(
            "Generation beats retrieving the nearest training image by caption on {}.",
            generation.join(" and ")
        ));
    }
    if !tied.is_empty() {
        out.push(format!(
            "Generation and retrieval are within noise of each other on {} (apart by less than twice the standard error of their difference on {n} images).",
            tied.join(" and ")
        ));
    }
    if let (true, Some(p)) = (uses_text, get(t, "cycle", "psnr")) {
        out.push(format!("Pixel agreement stays low (PSNR {p:.1} dB): a paragraph keeps what is in the picture and where, not the exact pixels."));
    }
    if out.is_empty() {
        "Not enough metrics to answer.".into()
    } else {
        out.join(" ")
    }
}

/// What the cycle's page shows, computed by the cycle stage.
pub struct Page<'a> {
    /// The split's originals and their true captions.
    pub data: &'a SplitData,
    /// The split's name, for the page.
    pub split: &'a str,
    /// The captioner's paragraph of each original.
    pub generated: &'a [String],
    /// The pictures drawn from those paragraphs, and from the true captions.
    pub recon: &'a Tensor,
    pub ceiling: &'a Tensor,
    pub table: &'a Table,
    /// The headline figures' table ([`super::headline::table_html`]): this run's, and
    /// those of the reports given to `--beside`.
    pub headline: String,
    /// 5 pictures for each of the split's first captions, one row per caption (the
    /// Reverse Image Caption competition's 5 captions × 5 noises).
    pub grid_images: Option<&'a Tensor>,
}

/// Writes the cycle's page (`index.html`) and `examples.json` into `out`.
pub fn write(out: &Path, page: &Page) -> Result<()> {
    let Page {
        data,
        split,
        generated,
        recon,
        ceiling,
        table,
        ref headline,
        grid_images,
    } = *page;
    let metrics: Vec<String> = {
        // A `<name>_se` entry is shown as ± beside `<name>`, not as a row of its own.
        let mut m: Vec<String> = table
            .values()
            .flat_map(|c| c.keys().cloned())
            .filter(|k| !k.ends_with("_se"))
            .collect();
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
            match (get(table, c, m), get(table, c, &format!("{m}_se"))) {
                (Some(v), Some(se)) => rows.push_str(&format!("<td>{v:.3} ± {se:.3}</td>")),
                (Some(v), None) => rows.push_str(&format!("<td>{v:.3}</td>")),
                (None, _) => rows.push_str("<td></td>"),
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
<h2>Headline</h2><p>The captioner's and the generator's own evaluations on this split (where <code>eval</code> has run) and the cycle's; a report given to \
<code>cycle --beside</code> (e.g. the scene-supervised path, an upper bound that also learns from the embedded set's scene facts) in a column of its own.</p>{headline}\
<h2>Metrics</h2><p>Each column compares the original image with the image drawn from: a random other caption (floor), the captioner's paragraph (cycle), \
nothing (the training image whose caption is nearest to the paragraph), the true caption (ceiling). Embedding scores use the contrastive model trained here \
(\"own encoder\", not CLIP){probe_note}. ± is the standard error over the {n} images (of a proportion, for R-precision).</p>\
<table><tr><th>metric</th>{head}</tr>{rows}</table>\
<h2>Gallery</h2><table><tr><th>original</th><th>generated paragraph</th><th>reconstruction</th><th>from the true caption</th></tr>{gallery}</table>\
<h2>5 captions × 5 noises</h2><table>{grid}</table></body></html>",
        n = data.ids.len(),
        answer = escape(&answer(table, data.ids.len())),
        probe_note = if get(table, "cycle", "probe_attr_agreement").is_some() {
            "; probe scores use the attribute probe trained on the embedded set's scenes"
        } else {
            ""
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: &[(&str, &[(&str, f64)])]) -> Table {
        rows.iter()
            .map(|(col, ms)| {
                let m = ms.iter().map(|(k, v)| (k.to_string(), *v)).collect();
                (col.to_string(), m)
            })
            .collect()
    }

    #[test]
    fn a_ceiling_within_noise_of_the_floor_is_no_share_of_anything() {
        // Tux Paint's figures: 79 images, ceiling 0.038 against floor 0.025.
        let t = table(&[
            (
                "floor (random caption)",
                &[
                    ("r_precision", 0.025),
                    ("clip_image_text", 6.35),
                    ("clip_image_image", 8.6),
                ],
            ),
            (
                "cycle",
                &[
                    ("r_precision", 0.013),
                    ("clip_image_text", 7.36),
                    ("clip_image_image", 13.8),
                ],
            ),
            (
                "nearest neighbour",
                &[("r_precision", 0.076), ("clip_image_image", 21.7)],
            ),
            (
                "ceiling (true caption)",
                &[
                    ("r_precision", 0.038),
                    ("clip_image_text", 10.1),
                    ("clip_image_image", 10.5),
                ],
            ),
        ]);
        let a = answer(&t, 79);
        assert!(a.contains("does not use its text"), "{a}");
        assert!(!a.contains('%'), "{a}");
        assert!(
            a.contains("Retrieval beats generation") && a.contains("image–image"),
            "{a}"
        );
    }

    #[test]
    fn a_clear_ceiling_gives_the_share_of_the_way_from_floor_to_it() {
        // The embedded set's demo: 500 images, ceiling 0.908 against floor 0.006.
        let t = table(&[
            (
                "floor (random caption)",
                &[("r_precision", 0.006), ("probe_attr_agreement", 0.346)],
            ),
            (
                "cycle",
                &[("r_precision", 0.906), ("probe_attr_agreement", 0.786)],
            ),
            ("nearest neighbour", &[("r_precision", 0.900)]),
            (
                "ceiling (true caption)",
                &[("r_precision", 0.908), ("probe_attr_agreement", 0.814)],
            ),
        ]);
        let a = answer(&t, 500);
        assert!(
            a.contains("94 % of the way") && a.contains("sits at its ceiling"),
            "{a}"
        );
        assert!(
            a.contains("within noise of each other on R-precision"),
            "0.906 against 0.900 on 500 images: {a}"
        );
        assert!(!a.contains("does not use its text"), "{a}");
    }

    #[test]
    fn retrieval_and_generation_are_ranked_only_beyond_their_noise() {
        // Tux Paint's cycle, 79 images: every difference within twice its standard error.
        let tux = |cycle_ii: f64| {
            table(&[
                (
                    "floor (random caption)",
                    &[("r_precision", 0.013), ("clip_image_text", 8.0)],
                ),
                (
                    "cycle",
                    &[
                        ("r_precision", 0.025),
                        ("clip_image_text", 12.7),
                        ("clip_image_image", cycle_ii),
                        ("clip_image_image_se", 1.0),
                    ],
                ),
                (
                    "nearest neighbour",
                    &[
                        ("r_precision", 0.101),
                        ("clip_image_image", 30.4),
                        ("clip_image_image_se", 2.8),
                    ],
                ),
                (
                    "ceiling (true caption)",
                    &[("r_precision", 0.152), ("clip_image_text", 21.6)],
                ),
            ])
        };
        let a = answer(&tux(27.4), 79);
        assert!(a.contains("within noise of its floor"), "{a}");
        assert!(
            a.contains(
                "within noise of each other on R-precision and the contrastive image–image score"
            ),
            "{a}"
        );
        assert!(!a.contains("beats"), "{a}");
        let a = answer(&tux(40.0), 79);
        assert!(
            a.contains("Generation beats retrieving the nearest training image by caption on the contrastive image–image score"),
            "{a}"
        );
    }
}
