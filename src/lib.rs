//! ekphrasis: learns from scratch to describe pictures in paragraphs and to paint
//! pictures from paragraphs, and measures what survives image → caption → image.

pub mod app;
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod distributed;
pub mod eval;
pub mod export;
pub mod models;
pub mod nn;
pub mod report;
pub mod scenes;
pub mod serve;
pub mod stages;
pub mod train;
pub mod util;
