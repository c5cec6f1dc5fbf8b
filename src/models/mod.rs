//! The networks: each model owns its layers and its loss, not the training loop.

pub mod align;
pub mod captioner;
pub mod clip;
pub mod invertible;
pub mod t2i;
pub mod text_encoder;
pub mod unified;
