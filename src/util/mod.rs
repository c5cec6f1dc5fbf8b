//! Small helpers shared by every stage: atomic file writes, hashing, progress bars.

pub mod fsio;
pub mod progress;
pub mod signals;
pub mod tensorboard;
