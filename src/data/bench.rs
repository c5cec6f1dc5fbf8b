//! `ekphrasis bench loader`: how fast images are decoded and resized (rayon, all cores)
//! and how fast batches come out of the uint8 cache.

use super::images::load_rgb;
use super::layout::{Dataset, Split};
use super::loader::{batch_indices, image_tensor, to_float};
use anyhow::Result;
use rayon::prelude::*;
use std::time::Instant;
use tch::{Device, Tensor};

pub struct LoaderBench {
    pub images: usize,
    pub decode_per_sec: f64,
    pub batches: usize,
    pub batch_size: usize,
    pub batches_per_sec: f64,
}

pub fn bench_loader(
    ds: &Dataset,
    size: u32,
    batch_size: usize,
    device: Device,
) -> Result<LoaderBench> {
    let ids = ds.split_ids(Split::Train)?;
    let paths: Vec<_> = ids
        .iter()
        .map(|id| ds.image_path(id))
        .collect::<Result<_>>()?;
    let start = Instant::now();
    let decoded: usize = paths
        .par_iter()
        .map(|p| load_rgb(p, size).map(|v| v.len()))
        .collect::<Result<Vec<_>>>()?
        .len();
    let decode_per_sec = decoded as f64 / start.elapsed().as_secs_f64();
    let images = image_tensor(ds, Split::Train, &ids, size)?;
    let n = ids.len();
    let batches = 200;
    let start = Instant::now();
    for micro in 0..batches {
        let idx = Tensor::from_slice(&batch_indices(n, batch_size, 0, micro as u64));
        let x = to_float(&images.index_select(0, &idx), device);
        let _ = std::hint::black_box(x);
    }
    Ok(LoaderBench {
        images: decoded,
        decode_per_sec,
        batches,
        batch_size,
        batches_per_sec: batches as f64 / start.elapsed().as_secs_f64(),
    })
}
