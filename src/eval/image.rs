//! Paired image metrics for the cycle (original vs reconstruction): PSNR, SSIM (Wang et
//! al. 2004, 11×11 Gaussian window σ = 1.5 on luma) and colour-histogram intersection
//! (4×4×4 RGB bins). Images are float tensors in [-1, 1], `(N, 3, H, W)`.

use tch::{Kind, Tensor};

/// Per-image PSNR in dB on the [0, 1] scale.
pub fn psnr(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let mse = ((a - b) / 2.0)
        .square()
        .mean_dim([1i64, 2, 3].as_slice(), false, Kind::Double);
    let v: Vec<f64> =
        Vec::try_from(mse.to_device(tch::Device::Cpu)).expect("a tensor of the kind we made");
    v.into_iter()
        .map(|m| if m <= 1e-12 { 100.0 } else { -10.0 * m.log10() })
        .collect()
}

fn luma(x: &Tensor) -> Tensor {
    let x = (x + 1.0) / 2.0;
    (x.select(1, 0) * 0.299 + x.select(1, 1) * 0.587 + x.select(1, 2) * 0.114).unsqueeze(1)
}

/// Per-image SSIM on luma.
pub fn ssim(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let (x, y) = (luma(a).to_kind(Kind::Double), luma(b).to_kind(Kind::Double));
    let size = 11.min(x.size()[2]) | 1;
    let coords = Tensor::arange(size, (Kind::Double, x.device())) - (size / 2) as f64;
    let g = (-(coords.square()) / (2.0 * 1.5 * 1.5)).exp();
    let g = &g / g.sum(Kind::Double);
    let w = g
        .unsqueeze(1)
        .matmul(&g.unsqueeze(0))
        .view([1, 1, size, size]);
    let f = |t: &Tensor| t.conv2d(&w, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1);
    let (mx, my) = (f(&x), f(&y));
    let sxx = f(&(&x * &x)) - mx.square();
    let syy = f(&(&y * &y)) - my.square();
    let sxy = f(&(&x * &y)) - &mx * &my;
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let map = ((&mx * &my * 2.0 + c1) * (sxy * 2.0 + c2))
        / ((mx.square() + my.square() + c1) * (sxx + syy + c2));
    Vec::try_from(
        map.mean_dim([1i64, 2, 3].as_slice(), false, Kind::Double)
            .to_device(tch::Device::Cpu),
    )
    .expect("a tensor of the kind we made")
}

fn histogram(x: &Tensor) -> Tensor {
    // (N, 3, H, W) in [-1, 1] → bin index per pixel in 0..64 → normalised counts (N, 64).
    let q = (((x + 1.0) / 2.0 * 4.0).floor().clamp(0.0, 3.0)).to_kind(Kind::Int64);
    let idx = q.select(1, 0) * 16 + q.select(1, 1) * 4 + q.select(1, 2);
    let n = x.size()[0];
    let idx = idx.view([n, -1]);
    let ones = Tensor::ones(idx.size(), (Kind::Double, x.device()));
    let h = Tensor::zeros([n, 64], (Kind::Double, x.device())).scatter_add(1, &idx, &ones);
    &h / h.sum_dim_intlist(1, true, Kind::Double)
}

/// Per-image colour-histogram intersection in [0, 1] (1: identical colour distributions).
pub fn histogram_intersection(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let m = histogram(a)
        .minimum(&histogram(b))
        .sum_dim_intlist(1, false, Kind::Double);
    Vec::try_from(m.to_device(tch::Device::Cpu)).expect("a tensor of the kind we made")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn identical_images_score_perfectly_and_noise_lowers_every_score() {
        tch::manual_seed(0);
        let a = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        assert_eq!(psnr(&a, &a), vec![100.0, 100.0]);
        assert!(ssim(&a, &a).iter().all(|s| (s - 1.0).abs() < 1e-9));
        assert!(histogram_intersection(&a, &a)
            .iter()
            .all(|h| (h - 1.0).abs() < 1e-9));
        // Uniform error of 0.2 on the [-1, 1] scale = 0.1 on [0, 1]: PSNR = 20 dB.
        let b = (&a + 0.2).clamp(-5.0, 5.0);
        assert!(psnr(&a, &b).iter().all(|p| (p - 20.0).abs() < 1e-6));
        let noisy = &a + Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu)) * 0.5;
        assert!(ssim(&a, &noisy).iter().all(|&s| s < 0.9));
        let black = Tensor::full([2, 3, 32, 32], -1.0, (Kind::Float, Device::Cpu));
        let white = Tensor::full([2, 3, 32, 32], 1.0, (Kind::Float, Device::Cpu));
        assert_eq!(histogram_intersection(&black, &white), vec![0.0, 0.0]);
    }
}
