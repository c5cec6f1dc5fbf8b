//! `score`: pictures against the captions they were painted from, as the Reverse Image
//! Caption competition scores a submission: the image–text cosine distance under a
//! contrastive model trained apart from the generator, and a label-free Inception-style
//! score over the set ([`crate::eval::embedding::caption_posteriors`]).

use crate::cli::ScoreArgs;
use crate::data::images::load_batch;
use crate::eval::embedding::{caption_posteriors, inception_style_score};
use crate::export::exported::ExportedClip;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// One scored row: the picture, the caption it was painted from.
struct Row {
    image: PathBuf,
    caption: String,
}

#[derive(Serialize)]
struct Summary {
    images: usize,
    distinct_captions: usize,
    /// Mean of 1 − cos(image, its caption).
    mean_cosine_distance: f64,
    /// 100 × max(cos, 0), averaged (Hessel et al. 2021's CLIPScore without its w).
    clip_score: f64,
    /// Share of pictures whose own caption is the closest of the distinct captions.
    caption_r1: f64,
    /// exp(E_x KL(p(c|x) ‖ p(c))) over the distinct captions (1 … distinct_captions).
    inception_style: f64,
    model: PathBuf,
}

pub(super) fn run(a: &ScoreArgs, device: Device) -> Result<()> {
    // Every input is checked before the model loads.
    let rows = read_rows(&a.captions, &a.images)?;
    if a.out.extension().and_then(|e| e.to_str()) != Some("csv") {
        bail!("--out {}: give a .csv file name", a.out.display());
    }
    let clip = ExportedClip::load(&a.model, device)?;
    let size = clip.manifest.image_size as u32;
    let paths: Vec<PathBuf> = rows.iter().map(|r| r.image.clone()).collect();
    let mut image_rows = vec![];
    for chunk in paths.chunks(256) {
        image_rows.push(clip.embed_images(&load_batch(chunk, size)?)?);
    }
    let images = Tensor::cat(&image_rows, 0).to_device(Device::Cpu);
    // The distinct captions are the classes; several pictures of one caption (several
    // noises) share a class, so they are never each other's distractors.
    let mut classes: BTreeMap<&str, i64> = BTreeMap::new();
    for r in &rows {
        let next = classes.len() as i64;
        classes.entry(r.caption.as_str()).or_insert(next);
    }
    let mut texts = vec![String::new(); classes.len()];
    for (t, &i) in &classes {
        texts[i as usize] = t.to_string();
    }
    let captions = clip.embed_texts(&texts)?.to_device(Device::Cpu);
    let own: Vec<i64> = rows.iter().map(|r| classes[r.caption.as_str()]).collect();
    let own = Tensor::from_slice(&own);
    let cos = (&images * captions.index_select(0, &own)).sum_dim_intlist(1, false, Kind::Float);
    let posteriors = caption_posteriors(&images, &captions);
    let best = posteriors.argmax(1, false);
    let summary = Summary {
        images: rows.len(),
        distinct_captions: texts.len(),
        mean_cosine_distance: (cos.neg() + 1.0).mean(Kind::Double).double_value(&[]),
        clip_score: (cos.clamp_min(0.0) * 100.0)
            .mean(Kind::Double)
            .double_value(&[]),
        caption_r1: best
            .eq_tensor(&own)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[]),
        inception_style: inception_style_score(&posteriors),
        model: a.model.clone(),
    };
    let cos: Vec<f32> = Vec::try_from(&cos).context("cosines")?;
    write_csv(&a.out, &rows, &cos)?;
    let json = a.out.with_extension("json");
    crate::util::fsio::write_json(&json, &summary)?;
    println!(
        "scored {} images against {} distinct captions: cosine distance {:.4}, CLIP-style score {:.2}, own caption first {:.3}, Inception-style {:.2} (of at most {}); wrote {} and {}",
        summary.images,
        summary.distinct_captions,
        summary.mean_cosine_distance,
        summary.clip_score,
        summary.caption_r1,
        summary.inception_style,
        summary.distinct_captions,
        a.out.display(),
        json.display()
    );
    Ok(())
}

/// The CSV's rows with their picture paths, checked: a `caption` column, an optional
/// `image` column of files in `dir`, or the pictures of `dir` in name order, the same
/// number for every row.
fn read_rows(csv_path: &Path, dir: &Path) -> Result<Vec<Row>> {
    if !dir.is_dir() {
        bail!("--images {}: not a folder", dir.display());
    }
    let mut rdr = csv::Reader::from_path(csv_path)
        .with_context(|| format!("reading {}", csv_path.display()))?;
    let headers = rdr
        .headers()
        .with_context(|| format!("{}: no header row", csv_path.display()))?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h.trim() == name);
    let Some(caption_col) = column("caption") else {
        bail!("{}: no `caption` column", csv_path.display());
    };
    let image_col = column("image");
    let mut listed = vec![];
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.with_context(|| format!("{}: row {line}", csv_path.display()))?;
        let caption = rec.get(caption_col).unwrap_or("").trim().to_string();
        if caption.is_empty() {
            bail!("{}: row {line} has an empty caption", csv_path.display());
        }
        let image = match image_col {
            Some(c) => {
                let name = rec.get(c).unwrap_or("").trim();
                let path = dir.join(name);
                if name.is_empty() || !path.is_file() {
                    bail!(
                        "{}: row {line} names image {name:?}, which is not a file in {}",
                        csv_path.display(),
                        dir.display()
                    );
                }
                Some(path)
            }
            None => None,
        };
        listed.push((image, caption));
    }
    if listed.is_empty() {
        bail!("{}: no rows", csv_path.display());
    }
    if image_col.is_some() {
        return Ok(listed
            .into_iter()
            .map(|(image, caption)| Row {
                image: image.unwrap_or_default(),
                caption,
            })
            .collect());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        // draw --grid's own sheet is not one of the pictures.
        .filter(|p| p.file_name().is_some_and(|n| n != "grid.png"))
        .filter(|p| {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            p.is_file() && ["png", "jpg", "jpeg"].contains(&ext.to_ascii_lowercase().as_str())
        })
        .collect();
    files.sort();
    // k pictures per caption in name order, as `draw --n k` names them
    // (caption000_noise0.png …): row i owns pictures i·k … i·k + k − 1.
    if files.is_empty() || !files.len().is_multiple_of(listed.len()) {
        bail!(
            "{} has {} captions and {} holds {} pictures: add an `image` column, or give the same number of pictures for every row",
            csv_path.display(),
            listed.len(),
            dir.display(),
            files.len()
        );
    }
    let per_row = files.len() / listed.len();
    Ok(files
        .into_iter()
        .enumerate()
        .map(|(i, image)| Row {
            image,
            caption: listed[i / per_row].1.clone(),
        })
        .collect())
}

fn write_csv(out: &Path, rows: &[Row], cos: &[f32]) -> Result<()> {
    let mut w = csv::Writer::from_writer(vec![]);
    w.write_record(["image", "caption", "cosine_distance"])?;
    for (r, c) in rows.iter().zip(cos) {
        let name = r.image.file_name().unwrap_or_default().to_string_lossy();
        w.write_record([
            name.as_ref(),
            r.caption.as_str(),
            &format!("{:.6}", 1.0 - c),
        ])?;
    }
    let bytes = w.into_inner().context("writing the score CSV")?;
    crate::util::fsio::atomic_write(out, &bytes)
}
