//! Evaluation: text metrics, embedding metrics (retrieval, R-precision, CLIP-style
//! score, FD/KID in our own encoder's space) and paired image metrics.

pub mod embedding;
pub mod image;
pub mod text;

/// The standard error of the mean of per-item scores: sample standard deviation / √n
/// (0 for fewer than two).
pub fn standard_error(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    (var / v.len() as f64).sqrt()
}

/// The mean of per-item scores (0 for none).
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}
