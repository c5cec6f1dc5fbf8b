//! The tensor loader: each split's images are decoded once (rayon) into a uint8 cache
//! file, then every batch is an index-select of in-memory tensors in a per-epoch order
//! drawn from the seed.
//!
//! Augmentation is the captioner's alone and only what keeps captions true: a shift of a
//! few pixels. Horizontal flips would swap "left" and "right", and colour jitter would
//! falsify the colour words, so neither is offered.

use crate::data::images::load_rgb;
use crate::data::layout::{Dataset, Split};
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// A split held in memory: images `(N, 3, S, S)` uint8 and tokens `(N, L)` int64.
pub struct SplitData {
    pub ids: Vec<String>,
    pub images: Tensor,
    pub tokens: Option<Tensor>,
    pub captions: Vec<String>,
    pub size: i64,
}

/// The image of each row as a group number (rows of one image share it), for metrics
/// where another caption of the same picture must not count as a distractor.
/// `image_of` maps item ids to image ids (an item missing from it is its own image).
pub fn image_groups(
    ids: &[String],
    image_of: &std::collections::HashMap<String, String>,
) -> Vec<usize> {
    let mut number: std::collections::HashMap<&str, usize> = Default::default();
    ids.iter()
        .map(|id| {
            let image = image_of.get(id).map_or(id.as_str(), String::as_str);
            let next = number.len();
            *number.entry(image).or_insert(next)
        })
        .collect()
}

/// One row per image of a split whose items may share images (`--multi pairs`): the
/// index of each image's first item, and all of that image's captions in the split, in
/// item order. `image_of` maps item ids to image ids (an item missing from it is its
/// own image).
pub fn references_by_image(
    ids: &[String],
    captions: &[String],
    image_of: &std::collections::HashMap<String, String>,
) -> (Vec<i64>, Vec<Vec<String>>) {
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    let mut keep: Vec<i64> = vec![];
    let mut refs: Vec<Vec<String>> = vec![];
    for (i, (id, caption)) in ids.iter().zip(captions).enumerate() {
        let image = image_of.get(id).map_or(id.as_str(), String::as_str);
        match first.get(image) {
            Some(&row) => refs[row].push(caption.clone()),
            None => {
                first.insert(image, refs.len());
                keep.push(i as i64);
                refs.push(vec![caption.clone()]);
            }
        }
    }
    (keep, refs)
}

impl SplitData {
    /// The first item of each image only (`--multi pairs` gives an image one item per
    /// caption): what is measured once per picture, as the cycle is.
    pub fn one_per_image(self, image_of: &std::collections::HashMap<String, String>) -> SplitData {
        let (keep, _) = references_by_image(&self.ids, &self.captions, image_of);
        if keep.len() == self.ids.len() {
            return self;
        }
        let rows = Tensor::from_slice(&keep);
        let pick = |v: &[String]| keep.iter().map(|&i| v[i as usize].clone()).collect();
        SplitData {
            ids: pick(&self.ids),
            captions: pick(&self.captions),
            images: self
                .images
                .index_select(0, &rows.to_device(self.images.device())),
            tokens: self
                .tokens
                .as_ref()
                .map(|t| t.index_select(0, &rows.to_device(t.device()))),
            size: self.size,
        }
    }

    /// Refuses token rows longer than a model's positions (`field`, e.g. `model.max_len`):
    /// a model cannot read past its last position, and truncating would hide it.
    pub fn check_token_room(&self, max_len: i64, field: &str) -> Result<()> {
        let longest = self.tokens.as_ref().map_or(0, |t| t.size()[1]);
        if longest > max_len {
            bail!(
                "{field} {max_len} is shorter than the tokenized captions ({longest} tokens, the tokenizer's max_len): raise {field} or retrain the tokenizer with a smaller max_len"
            );
        }
        Ok(())
    }
}

/// Decodes (or reads from the cache) the images of `ids` at `size` px: `(N, 3, S, S)` u8.
pub fn image_tensor(ds: &Dataset, split: Split, ids: &[String], size: u32) -> Result<Tensor> {
    let cache = ds
        .cache_dir()
        .join(format!("{}_{size}.safetensors", split.name()));
    let cache_ids = ds.cache_dir().join(format!("{}_{size}.ids", split.name()));
    let joined = ids.join("\n");
    if cache.exists()
        && std::fs::read_to_string(&cache_ids).ok().as_deref() == Some(joined.as_str())
    {
        let t = Tensor::read_safetensors(&cache)
            .map_err(|e| anyhow::anyhow!("{}: {e}", cache.display()))?;
        if let Some((_, t)) = t.into_iter().find(|(n, _)| n == "images") {
            return Ok(t);
        }
    }
    let pb = crate::util::progress::bar(ids.len() as u64, "decode");
    let pixels: Vec<Vec<u8>> = ids
        .par_iter()
        .map(|id| {
            let r = ds.image_path(id).and_then(|p| load_rgb(&p, size));
            pb.inc(1);
            r
        })
        .collect::<Result<_>>()?;
    pb.finish_and_clear();
    let t = super::images::nchw_batch(&pixels.concat(), ids.len() as i64, size);
    crate::util::fsio::atomic_write_with(&cache, |tmp| {
        Tensor::write_safetensors(&[("images", &t)], tmp).map_err(|e| anyhow::anyhow!("{e}"))
    })?;
    crate::util::fsio::atomic_write(&cache_ids, joined.as_bytes())?;
    Ok(t)
}

