//! Rendering the embedded scene set to disk: deterministic small "paintings" with a
//! 100–200-word paragraph each and exact attribute ground truth in `metadata.csv`.

use super::scene::{Scene, STYLES};
use super::{describe, paint};
use crate::data::layout::{metadata_csv, MetadataRow};
use crate::data::splits::write_splits;
use crate::util::fsio::{atomic_write, write_json};
use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// One rendered item, before it is written.
pub struct Item {
    pub id: String,
    pub scene: Scene,
    pub caption: String,
    pub pixels: Vec<u8>,
}

/// Per-item RNG: a function of (seed, index) alone, so any item can be rebuilt alone and
/// the dataset is identical whatever the thread count.
fn item_rng(seed: u64, i: usize) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i as u64)
}

pub fn make_item(seed: u64, i: usize, size: usize) -> Item {
    let mut rng = item_rng(seed, i);
    let scene = Scene::sample(&mut rng);
    let caption = describe::describe(&scene, &mut rng);
    let pixels = paint::paint(&scene, size, rand::Rng::gen(&mut rng));
    Item {
        id: format!("synth_{i:05}"),
        scene,
        caption,
        pixels,
    }
}

/// Renders `n` more scenes of the embedded set's kind in memory: their scenes and their
/// pixels, `n` images of `size`² RGB, concatenated. The RNG streams are disjoint from
/// those of every dataset `data synth` writes (`seed` is mixed with a constant first), so
/// none of these is a training, validation or test image. The probe trains on them
/// beside the training split: it is an instrument, and more renders make it more exact.
pub fn render_extra(seed: u64, n: usize, size: usize) -> (Vec<Scene>, Vec<u8>) {
    const EXTRA_STREAM: u64 = 0x5E_ED0F_E87A_0000;
    let items: Vec<Item> = (0..n)
        .into_par_iter()
        .map(|i| make_item(seed ^ EXTRA_STREAM, i, size))
        .collect();
    let pixels = items
        .iter()
        .flat_map(|it| it.pixels.iter().copied())
        .collect();
    (items.into_iter().map(|it| it.scene).collect(), pixels)
}

pub struct Summary {
    pub n: usize,
    pub splits: [usize; 3],
    pub seconds: f64,
    pub words_min: usize,
    pub words_mean: f64,
    pub words_max: usize,
}

/// Renders `n` items of `size` px into `out` (which must not exist unless `force`).
/// Everything is written into `<out>.partial` first and renamed at the end, so an
/// interrupted run never leaves a dataset that looks complete.
/// The most paintings one `data synth` renders (about 10 GB of 64 px PNGs).
const MAX_IMAGES: usize = 1_000_000;

pub fn render_dataset(
    out: &Path,
    n: usize,
    size: usize,
    seed: u64,
    force: bool,
) -> Result<Summary> {
    crate::util::signals::stop_gracefully();
    if !(16..=256).contains(&size) {
        bail!("--size must be between 16 and 256 pixels, got {size}");
    }
    if !(3..=MAX_IMAGES).contains(&n) {
        bail!("--n must be 3 (one image per split) to {MAX_IMAGES}, got {n}");
    }
    if out.exists() && !force {
        bail!(
            "{} already exists; pass --force to replace it",
            out.display()
        );
    }
    let partial = out.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    let result = render_into(&partial, out, n, size, seed);
    if result.is_err() && partial.exists() {
        // A failed render leaves nothing behind; `out` was not touched.
        let _ = std::fs::remove_dir_all(&partial);
    }
    result
}

/// Renders the set into `partial`, then swaps it in at `out`.
fn render_into(partial: &Path, out: &Path, n: usize, size: usize, seed: u64) -> Result<Summary> {
    let images = partial.join("images");
    std::fs::create_dir_all(&images).with_context(|| format!("creating {}", images.display()))?;
    let start = std::time::Instant::now();
    let pb = crate::util::progress::bar(n as u64, "render");
    let space = crate::util::space::SpaceWatch::new(partial, n, "the rendered set");
    let items: Vec<(String, Scene, String)> = (0..n)
        .into_par_iter()
        .map(|i| -> Result<(String, Scene, String)> {
            if crate::util::signals::interrupted() {
                bail!("interrupted: {} was left as it was", out.display());
            }
            let item = make_item(seed, i, size);
            let img = image::RgbImage::from_raw(size as u32, size as u32, item.pixels)
                .expect("size matches");
            let path = images.join(format!("{}.png", item.id));
            img.save(&path)
                .with_context(|| format!("writing {}", path.display()))?;
            space.wrote(std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0))?;
            pb.inc(1);
            Ok((item.id, item.scene, item.caption))
        })
        .collect::<Result<_>>()?;
    pb.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();

    let mut captions = BTreeMap::new();
    let mut rows = Vec::with_capacity(n);
    let mut words = Vec::with_capacity(n);
    for (id, scene, caption) in &items {
        words.push(describe::word_count(caption));
        captions.insert(id.clone(), caption.clone());
        rows.push(MetadataRow {
            id: id.clone(),
            title: format!("Synthetic scene {id}"),
            artist: "ekphrasis synth".into(),
            year: String::new(),
            medium: STYLES[scene.style].into(),
            style: STYLES[scene.style].into(),
            source: crate::data::layout::SCENE_SOURCE.into(),
            attributes: serde_json::to_string(scene)?,
        });
    }
    write_json(&partial.join("captions.json"), &captions)?;
    atomic_write(&partial.join("metadata.csv"), &metadata_csv(&rows)?)?;
    let ids: Vec<String> = items.iter().map(|i| i.0.clone()).collect();
    let splits = write_splits(&partial.join("splits"), &ids, seed)?;
    crate::util::fsio::replace_dir(partial, out)?;
    Ok(Summary {
        n,
        splits,
        seconds,
        words_min: *words.iter().min().expect("n >= 3 checked"),
        words_mean: words.iter().sum::<usize>() as f64 / n as f64,
        words_max: *words.iter().max().expect("n >= 3 checked"),
    })
}

/// The scene stored in a metadata row of the embedded set.
pub fn scene_of(row: &MetadataRow) -> Result<Scene> {
    serde_json::from_str(&row.attributes).with_context(|| {
        format!(
            "metadata row {}: attributes are not a synthetic scene",
            row.id
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_renders_are_repeatable_and_none_is_a_dataset_item() {
        let (scenes, pixels) = render_extra(0, 40, 16);
        assert_eq!(scenes.len(), 40);
        assert_eq!(pixels.len(), 40 * 16 * 16 * 3);
        assert_eq!(render_extra(0, 40, 16).1, pixels);
        // A dataset of seed 0 or 1 (items 0..200) shares no image with the extra renders.
        let extra: Vec<&[u8]> = pixels.chunks(16 * 16 * 3).collect();
        for seed in [0, 1] {
            for i in 0..200 {
                let item = make_item(seed, i, 16);
                assert!(
                    !extra.contains(&item.pixels.as_slice()),
                    "seed {seed} item {i}"
                );
            }
        }
    }
}
