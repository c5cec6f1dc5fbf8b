//! Safe image decoding: any format the `image` crate reads, under a pixel limit,
//! converted to 8-bit RGB (alpha composited on white), resized to a square.

use anyhow::{anyhow, bail, Context, Result};
use image::imageops::FilterType;
use rayon::prelude::*;
use std::path::Path;

/// Largest image (in pixels) we agree to decode; larger files are rejected, not decoded.
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// Largest image file read, in bytes.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// Decodes `path` to `size`×`size` RGB bytes (HWC). The image is centre-cropped to a
/// square first, so shapes are not distorted.
pub fn load_rgb(path: &Path, size: u32) -> Result<Vec<u8>> {
    use std::io::Read;
    // One read: the header check and the decode both work on the bytes in memory. The
    // read is capped, so a link to an endless device or a huge file cannot fill memory.
    let mut bytes = vec![];
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        bail!(
            "{}: larger than {} MiB, the largest image file read",
            path.display(),
            MAX_FILE_BYTES >> 20
        );
    }
    decode_rgb(&bytes, &path.display().to_string(), size)
}

/// [`load_rgb`] for bytes already in memory (an upload); `name` labels the errors.
pub fn decode_rgb(bytes: &[u8], name: &str, size: u32) -> Result<Vec<u8>> {
    if bytes.is_empty() {
        bail!("{name}: empty file");
    }
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .with_context(|| format!("reading {name}"))
    };
    let (w, h) = reader()?
        .into_dimensions()
        .map_err(|e| anyhow!("{name}: not a readable image: {e}"))?;
    if w == 0 || h == 0 || w as u64 * h as u64 > MAX_PIXELS {
        bail!("{name}: {w}×{h} pixels is outside the accepted range (1 … {MAX_PIXELS} pixels)");
    }
    let mut r = reader()?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 8);
    r.limits(limits);
    let img = r
        .decode()
        .map_err(|e| anyhow!("{name}: cannot decode: {e}"))?;
    Ok(to_square_rgb(img, size))
}

/// Centre-crops to a square and resizes to `size`: area averaging when shrinking (fast
/// and alias-free), a triangle filter when enlarging. Alpha is composited on white.
pub fn to_square_rgb(img: image::DynamicImage, size: u32) -> Vec<u8> {
    let rgb = if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        let mut rgb = image::RgbImage::new(rgba.width(), rgba.height());
        for (o, p) in rgb.pixels_mut().zip(rgba.pixels()) {
            let a = p[3] as f32 / 255.0;
            for c in 0..3 {
                o[c] = (p[c] as f32 * a + 255.0 * (1.0 - a)).round() as u8;
            }
        }
        rgb
    } else {
        img.into_rgb8()
    };
    let (w, h) = rgb.dimensions();
    let side = w.min(h);
    let square = if w == h {
        rgb
    } else {
        image::imageops::crop_imm(&rgb, (w - side) / 2, (h - side) / 2, side, side).to_image()
    };
    let resized = if side == size {
        square
    } else if side > size {
        image::imageops::thumbnail(&square, size, size)
    } else {
        image::imageops::resize(&square, size, size, FilterType::Triangle)
    };
    resized.into_raw()
}

/// Resizes a uint8 batch `(N, 3, H, W)` to `(N, 3, size, size)` the way dataset images
/// are loaded ([`to_square_rgb`]), so an image drawn or rendered at another size reaches an
/// evaluator exactly as a dataset image of that size would.
pub fn resize_batch(images: &tch::Tensor, size: u32) -> tch::Tensor {
    let dims = images.size();
    let (n, h, w) = (dims[0], dims[2] as u32, dims[3] as u32);
    if h == size && w == size {
        return images.shallow_clone();
    }
    let hwc = images
        .to_device(tch::Device::Cpu)
        .to_kind(tch::Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous();
    let flat: Vec<u8> = Vec::try_from(hwc.view([-1])).expect("a uint8 tensor");
    let per = (h * w * 3) as usize;
    let pixels: Vec<u8> = flat
        .par_chunks(per.max(1))
        .flat_map_iter(|px| {
            let img = image::RgbImage::from_raw(w, h, px.to_vec()).expect("sized from the tensor");
            to_square_rgb(image::DynamicImage::ImageRgb8(img), size)
        })
        .collect();
    nchw_batch(&pixels, n, size)
}

/// Decodes image files into one uint8 batch `(N, 3, size, size)`.
pub fn load_batch(paths: &[std::path::PathBuf], size: u32) -> Result<tch::Tensor> {
    let mut pixels = Vec::with_capacity(paths.len() * (size * size * 3) as usize);
    for p in paths {
        pixels.extend(load_rgb(p, size)?);
    }
    Ok(nchw_batch(&pixels, paths.len() as i64, size))
}

/// `n` images of `size`² RGB bytes, concatenated (HWC, as decoded), as one uint8 batch
/// `(n, 3, size, size)`.
pub fn nchw_batch(pixels: &[u8], n: i64, size: u32) -> tch::Tensor {
    let s = size as i64;
    tch::Tensor::from_slice(pixels)
        .view([n, s, s, 3])
        .permute([0, 3, 1, 2])
        .contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A drawn image resized for an evaluator must be byte for byte the image a dataset
    /// of that size would hold: the probe is trained on the latter and grades the former.
    #[test]
    fn a_resized_batch_matches_the_dataset_loader() {
        let dir = tempfile::tempdir().unwrap();
        let (side, n) = (64u32, 3usize);
        let pixels: Vec<u8> = (0..n * (side * side * 3) as usize)
            .map(|i| ((i * 7919) % 251) as u8)
            .collect();
        let per = (side * side * 3) as usize;
        for (i, px) in pixels.chunks(per).enumerate() {
            image::RgbImage::from_raw(side, side, px.to_vec())
                .unwrap()
                .save(dir.path().join(format!("{i}.png")))
                .unwrap();
        }
        let batch = nchw_batch(&pixels, n as i64, side);
        for size in [48u32, 32, 80] {
            let paths: Vec<_> = (0..n)
                .map(|i| dir.path().join(format!("{i}.png")))
                .collect();
            let loaded = load_batch(&paths, size).unwrap();
            let resized = resize_batch(&batch, size);
            assert_eq!(resized.size(), [n as i64, 3, size as i64, size as i64]);
            assert!(resized.equal(&loaded), "size {size}");
        }
        assert!(resize_batch(&batch, side).equal(&batch));
    }
}
