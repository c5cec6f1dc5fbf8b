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
    // One read: the header check and the decode both work on the bytes in memory.
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.is_empty() {
        bail!("{}: empty file", path.display());
    }
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(&bytes[..]))
            .with_guessed_format()
            .with_context(|| format!("reading {}", path.display()))
    };
    let (w, h) = reader()?
        .into_dimensions()
        .map_err(|e| anyhow!("{}: not a readable image: {e}", path.display()))?;
    if w == 0 || h == 0 || w as u64 * h as u64 > MAX_PIXELS {
        bail!(
            "{}: {w}×{h} pixels is outside the accepted range (1 … {MAX_PIXELS} pixels)",
            path.display()
        );
    }
    let mut r = reader()?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 8);
    r.limits(limits);
    let img = r
        .decode()
        .map_err(|e| anyhow!("{}: cannot decode: {e}", path.display()))?;
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
