//! Embedding plots: PCA and t-SNE (van der Maaten & Hinton 2008, exact, for up to a
//! few thousand points) drawn as PNG scatter plots coloured by a label. The legend goes
//! into the HTML beside them, so no font is needed on a fresh machine.

use crate::util::fsio::atomic_write;
use anyhow::Result;
use ndarray::{Array2, ArrayView1, Ix2};
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

/// A 2-D tensor as an array of doubles on the host.
fn to_array2(t: &Tensor) -> Result<Array2<f64>> {
    let t = t
        .to_kind(Kind::Double)
        .to_device(tch::Device::Cpu)
        .contiguous();
    let a: ndarray::ArrayD<f64> = (&t).try_into()?;
    Ok(a.into_dimensionality::<Ix2>()?)
}

/// The precision β of point `i`'s Gaussian over its squared distances `d2` whose
/// entropy is `target` (ln of the perplexity), by binary search.
fn precision(d2: ArrayView1<f64>, i: usize, target: f64) -> f64 {
    let (mut lo, mut hi, mut beta) = (0.0, f64::INFINITY, 1.0);
    for _ in 0..60 {
        let (mut sum, mut dot) = (0.0, 0.0);
        for (j, &d) in d2.iter().enumerate() {
            if j != i {
                let v = (-d * beta).exp();
                sum += v;
                dot += v * d;
            }
        }
        let sum = f64::max(sum, 1e-300);
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
    beta
}

/// Row-wise Gaussian affinities with the given perplexity, symmetrised.
fn affinities(x: &Tensor, perplexity: f64) -> Result<Tensor> {
    let d2 = to_array2(&Tensor::cdist(x, x, 2.0, None::<i64>).square())?;
    let n = d2.nrows();
    let target = perplexity.ln();
    let mut p = Array2::<f64>::zeros((n, n));
    for (i, (row, mut out)) in d2.outer_iter().zip(p.outer_iter_mut()).enumerate() {
        let beta = precision(row, i, target);
        out.assign(&row.mapv(|d| (-d * beta).exp()));
        out[i] = 0.0;
        let s = out.sum().max(1e-300);
        out /= s;
    }
    let p = Tensor::try_from(&p)?;
    Ok((&p + p.tr()) / (2.0 * n as f64))
}

/// 2-D t-SNE of `x` `(N, D)` (perplexity 30, 500 iterations, early exaggeration 12).
pub fn tsne2(x: &Tensor, seed: i64) -> Result<Tensor> {
    let x = x.to_kind(Kind::Double).to_device(tch::Device::Cpu);
    let n = x.size()[0];
    let p = affinities(&x, 30f64.min((n as f64 - 1.0) / 3.0).max(2.0))?.clamp_min(1e-12);
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
    Ok(y)
}

/// Draws points `(N, 2)` coloured by label index into a `side`² PNG.
pub fn scatter_png(points: &Tensor, labels: &[usize], side: u32) -> Result<Vec<u8>> {
    let pts = to_array2(points)?;
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in pts.outer_iter() {
        x0 = x0.min(p[0]);
        x1 = x1.max(p[0]);
        y0 = y0.min(p[1]);
        y1 = y1.max(p[1]);
    }
    let mut img = image::RgbImage::from_pixel(side, side, image::Rgb([255, 255, 255]));
    let margin = 8.0;
    let span = side as f64 - 2.0 * margin;
    for (p, &l) in pts.outer_iter().zip(labels) {
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
        &scatter_png(&tsne2(&img, 0)?, idx, 480)?,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two tight clusters of 20 points, far apart in 8 dimensions.
    fn two_clusters() -> Tensor {
        tch::manual_seed(1);
        let noise = Tensor::randn([40, 8], (Kind::Double, tch::Device::Cpu)) * 0.05;
        let centre = Tensor::cat(
            &[
                Tensor::zeros([20, 8], (Kind::Double, tch::Device::Cpu)),
                Tensor::ones([20, 8], (Kind::Double, tch::Device::Cpu)) * 5.0,
            ],
            0,
        );
        centre + noise
    }

    #[test]
    fn affinities_are_a_symmetric_distribution_without_self_pairs() {
        let p = affinities(&two_clusters(), 5.0).unwrap();
        assert!((p.sum(Kind::Double).double_value(&[]) - 1.0).abs() < 1e-9);
        assert!((&p - p.tr()).abs().max().double_value(&[]) < 1e-12);
        assert_eq!(p.diag(0).abs().max().double_value(&[]), 0.0);
        // Almost all the mass stays inside the clusters.
        let within = p
            .narrow(0, 0, 20)
            .narrow(1, 0, 20)
            .sum(Kind::Double)
            .double_value(&[])
            + p.narrow(0, 20, 20)
                .narrow(1, 20, 20)
                .sum(Kind::Double)
                .double_value(&[]);
        assert!(within > 0.99, "{within}");
    }

    #[test]
    fn tsne_keeps_each_points_neighbour_in_its_cluster() {
        let y = tsne2(&two_clusters(), 0).unwrap();
        let mut d = Tensor::cdist(&y, &y, 2.0, None::<i64>);
        d += Tensor::eye(40, (Kind::Double, tch::Device::Cpu)) * 1e12;
        let nearest: Vec<i64> = Vec::try_from(d.argmin(1, false)).unwrap();
        let same = nearest
            .iter()
            .enumerate()
            .filter(|(i, &j)| (*i < 20) == (j < 20))
            .count();
        // t-SNE on 40 points is approximate: allow one or two strays.
        assert!(same >= 38, "{same} of 40: {nearest:?}");
    }
}