#[derive(serde::Deserialize)]
struct Tokenized {
    input_ids: Vec<i64>,
}

/// Loads a split's images, captions and (when the tokenizer has been run) token ids.
pub fn load_split(
    ds: &Dataset,
    split: Split,
    size: u32,
    limit: Option<usize>,
) -> Result<SplitData> {
    let mut ids = ds.split_ids(split)?;
    if let Some(l) = limit {
        if l == 0 {
            bail!("--limit 0: give at least 1 image to evaluate");
        }
        ids.truncate(l);
    }
    if ids.is_empty() {
        bail!(
            "{}: the {} split holds no images",
            ds.root.display(),
            split.name()
        );
    }
    let captions_map = ds.captions()?;
    let captions: Vec<String> = ids
        .iter()
        .map(|id| {
            captions_map
                .get(id)
                .cloned()
                .with_context(|| format!("no caption for {id}"))
        })
        .collect::<Result<_>>()?;
    let images = image_tensor(ds, split, &ids, size)?;
    let tokens = if ds.tokenized_path().exists() {
        let all: BTreeMap<String, Tokenized> = crate::util::fsio::read_json(&ds.tokenized_path())?;
        let rows: Vec<Vec<i64>> = ids
            .iter()
            .map(|id| {
                all.get(id)
                    .map(|t| t.input_ids.clone())
                    .with_context(|| format!("{id} is not in tokenized_captions.json"))
            })
            .collect::<Result<_>>()?;
        let len = rows[0].len();
        if rows.iter().any(|r| r.len() != len) {
            bail!("tokenized_captions.json rows have different lengths; re-run `ekphrasis tokenizer train`");
        }
        Some(Tensor::from_slice(&rows.concat()).view([ids.len() as i64, len as i64]))
    } else {
        None
    };
    Ok(SplitData {
        ids,
        images,
        tokens,
        captions,
        size: size as i64,
    })
}

/// Row indices of micro-batch `micro`: epochs are seeded permutations, the last partial
/// batch of an epoch is dropped. In a data-parallel job, this rank's consecutive share
/// of the global batch of `batch` rows (the same permutation on every rank).
pub fn batch_indices(n: usize, batch: usize, seed: u64, micro: u64) -> Vec<i64> {
    let batch = batch.min(n).max(1);
    let per_epoch = (n / batch) as u64;
    let (epoch, j) = (micro / per_epoch, (micro % per_epoch) as usize);
    let mut perm: Vec<i64> = (0..n as i64).collect();
    perm.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
        seed ^ epoch.wrapping_mul(0x2545_F491_4F6C_DD1D),
    ));
    crate::distributed::shard(&perm[j * batch..(j + 1) * batch])
}

/// The rows of `rows` (one per image of a split, e.g. attribute targets) that micro-batch
/// `micro` holds, on `device`: the same rows as [`micro_batch`] and [`Prefetcher`] pick.
pub fn batch_rows(rows: &Tensor, batch: usize, seed: u64, micro: u64, device: Device) -> Tensor {
    let n = rows.size()[0] as usize;
    let idx = Tensor::from_slice(&batch_indices(n, batch, seed, micro));
    rows.index_select(0, &idx).to_device(device)
}

/// Micro-batch `micro` of a split: float images in [-1, 1] and (when tokenized) the
/// token rows, both on `device`.
pub fn micro_batch(
    data: &SplitData,
    batch: usize,
    seed: u64,
    micro: u64,
    device: Device,
) -> (Tensor, Option<Tensor>) {
    let n = data.images.size()[0] as usize;
    let idx = Tensor::from_slice(&batch_indices(n, batch, seed, micro));
    let x = to_float(&data.images.index_select(0, &idx), device);
    let t = data
        .tokens
        .as_ref()
        .map(|t| t.index_select(0, &idx).to_device(device));
    (x, t)
}

/// uint8 images → float in [-1, 1] on `device`.
pub fn to_float(images: &Tensor, device: Device) -> Tensor {
    images.to_device(device).to_kind(Kind::Float) / 127.5 - 1.0
}

