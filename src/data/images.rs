//! Safe image decoding: any format the `image` crate reads, under a pixel limit,
//! converted to 8-bit RGB (alpha composited on white), resized to a square.

use anyhow::{anyhow, bail, Context, Result};
use image::imageops::FilterType;
use std::path::Path;

/// Largest image (in pixels) we agree to decode; larger files are rejected, not decoded.
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// Decodes `path` to `size`×`size` RGB bytes (HWC). The image is centre-cropped to a
/// square first, so shapes are not distorted.
pub fn load_rgb(path: &Path, size: u32) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() == 0 {
        bail!("{}: empty file", path.display());
    }
    let mut reader = image::ImageReader::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("reading {}", path.display()))?;
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| anyhow!("{}: not a readable image: {e}", path.display()))?;
    if w == 0 || h == 0 || w as u64 * h as u64 > MAX_PIXELS {
        bail!(
            "{}: {w}×{h} pixels is outside the accepted range (1 … {MAX_PIXELS} pixels)",
            path.display()
        );
    }
    reader = image::ImageReader::open(path)?.with_guessed_format()?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 8);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| anyhow!("{}: cannot decode: {e}", path.display()))?;
    Ok(to_square_rgb(img, size))
}

pub fn to_square_rgb(img: image::DynamicImage, size: u32) -> Vec<u8> {
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let side = w.min(h);
    let cropped =
        image::imageops::crop_imm(&rgba, (w - side) / 2, (h - side) / 2, side, side).to_image();
    let resized = if side == size {
        cropped
    } else {
        image::imageops::resize(&cropped, size, size, FilterType::Triangle)
    };
    let mut out = Vec::with_capacity((size * size * 3) as usize);
    for p in resized.pixels() {
        let a = p[3] as f32 / 255.0;
        for c in 0..3 {
            out.push((p[c] as f32 * a + 255.0 * (1.0 - a)).round() as u8);
        }
    }
    out
}

/// Decodes image files into one uint8 batch `(N, 3, size, size)`.
pub fn load_batch(paths: &[std::path::PathBuf], size: u32) -> Result<tch::Tensor> {
    let mut pixels = Vec::with_capacity(paths.len() * (size * size * 3) as usize);
    for p in paths {
        pixels.extend(load_rgb(p, size)?);
    }
    let s = size as i64;
    Ok(tch::Tensor::from_slice(&pixels)
        .view([paths.len() as i64, s, s, 3])
        .permute([0, 3, 1, 2])
        .contiguous())
}
