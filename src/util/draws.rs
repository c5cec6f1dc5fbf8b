//! Random draws keyed by (seed, micro-batch, call, sample index, element) instead of a
//! generator's state: training's dropout masks, augmentation offsets and noise. A sample
//! gets the same draws whichever rank of a data-parallel job holds it, so N ranks with
//! B/N samples each train exactly as one process with B (the counter-based idea of
//! Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011).
//!
//! The training runner opens a key for each micro-batch ([`begin`]) and closes it after
//! backward ([`end`]). Outside it (evaluation, inference) the draws come from libtorch's
//! generator as before.

use std::cell::RefCell;
use tch::{Device, Kind, Tensor};

struct Key {
    seed: u64,
    calls: u64,
}

thread_local! {
    static KEY: RefCell<Option<Key>> = const { RefCell::new(None) };
}

/// Keys this thread's draws to `seed` (the runner's seed for one micro-batch).
pub fn begin(seed: u64) {
    KEY.with(|k| *k.borrow_mut() = Some(Key { seed, calls: 0 }));
}

/// Returns this thread to libtorch's generator.
pub fn end() {
    KEY.with(|k| *k.borrow_mut() = None);
}

/// SplitMix64's finaliser: a bijective 64-bit mix.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The next call's per-sample 32-bit bases for `rows` local samples, or None when no key
/// is open.
fn next_bases(rows: i64) -> Option<Vec<i64>> {
    KEY.with(|k| {
        let mut k = k.borrow_mut();
        let key = k.as_mut()?;
        let call = key.calls;
        key.calls += 1;
        let first = crate::distributed::first_row(rows.max(0) as usize) as u64;
        let stream = mix64(key.seed ^ mix64(call.wrapping_add(0x9E37_79B9_7F4A_7C15)));
        Some(
            (0..rows.max(0) as u64)
                .map(|i| (mix64(stream ^ mix64(first + i)) & 0xFFFF_FFFF) as i64)
                .collect(),
        )
    })
}

/// A 32-bit integer hash applied elementwise (values stay below 2^32, so no int64
/// product overflows); the "hash32" of Mueller's integer-hash study.
fn hash32(x: Tensor) -> Tensor {
    const M: i64 = 0xFFFF_FFFF;
    let step = |x: Tensor| -> Tensor {
        (x.bitwise_right_shift_tensor_scalar(16)
            .bitwise_xor_tensor(&x)
            * 0x045d_9f3b_i64)
            .bitwise_and(M)
    };
    let x = step(step(x));
    x.bitwise_right_shift_tensor_scalar(16)
        .bitwise_xor_tensor(&x)
}

/// Uniform floats in [0, 1) of `shape` (dim 0 = this rank's samples), on `device`.
pub fn uniform(shape: &[i64], device: Device) -> Tensor {
    let rows = shape.first().copied().unwrap_or(1);
    let Some(bases) = next_bases(rows) else {
        return Tensor::rand(shape, (Kind::Float, device));
    };
    let per_row: i64 = shape.iter().skip(1).product();
    let base = Tensor::from_slice(&bases).to_device(device).view([rows, 1]);
    let element = Tensor::arange(per_row, (Kind::Int64, device)).view([1, per_row]);
    let x = (base + element * 0x9E37_79B1_i64).bitwise_and(0xFFFF_FFFF_i64);
    // 24 bits: exactly representable in f32, so the value never rounds up to 1.
    let u = hash32(x)
        .bitwise_right_shift_tensor_scalar(8)
        .to_kind(Kind::Float)
        / 16_777_216.0;
    u.view(shape)
}

/// Standard normal floats of `shape` (Box–Muller from two uniform draws).
pub fn normal(shape: &[i64], device: Device) -> Tensor {
    if !is_keyed() {
        return Tensor::randn(shape, (Kind::Float, device));
    }
    let u1 = uniform(shape, device);
    let u2 = uniform(shape, device);
    let radius = ((u1.neg() + 1.0).log() * -2.0).sqrt();
    radius * (u2 * std::f64::consts::TAU).cos()
}

pub fn uniform_like(x: &Tensor) -> Tensor {
    uniform(&x.size(), x.device()).to_kind(x.kind())
}

pub fn normal_like(x: &Tensor) -> Tensor {
    normal(&x.size(), x.device()).to_kind(x.kind())
}

/// One integer in [0, high) per sample, `rows` samples.
pub fn randint(high: i64, rows: i64, device: Device) -> Tensor {
    if !is_keyed() {
        return Tensor::randint(high, [rows], (Kind::Int64, device));
    }
    (uniform(&[rows], device) * high as f64)
        .floor()
        .to_kind(Kind::Int64)
        .clamp_max(high - 1)
}

/// Inverted dropout with a keyed mask (dim 0 of `x` = samples).
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return x.shallow_clone();
    }
    if !is_keyed() {
        return x.dropout(p, train);
    }
    let keep = uniform_like(x).ge(p).to_kind(x.kind());
    x * keep / (1.0 - p)
}

fn is_keyed() -> bool {
    KEY.with(|k| k.borrow().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_draws_the_same_values_wherever_it_sits_and_calls_differ() {
        begin(7);
        let whole = uniform(&[4, 3, 2], Device::Cpu);
        let again = uniform(&[4, 3, 2], Device::Cpu);
        end();
        begin(7);
        let first = uniform(&[4, 3, 2], Device::Cpu);
        end();
        assert!(whole.equal(&first), "the same key and call repeat");
        assert!(!whole.equal(&again), "a second call draws anew");
        let (lo, hi) = (whole.min().double_value(&[]), whole.max().double_value(&[]));
        assert!((0.0..1.0).contains(&lo) && hi < 1.0 && hi > lo);
        // Roughly uniform: the mean of 60k draws is near 1/2, of normals near 0 and 1.
        begin(3);
        let u = uniform(&[60_000], Device::Cpu);
        let z = normal(&[60_000], Device::Cpu);
        end();
        assert!((u.mean(Kind::Float).double_value(&[]) - 0.5).abs() < 0.01);
        assert!(z.mean(Kind::Float).double_value(&[]).abs() < 0.02);
        assert!((z.std(true).double_value(&[]) - 1.0).abs() < 0.02);
    }

    #[test]
    fn keyed_dropout_keeps_the_expected_share_and_rescales() {
        begin(11);
        let x = Tensor::ones([50, 100], (Kind::Float, Device::Cpu));
        let y = dropout(&x, 0.25, true);
        end();
        let kept = y
            .gt(0.0)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
        assert!((kept - 0.75).abs() < 0.02, "kept {kept}");
        assert!((y.max().double_value(&[]) - 1.0 / 0.75).abs() < 1e-5);
        assert!(dropout(&x, 0.25, false).equal(&x));
    }
}