/// float in [-1, 1] → uint8 on the CPU.
pub fn to_u8(images: &Tensor) -> Tensor {
    ((images.detach().to_device(Device::Cpu).clamp(-1.0, 1.0) + 1.0) * 127.5)
        .round()
        .to_kind(Kind::Uint8)
}

/// Batches prepared ahead of time on a background thread: the row indices of
/// micro-batch k come from [`batch_indices`], so the order is the same as without
/// prefetching, and training stays exactly resumable.
pub struct Prefetcher {
    rx: std::sync::mpsc::Receiver<(u64, Tensor, Option<Tensor>)>,
    next: u64,
    _worker: std::thread::JoinHandle<()>,
}

impl Prefetcher {
    /// Starts producing micro-batches `first..` of `images` (and `tokens`), `depth` ahead.
    pub fn new(
        images: &Tensor,
        tokens: Option<&Tensor>,
        batch: usize,
        seed: u64,
        first: u64,
        depth: usize,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(depth.max(1));
        let images = images.shallow_clone();
        let tokens = tokens.map(|t| t.shallow_clone());
        let n = images.size()[0] as usize;
        let worker = std::thread::spawn(move || {
            let mut micro = first;
            loop {
                let idx = Tensor::from_slice(&batch_indices(n, batch, seed, micro));
                let x = images.index_select(0, &idx);
                let t = tokens.as_ref().map(|t| t.index_select(0, &idx));
                if tx.send((micro, x, t)).is_err() {
                    return; // the consumer is gone
                }
                micro += 1;
            }
        });
        Prefetcher {
            rx,
            next: first,
            _worker: worker,
        }
    }

    /// The uint8 images and tokens of micro-batch `micro`. Asking out of order restarts
    /// nothing: it is an error in the caller, reported as such.
    pub fn get(&mut self, micro: u64) -> anyhow::Result<(Tensor, Option<Tensor>)> {
        if micro != self.next {
            anyhow::bail!(
                "prefetcher asked for micro-batch {micro}, expected {}",
                self.next
            );
        }
        let (m, x, t) = self
            .rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the prefetch thread stopped"))?;
        debug_assert_eq!(m, micro);
        self.next += 1;
        Ok((x, t))
    }
}

/// Caption token rows cut after the batch's longest caption: the padding beyond it is
/// masked anyway, and a text step costs in proportion to the length it runs over.
pub fn trim_padding(tokens: &Tensor, pad: i64) -> Tensor {
    let longest = tokens
        .ne(pad)
        .sum_dim_intlist(1, false, Kind::Int64)
        .max()
        .int64_value(&[]);
    tokens.narrow(1, 0, longest.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_image_keeps_each_pictures_first_item_in_order() {
        let ids: Vec<String> = ["a_1", "b_1", "a_2", "c", "b_2"].map(String::from).into();
        let image_of: std::collections::HashMap<String, String> =
            [("a_1", "a"), ("a_2", "a"), ("b_1", "b"), ("b_2", "b")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into();
        let rows = Tensor::arange(5, (Kind::Int64, Device::Cpu));
        let data = SplitData {
            captions: ids.iter().map(|i| format!("caption of {i}")).collect(),
            ids,
            images: rows.view([5, 1, 1, 1]).to_kind(Kind::Uint8),
            tokens: Some(rows.view([5, 1])),
            size: 1,
        };
        let one = data.one_per_image(&image_of);
        assert_eq!(one.ids, ["a_1", "b_1", "c"]);
        assert_eq!(one.captions[2], "caption of c");
        let kept: Vec<i64> = Vec::try_from(one.tokens.unwrap().view([-1])).unwrap();
        assert_eq!(kept, [0, 1, 3]);
        let pixels: Vec<u8> = Vec::try_from(one.images.view([-1])).unwrap();
        assert_eq!(pixels, [0, 1, 3]);
    }

    #[test]
    fn prefetched_batches_equal_direct_ones() {
        let images = Tensor::arange(20 * 3, (tch::Kind::Uint8, Device::Cpu)).view([20, 3, 1, 1]);
        let tokens = Tensor::arange(20 * 4, (tch::Kind::Int64, Device::Cpu)).view([20, 4]);
        let mut p = Prefetcher::new(&images, Some(&tokens), 6, 9, 5, 2);
        for micro in 5..15 {
            let (x, t) = p.get(micro).unwrap();
            let idx = Tensor::from_slice(&batch_indices(20, 6, 9, micro));
            assert!(x.equal(&images.index_select(0, &idx)));
            assert!(t.unwrap().equal(&tokens.index_select(0, &idx)));
        }
        assert!(p.get(3).is_err());
    }
}
