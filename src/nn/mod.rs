//! Shared network blocks: attention with a KV cache, Transformer layers, conv stages.

pub mod attention;
pub mod conv;
pub mod transformer;
