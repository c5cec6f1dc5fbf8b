//! Datasets: the on-disk layout, splits, the tokenizer, the
//! tensor loader and model-written descriptions for real artworks.

pub mod augment;
pub mod bench;
pub mod images;
pub mod ingest;
pub mod layout;
pub mod loader;
pub mod prepare;
pub mod splits;
pub mod tokenizer;
pub mod vlm;
