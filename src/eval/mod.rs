//! Evaluation: text metrics, embedding metrics (retrieval, R-precision, CLIP-style
//! score, FD/KID in our own encoder's space) and paired image metrics.

pub mod embedding;
pub mod image;
pub mod text;

/// The mean of per-item scores (0 for none).
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}
