//! The `train:` section every stage's config shares, with its defaults.

use super::*;

/// The `train:` section of every stage's config.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    #[serde(default = "d_warmup")]
    pub warmup: u64,
    /// The cosine schedule ends at `lr * min_lr_ratio`.
    #[serde(default = "d_min_lr_ratio")]
    pub min_lr_ratio: f64,
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    #[serde(default = "d_beta1")]
    pub beta1: f64,
    #[serde(default = "d_beta2")]
    pub beta2: f64,
    /// AdamW's ε. An element whose gradient is below it moves by less than lr; near it,
    /// rounding noise in the gradient decides the step (PyTorch's default, 1e-8).
    #[serde(default = "d_adam_eps", skip_serializing_if = "is_default_adam_eps")]
    pub adam_eps: f64,
    /// Global gradient-norm clip; 0 disables.
    #[serde(default = "d_clip")]
    pub grad_clip: f64,
    /// Micro-batches per optimizer step.
    #[serde(default = "d_one")]
    pub accumulate: u64,
    #[serde(default = "d_eval_every")]
    pub eval_every: u64,
    #[serde(default = "d_log_every")]
    pub log_every: u64,
    /// EMA decay of the weights; 0 disables the shadow copy.
    #[serde(default)]
    pub ema: f64,
    /// Stop after this many evaluations without improvement; 0 never stops early.
    #[serde(default)]
    pub patience: u32,
}
fn d_warmup() -> u64 {
    100
}
fn d_min_lr_ratio() -> f64 {
    0.1
}
fn d_wd() -> f64 {
    0.01
}
fn d_beta1() -> f64 {
    0.9
}
fn d_beta2() -> f64 {
    0.999
}
fn d_adam_eps() -> f64 {
    1e-8
}
fn is_default_adam_eps(eps: &f64) -> bool {
    *eps == d_adam_eps()
}
fn d_clip() -> f64 {
    1.0
}
fn d_one() -> u64 {
    1
}
fn d_eval_every() -> u64 {
    250
}
fn d_log_every() -> u64 {
    10
}
