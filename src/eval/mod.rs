//! Evaluation: text metrics, and (with the evaluator models) image and embedding metrics.

pub mod text;
