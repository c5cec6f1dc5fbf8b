//! Small helpers shared by every stage: atomic file writes, hashing, progress bars,
//! sharing the cores.

pub mod cores;
pub mod draws;
pub mod fsio;
pub mod memory;
pub mod progress;
pub mod signals;
pub mod space;
pub mod tensorboard;
