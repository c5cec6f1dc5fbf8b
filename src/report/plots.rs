//! Embedding plots: PCA and t-SNE (van der Maaten & Hinton 2008, exact, for up to a
//! few thousand points) drawn as PNG scatter plots coloured by a label. The legend goes
//! into the HTML beside them, so no font is needed on a fresh machine.

use crate::util::fsio::atomic_write;
use anyhow::Result;
use tch::{Kind, Tensor};

pub const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// First two principal components of `x` `(N, D)`.
pub fn pca2(x: &Tensor) -> Tensor {
    let x = x.to_kind(Kind::Double).to_device(tch::Device::Cpu);
    let c = &x - x.mean_dim(0, true, Kind::Double);
    let (_, _, v) = c.svd(true, true); // columns of v: principal directions
    c.matmul(&v.narrow(1, 0, 2))
}

/// Row-wise Gaussian affinities with the given perplexity (binary search on β).
fn affinities(x: &Tensor, perplexity: f64) -> Tensor {
    let d2: Vec<Vec<f64>> = Vec::try_from(Tensor::cdist(x, x, 2.0, None::<i64>).square())
        .expect("a tensor of the kind we made");
    let n = d2.len();
    let target = perplexity.ln();
    let mut p = vec![0f64; n * n];
    for i in 0..n {
        let (mut lo, mut hi, mut beta) = (0.0, f64::INFINITY, 1.0);
        for _ in 0..60 {
            let mut sum = 0.0;
            let mut dot = 0.0;
            for (j, &d) in d2[i].iter().enumerate() {
                if j != i {
                    let v = (-d * beta).exp();
                    sum += v;
                    dot += v * d;
                }
            }
            let sum = sum.max(1e-300);
            let entropy = sum.ln() + beta * dot / sum;
            if (entropy - target).abs() < 1e-5 {
                break;
            }
            if entropy > target {
                lo = beta;
                beta = if hi.is_finite() {
                    (beta + hi) / 2.0
                } else {
                    beta * 2.0
                };
            } else {
                hi = beta;
                beta = (beta + lo) / 2.0;
            }
        }
        let row: Vec<f64> = (0..n)
            .map(|j| {
                if j == i {
                    0.0
                } else {
                    (-d2[i][j] * beta).exp()
                }
            })
            .collect();
        let s: f64 = row.iter().sum::<f64>().max(1e-300);
        for j in 0..n {
            p[i * n + j] = row[j] / s;
        }
    }
    let p = Tensor::from_slice(&p).view([n as i64, n as i64]);
    (&p + p.tr()) / (2.0 * n as f64)
}

/// 2-D t-SNE of `x` `(N, D)` (perplexity 30, 500 iterations, early exaggeration 12).
pub fn tsne2(x: &Tensor, seed: i64) -> Tensor {
    let x = x.to_kind(Kind::Double).to_device(tch::Device::Cpu);
    let n = x.size()[0];
    let p = affinities(&x, 30f64.min((n as f64 - 1.0) / 3.0).max(2.0)).clamp_min(1e-12);
    tch::manual_seed(seed);
    let mut y = Tensor::randn([n, 2], (Kind::Double, tch::Device::Cpu)) * 1e-2;
    let mut velocity = y.zeros_like();
    for it in 0..500 {
        let exaggeration = if it < 100 { 12.0 } else { 1.0 };
        let num = (Tensor::cdist(&y, &y, 2.0, None::<i64>).square() + 1.0).reciprocal();
        let num = &num - Tensor::eye(n, (Kind::Double, tch::Device::Cpu)) * &num;
        let q = (&num / num.sum(Kind::Double)).clamp_min(1e-12);
        let w = (&p * exaggeration - q) * &num;
        let grad = (w.sum_dim_intlist(1, true, Kind::Double) * &y - w.matmul(&y)) * 4.0;
        let momentum = if it < 250 { 0.5 } else { 0.8 };
        velocity = velocity * momentum - grad * 200.0;
        y = &y + &velocity;
    }
    y
}

/// Draws points `(N, 2)` coloured by label index into a `side`² PNG.
pub fn scatter_png(points: &Tensor, labels: &[usize], side: u32) -> Result<Vec<u8>> {
    let pts: Vec<Vec<f64>> =
        Vec::try_from(points.to_kind(Kind::Double)).expect("a tensor of the kind we made");
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in &pts {
        x0 = x0.min(p[0]);
        x1 = x1.max(p[0]);
        y0 = y0.min(p[1]);
        y1 = y1.max(p[1]);
    }
    let mut img = image::RgbImage::from_pixel(side, side, image::Rgb([255, 255, 255]));
    let margin = 8.0;
    let span = side as f64 - 2.0 * margin;
    for (p, &l) in pts.iter().zip(labels) {
        let cx = margin + (p[0] - x0) / (x1 - x0).max(1e-12) * span;
        let cy = margin + (1.0 - (p[1] - y0) / (y1 - y0).max(1e-12)) * span;
        let c = PALETTE[l % PALETTE.len()];
        for dy in -2i32..=2 {
            for dx in -2i32..=2 {
                if dx * dx + dy * dy <= 5 {
                    let (x, y) = (cx as i32 + dx, cy as i32 + dy);
                    if x >= 0 && y >= 0 && (x as u32) < side && (y as u32) < side {
                        img.put_pixel(x as u32, y as u32, image::Rgb(c));
                    }
                }
            }
        }
    }
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

/// Writes pca.png, tsne.png and plots.html (with the legend) for image and text embeddings.
pub fn embedding_plots(
    out: &std::path::Path,
    images: &Tensor,
    texts: &Tensor,
    labels: &[String],
) -> Result<()> {
    let mut names: Vec<String> = labels.to_vec();
    names.sort();
    names.dedup();
    let idx: Vec<usize> = labels
        .iter()
        .map(|l| names.binary_search(l).expect("names holds every label"))
        .collect();
    let n = images.size()[0].min(1000);
    let (img, txt) = (images.narrow(0, 0, n), texts.narrow(0, 0, n));
    let idx = &idx[..n as usize];
    // Images and texts in one space: texts are drawn with the same colours.
    let both = Tensor::cat(&[&img, &txt], 0);
    let both_idx: Vec<usize> = idx.iter().chain(idx.iter()).copied().collect();
    atomic_write(
        &out.join("pca.png"),
        &scatter_png(&pca2(&both), &both_idx, 480)?,
    )?;
    atomic_write(
        &out.join("tsne.png"),
        &scatter_png(&tsne2(&img, 0), idx, 480)?,
    )?;
    let legend: String = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let c = PALETTE[i % PALETTE.len()];
            format!(
                "<span style=\"color:rgb({},{},{})\">&#9679;</span> {} &nbsp; ",
                c[0],
                c[1],
                c[2],
                super::escape(n)
            )
        })
        .collect();
    let html = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>embedding plots</title></head><body>\
<h1>Contrastive embedding</h1><p>{legend}</p><h2>PCA (images and captions together)</h2><img src=\"pca.png\">\
<h2>t-SNE (images)</h2><img src=\"tsne.png\"></body></html>"
    );
    atomic_write(&out.join("plots.html"), html.as_bytes())
}
