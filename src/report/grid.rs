//! Image grids: uint8 `(N, 3, S, S)` tensors laid out row-major with a 2-pixel gutter.

use anyhow::Result;
use tch::Tensor;

/// Returns (RGB bytes, height, width) of a grid with `cols` columns.
pub fn grid_rgb(images: &Tensor, cols: i64) -> (Vec<u8>, u32, u32) {
    let (n, _, s, _) = images.size4().expect("images are (N, C, H, W)");
    let cols = cols.max(1).min(n.max(1));
    let rows = (n + cols - 1) / cols;
    let gap = 2;
    let (h, w) = (rows * s + (rows + 1) * gap, cols * s + (cols + 1) * gap);
    let mut out = vec![255u8; (h * w * 3) as usize];
    let hwc = images.permute([0, 2, 3, 1]).contiguous();
    let bytes: Vec<u8> = Vec::try_from(hwc.view([-1])).unwrap_or_default();
    for i in 0..n {
        let (r, c) = (i / cols, i % cols);
        let (y0, x0) = (gap + r * (s + gap), gap + c * (s + gap));
        for y in 0..s {
            let src = ((i * s + y) * s * 3) as usize;
            let dst = (((y0 + y) * w + x0) * 3) as usize;
            out[dst..dst + (s * 3) as usize].copy_from_slice(&bytes[src..src + (s * 3) as usize]);
        }
    }
    (out, h as u32, w as u32)
}

pub fn png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_raw(width, height, rgb.to_vec())
        .ok_or_else(|| anyhow::anyhow!("grid buffer does not match {width}×{height}"))?
        .write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}
