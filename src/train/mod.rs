//! Training machinery shared by every stage: the runner, AdamW with savable state, the
//! learning-rate schedule, EMA and checkpoints.

pub mod adamw;
pub mod checkpoint;
pub mod ema;
pub mod runner;
pub mod schedule;
