//! The embedded scene set's extension, in one room: the scene grammar and its renderer,
//! the paragraph writer and parser, the attribute heads, the fact readers the
//! scene-supervised generators paint from, and the attribute probe that grades them.
//!
//! General models reach it only through small named hooks (extra context tokens, an
//! extra loss term) and only when a dataset has scene facts
//! ([`crate::data::layout::Dataset::has_scene_facts`]). Each file sits at the layer its
//! concept belongs to: `scene`, `paint`, `describe`, `parse` and `render` are data;
//! `heads`, `fact_words`, `facts` and `probe` are models.

pub mod describe;
pub mod fact_words;
pub mod facts;
pub mod heads;
pub mod paint;
pub mod parse;
pub mod probe;
pub mod render;
pub mod scene;

pub use render::{make_item, render_dataset, render_extra, scene_of, Item};
