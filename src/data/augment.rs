//! Training-time augmentation that keeps the caption true: small shifts and crops. No
//! flips (captions name left and right) and no colour changes (they name colours). Every
//! draw is keyed by sample ([`crate::util::draws`]), so data-parallel ranks augment the
//! global batch as one process would.

use tch::{Device, Kind, Tensor};

/// `x` `(B, 3, S, S)` in [-1, 1] shifted by up to `shift` pixels, then, with a `crop`
/// below 1, cropped to a random square of at least that share of its side and resized
/// back (the `augment_shift` and `augment_crop` options of a stage).
pub fn augment(x: &Tensor, shift: i64, crop: Option<f64>) -> Tensor {
    let x = random_shift(x, shift);
    match crop {
        Some(scale) if scale < 1.0 => random_crop(&x, scale),
        _ => x,
    }
}

/// Shifts each image by up to `max_shift` pixels (edge pixels repeat), a
/// caption-preserving augmentation.
pub fn random_shift(x: &Tensor, max_shift: i64) -> Tensor {
    if max_shift <= 0 {
        return x.shallow_clone();
    }
    let s = x.size()[3];
    let padded = x.replication_pad2d([max_shift, max_shift, max_shift, max_shift]);
    let n = x.size()[0];
    let offs = (crate::util::draws::uniform(&[n, 2], Device::Cpu) * (2 * max_shift + 1) as f64)
        .floor()
        .to_kind(Kind::Int64);
    let offs: Vec<i64> = Vec::try_from(offs.view([-1])).unwrap_or_default();
    let crops: Vec<Tensor> = (0..n)
        .map(|i| {
            let (dy, dx) = (offs[(2 * i) as usize], offs[(2 * i + 1) as usize]);
            padded.get(i).narrow(1, dy, s).narrow(2, dx, s)
        })
        .collect();
    Tensor::stack(&crops, 0)
}

/// Crops each image to a random square whose side is drawn from [`min_scale`, 1] of the
/// image's, at a random place inside it, then resizes it back (bilinear).
pub fn random_crop(x: &Tensor, min_scale: f64) -> Tensor {
    let (n, s) = (x.size()[0], x.size()[3]);
    let draws = crate::util::draws::uniform(&[n, 3], Device::Cpu);
    let draws: Vec<f64> = Vec::try_from(draws.to_kind(Kind::Double).view([-1])).unwrap_or_default();
    let crops: Vec<Tensor> = (0..n as usize)
        .map(|i| {
            let u = |k: usize| draws.get(3 * i + k).copied().unwrap_or(0.5);
            let scale = min_scale + (1.0 - min_scale) * u(0);
            let side = ((s as f64 * scale).round() as i64).clamp(1, s);
            let room = (s - side + 1) as f64;
            let (dy, dx) = ((u(1) * room) as i64, (u(2) * room) as i64);
            let (dy, dx) = (dy.min(s - side), dx.min(s - side));
            x.get(i as i64)
                .narrow(1, dy, side)
                .narrow(2, dx, side)
                .unsqueeze(0)
                .upsample_bilinear2d([s, s], false, None, None)
        })
        .collect();
    Tensor::cat(&crops, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp() -> Tensor {
        // Each pixel holds its column: a crop shows which columns it kept.
        Tensor::arange(16, (Kind::Float, Device::Cpu))
            .view([1, 1, 1, 16])
            .expand([4, 3, 16, 16], false)
            .contiguous()
    }

    #[test]
    fn crops_keep_the_size_and_show_a_window_of_the_picture() {
        let x = ramp();
        let y = random_crop(&x, 0.5);
        assert_eq!(y.size(), x.size());
        for i in 0..4 {
            let row = y.get(i).get(0).get(8);
            let (lo, hi) = (row.min().double_value(&[]), row.max().double_value(&[]));
            // A window of at least 8 of the 16 columns, inside the picture.
            assert!(
                lo >= 0.0 && hi <= 15.0 && hi - lo >= 7.0 - 1e-4,
                "{lo}..{hi}"
            );
        }
        // Off: the same picture.
        for off in [augment(&x, 0, None), augment(&x, 0, Some(1.0))] {
            assert_eq!((off - &x).abs().max().double_value(&[]), 0.0);
        }
    }
}
