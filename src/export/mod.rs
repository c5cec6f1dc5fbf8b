//! TorchScript checkpoints: `ekphrasis export` traces a trained run into portable `.pt`
//! files with a manifest ([`trace`]), and the inference commands load them back with no
//! training code ([`exported`]); plain Python loads the same files (docs/python.md).

pub mod bench;
pub mod exported;
pub mod manifest;
pub mod trace;
