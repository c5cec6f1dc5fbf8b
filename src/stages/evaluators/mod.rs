//! The evaluator stages: `train clip` / `eval clip` (the contrastive embedding) and
//! `train probe` (the attribute classifier). Both train on the training split only and
//! are loaded read-only by every stage they grade. One file each: `clip`, `probe`.

use crate::data::layout::{Dataset, Split};
use crate::data::loader::{
    batch_indices, image_groups, load_split, micro_batch, to_float, trim_padding, SplitData,
};
use crate::data::tokenizer::TextTokenizer;
use crate::eval::embedding::{r_precision_grouped, retrieval_folds, retrieval_grouped};
use crate::models::clip::{Clip, ClipConfig};
use crate::scenes::probe::{attribute_accuracy, cell_targets, targets, Probe, ProbeConfig};
use crate::scenes::scene_of;
use crate::train::runner::{self, BestMetric, RunOptions, RunSummary, TrainConfig, Trainable};
use crate::util::tensorboard::EventWriter;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Tensor};

mod clip;
mod probe;
pub use clip::*;
pub use probe::*;
