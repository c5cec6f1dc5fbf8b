//! The `train:` section every stage's config shares, with its defaults.

use super::*;

/// The `train:` section of every stage's config.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps; or give `epochs` instead (0 until they are resolved, and then
    /// left out of a written config).
    #[serde(default, skip_serializing_if = "crate::config::is_default")]
    pub steps: u64,
    /// Passes over the training split, for configs meant for datasets of any size (the
    /// GPU profile): the stage turns them into `steps` once it knows the split
    /// ([`TrainConfig::resolve_epochs`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<f64>,
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

impl TrainConfig {
    /// Turns `epochs` into `steps` for a training split of `examples` items:
    /// ⌈epochs · examples / (batch_size · accumulate)⌉, at least one. `warmup` and
    /// `eval_every` are then capped at a tenth and a quarter of those steps, so a config
    /// written for a large dataset still warms up and evaluates along the way on a small
    /// one. `section` names the config section in errors (`train`, `pretrain.train`).
    /// Without `epochs` it checks nothing and changes nothing.
    pub fn resolve_epochs(&mut self, examples: usize, section: &str) -> Result<()> {
        let Some(epochs) = self.epochs else {
            return Ok(());
        };
        if self.steps != 0 {
            bail!("{section}.steps and {section}.epochs are both given: keep one");
        }
        if !(epochs > 0.0 && epochs.is_finite()) {
            bail!("{section}.epochs {epochs} must be a positive number");
        }
        let per_step = (self.batch_size.max(1) as u64 * self.accumulate.max(1)) as f64;
        self.steps = ((epochs * examples as f64 / per_step).ceil() as u64).max(1);
        self.epochs = None;
        self.warmup = self.warmup.min(self.steps / 10);
        self.eval_every = self.eval_every.min(self.steps.div_ceil(4)).max(1);
        crate::util::progress::note(format!(
            "{section}.epochs {epochs}: {} steps over {examples} training examples",
            self.steps
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> TrainConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn epochs_become_steps_once_the_split_is_known() {
        let mut c = config("{epochs: 2.5, batch_size: 8, accumulate: 2, lr: 1.0e-3}");
        c.resolve_epochs(100, "train").unwrap();
        // 2.5 passes over 100 examples, 16 per step: 15.6 -> 16 steps; the default
        // warmup (100) and eval_every (250) are capped at 1 and 4.
        assert_eq!((c.steps, c.epochs), (16, None));
        assert_eq!((c.warmup, c.eval_every), (1, 4));
        // Resolved once, the config reads as a plain step count.
        c.resolve_epochs(100, "train").unwrap();
        assert_eq!(c.steps, 16);
        let mut tiny = config("{epochs: 0.01, batch_size: 8, lr: 1.0e-3}");
        tiny.resolve_epochs(10, "train").unwrap();
        assert_eq!(tiny.steps, 1);
    }

    #[test]
    fn steps_and_epochs_together_or_a_bad_count_are_refused() {
        let mut both = config("{steps: 10, epochs: 1, batch_size: 8, lr: 1.0e-3}");
        let e = both.resolve_epochs(100, "pretrain.train").unwrap_err();
        assert!(
            e.to_string()
                .contains("pretrain.train.steps and pretrain.train.epochs"),
            "{e}"
        );
        let mut zero = config("{epochs: 0, batch_size: 8, lr: 1.0e-3}");
        assert!(zero.resolve_epochs(100, "train").is_err());
    }
}
