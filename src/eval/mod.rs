//! Evaluation: text metrics, embedding metrics (retrieval, R-precision, CLIP-style
//! score, FD/KID in our own encoder's space) and paired image metrics.

pub mod embedding;
pub mod image;
pub mod text;
