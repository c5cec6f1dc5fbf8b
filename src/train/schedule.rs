//! Learning-rate schedule: linear warm-up, then cosine decay to a floor.

pub fn lr_at(step: u64, total: u64, base: f64, warmup: u64, min_ratio: f64) -> f64 {
    if warmup > 0 && step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let t = ((step - warmup.min(step)) as f64 / span).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
    base * (min_ratio + (1.0 - min_ratio) * cosine)
}

#[cfg(test)]
mod tests {
    use super::lr_at;

    #[test]
    fn warms_up_then_decays_to_the_floor() {
        assert!((lr_at(0, 100, 1.0, 10, 0.1) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 100, 1.0, 10, 0.1) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 100, 1.0, 10, 0.1) - 1.0).abs() < 1e-12);
        assert!((lr_at(100, 100, 1.0, 10, 0.1) - 0.1).abs() < 1e-12);
        assert!(lr_at(50, 100, 1.0, 10, 0.1) < lr_at(30, 100, 1.0, 10, 0.1));
    }
}
