//! The networks: each model owns its layers and its loss, not the training loop.

pub mod captioner;
