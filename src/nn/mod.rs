//! Shared network blocks: attention with a KV cache, Transformer layers, conv stages,
//! BatchNorm synchronised across data-parallel ranks, place queries over a caption.

pub mod attention;
pub mod conv;
pub mod place_reader;
pub mod sync_batch_norm;
pub mod transformer;
