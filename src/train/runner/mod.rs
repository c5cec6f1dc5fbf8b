//! The training loop every stage shares (nanoGPT's shape): set the learning rate →
//! forward/backward with accumulation → clip → step → EMA → log → evaluate and keep the
//! best checkpoint → stop early or at the last step. Resumable exactly: the data order
//! and the dropout seed are functions of (seed, micro-step), and the checkpoint holds
//! the weights, the EMA shadow and the optimizer moments.
//!
//! Data-parallel under torchrun (`crate::distributed`): rank 0's weights are broadcast
//! at the start, each rank computes its share of every micro-batch, gradients are
//! averaged before clipping, and only rank 0 writes; the ranks agree on every stop.

use super::adamw::{AdamW, AdamWConfig};
use super::checkpoint::{self, TrainState, FORMAT_VERSION};
use super::ema::Ema;
use super::schedule::lr_at;
use crate::distributed;
use crate::util::draws;
use crate::util::tensorboard::EventWriter;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use tch::{nn::VarStore, Tensor};

/// An optimizer group: the variables whose names start with one of `prefixes`, trained
/// on their own loss by their own AdamW at `lr × lr_scale` (a GAN's discriminator and
/// generator).
#[derive(Clone, Debug)]
pub struct Group {
    pub name: String,
    pub prefixes: Vec<String>,
    pub lr_scale: f64,
}

/// What a stage gives the runner.
pub trait Trainable {
    fn var_store(&self) -> &VarStore;
    /// The training loss of micro-batch `micro` (its data chosen from `micro` alone).
    fn loss(&mut self, micro: u64) -> Result<Tensor>;
    /// Validation metrics, computed with the weights currently loaded.
    fn evaluate(&mut self, step: u64, tb: &mut EventWriter) -> Result<BTreeMap<String, f64>>;
    /// Optimizer groups, stepped one after another in each training step. None (the
    /// default): one optimizer over every variable, trained on [`Trainable::loss`].
    fn groups(&self) -> Vec<Group> {
        vec![]
    }
    /// The loss of group `g` on micro-batch `micro`; the groups before it have already
    /// stepped (alternating GAN updates).
    fn group_loss(&mut self, g: usize, micro: u64) -> Result<Tensor> {
        let _ = g;
        self.loss(micro)
    }
    /// Learning-rate scales by variable-name prefix, applied in every optimizer: a
    /// pretrained part fine-tuned at a fraction of the rate. None by default.
    fn lr_scales(&self) -> Vec<(String, f64)> {
        vec![]
    }
    /// The named parts of the last loss (e.g. pixel, KL, an auxiliary term), logged as
    /// `train/<name>` and printed with each evaluation. None by default.
    fn loss_parts(&self) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }
}

/// Which metric picks the best checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BestMetric {
    pub name: String,
    #[serde(default)]
    pub higher_is_better: bool,
}

pub struct RunOptions {
    pub run_dir: PathBuf,
    pub resume: bool,
    pub seed: u64,
    pub arch: serde_json::Value,
    pub tokenizer_hash: String,
    pub best: BestMetric,
    /// The resolved config, written to `config.yaml`.
    pub config_yaml: String,
}

pub struct RunSummary {
    pub steps: u64,
    pub best_metric: Option<f64>,
    pub best_step: Option<u64>,
    pub last_metrics: BTreeMap<String, f64>,
    pub seconds: f64,
    pub stopped_early: bool,
}

/// Number of trainable parameters (for the line each stage prints at start).
pub fn parameters(vs: &VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

/// The interrupt flag: the loop finishes its step, checkpoints and exits when it is set.
use crate::util::signals::INTERRUPTED;

mod resume_checks;
mod train_config;
use resume_checks::*;
pub use train_config::*;

fn better(new: f64, old: Option<f64>, higher: bool) -> bool {
    match old {
        None => true,
        Some(o) => (higher && new > o) || (!higher && new < o),
    }
}

pub fn run(model: &mut dyn Trainable, cfg: &TrainConfig, opts: &RunOptions) -> Result<RunSummary> {
    crate::util::signals::stop_gracefully();
    if cfg.epochs.is_some() {
        bail!("epochs is not read by this stage or phase: give its steps");
    }
    if cfg.steps == 0 || cfg.batch_size == 0 || cfg.accumulate == 0 {
        bail!(
            "train.steps (or train.epochs), train.batch_size and train.accumulate must be positive"
        );
    }
    distributed::check_batch(cfg.batch_size, "train.batch_size")?;
    let run_dir = &opts.run_dir;
    let vs = model.var_store();
    // Shallow handles on the variables (they share storage), so `model` can be borrowed
    // mutably by the loop while checkpoints still read the live weights.
    let model_vars = checkpoint::model_tensors(vs);
    // Every rank starts from rank 0's weights and buffers (before the EMA copies them).
    let mut shared: Vec<Tensor> = model_vars.iter().map(|(_, t)| t.shallow_clone()).collect();
    distributed::broadcast_from_first(&mut shared)?;
    let adam_cfg = AdamWConfig {
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.adam_eps,
        weight_decay: cfg.weight_decay,
        ..Default::default()
    };
    let groups = model.groups();
    let single = groups.is_empty();
    let mut optimizers: Vec<(Group, AdamW)> = if single {
        let all = Group {
            name: "loss".into(),
            prefixes: vec![],
            lr_scale: 1.0,
        };
        vec![(all, AdamW::new(vs, adam_cfg))]
    } else {
        groups
            .into_iter()
            .map(|g| {
                let opt = AdamW::for_group(vs, adam_cfg, &format!("adam_{}", g.name), &g.prefixes);
                (g, opt)
            })
            .collect()
    };
    if let Some((g, _)) = optimizers.iter().find(|(_, o)| o.is_empty()) {
        bail!(
            "optimizer group {:?} matches no variables (prefixes {:?})",
            g.name,
            g.prefixes
        );
    }
    for (prefix, scale) in model.lr_scales() {
        let matched: usize = optimizers
            .iter_mut()
            .map(|(_, o)| o.scale_lr(&prefix, scale))
            .sum();
        if matched == 0 {
            bail!(
                "learning-rate scale {scale} for {prefix:?}: no trainable variable has that prefix"
            );
        }
    }
    let mut ema = (cfg.ema > 0.0).then(|| Ema::new(vs, cfg.ema));
    let mut state = TrainState {
        format_version: FORMAT_VERSION,
        step: 0,
        seed: opts.seed,
        best_metric: None,
        best_step: None,
        stale_evals: 0,
        tokenizer_hash: opts.tokenizer_hash.clone(),
        arch: opts.arch.clone(),
        metrics: BTreeMap::new(),
        weights: None,
    };
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    // Held until this function returns: a second training on the same --run stops here.
    let _lock = crate::util::fsio::lock_dir(run_dir)?;
    if opts.resume {
        let (saved, tensors) = checkpoint::load(run_dir, "latest").context("--resume")?;
        check_arch(&saved.arch, &opts.arch, run_dir)?;
        if saved.seed != opts.seed {
            bail!(
                "cannot resume {}: it was trained with seed {}, not {} (drop --seed or give the run's)",
                run_dir.display(),
                saved.seed,
                opts.seed
            );
        }
        check_same_config(run_dir, &opts.config_yaml)?;
        if saved.tokenizer_hash != opts.tokenizer_hash {
            bail!(
                "cannot resume {}: it was trained with a different tokenizer.json",
                run_dir.display()
            );
        }
        checkpoint::load_into(vs, &tensors, "model.")?;
        for (_, opt) in optimizers.iter_mut() {
            opt.load_state(&tensors)?;
        }
        if let Some(e) = ema.as_mut() {
            e.load_state(&tensors)?;
        }
        state = saved;
        if distributed::is_writer() {
            eprintln!("resuming {} at step {}", run_dir.display(), state.step);
        }
    } else if checkpoint::exists(run_dir, "latest") {
        bail!(
            "{} already holds a run; pass --resume to continue it or choose another --run",
            run_dir.display()
        );
    }
    // No rank may see rank 0's first files before it has made the checks above.
    distributed::barrier()?;
    crate::util::fsio::atomic_write(&run_dir.join("config.yaml"), opts.config_yaml.as_bytes())?;
    let mut tb = EventWriter::create(run_dir)?;

    let save = |tag: &str,
                state: &TrainState,
                optimizers: &[(Group, AdamW)],
                ema: &Option<Ema>|
     -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = model_vars
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        for (_, opt) in optimizers {
            tensors.extend(opt.state());
        }
        if let Some(e) = ema {
            tensors.extend(e.state());
        }
        checkpoint::save(run_dir, tag, &tensors, state)
    };

    let start = std::time::Instant::now();
    let first_step = state.step;
    let pb = crate::util::progress::bar(cfg.steps, "train");
    pb.set_position(state.step);
    let mut stopped_early = false;
    // Time spent averaging gradients over ranks (the communication share of a step).
    let mut comm = std::time::Duration::ZERO;
    let mut evaluating = std::time::Duration::ZERO;
    let mut last_metrics = state.metrics.clone();
    // Test hook: behave as if interrupted right after this step (resume tests).
    let stop_after: Option<u64> = std::env::var("EKPHRASIS_STOP_AFTER_STEP")
        .ok()
        .and_then(|v| v.parse().ok());
    while state.step < cfg.steps {
        // Side by side with other stages (`--share-cores`): take the cores they free.
        crate::util::cores::rebalance();
        let step = state.step;
        let lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_ratio);
        let mut losses: Vec<(String, f64, f64)> = vec![];
        for (gi, (group, opt)) in optimizers.iter_mut().enumerate() {
            opt.zero_grad();
            let mut loss_sum = 0.0;
            for k in 0..cfg.accumulate {
                let micro = step * cfg.accumulate + k;
                // Dropout and any sampling inside the model draw from this seed.
                let seed = opts.seed.wrapping_mul(1_000_003).wrapping_add(micro);
                let seed = seed.wrapping_add((gi as u64) << 40);
                tch::manual_seed(seed as i64);
                draws::begin(seed);
                let loss = if single {
                    model.loss(micro)
                } else {
                    model.group_loss(gi, micro)
                };
                let loss = loss.and_then(|l| {
                    distributed::take_error()?;
                    Ok(l)
                });
                let loss = match loss {
                    Ok(l) => l,
                    Err(e) => {
                        draws::end();
                        return Err(e);
                    }
                };
                let v = loss.double_value(&[]);
                if !distributed::all_agree(v.is_finite())? {
                    draws::end();
                    let last = if checkpoint::exists(run_dir, "latest") {
                        checkpoint::meta_path(run_dir, "latest")
                            .display()
                            .to_string()
                    } else {
                        "none yet".to_string()
                    };
                    bail!("{} is {v} at step {step} (micro-batch {micro}); stopping. Last good checkpoint: {last}", group.name);
                }
                loss_sum += v;
                let backward = (loss / cfg.accumulate as f64).f_backward();
                draws::end();
                backward.context("backward pass")?;
                distributed::take_error()?;
            }
            let t = std::time::Instant::now();
            distributed::average_gradients(&opt.variables())?;
            let loss_sum = distributed::mean_of(loss_sum)?;
            comm += t.elapsed();
            let gnorm = opt.clip_grad_norm(cfg.grad_clip);
            opt.step(lr * group.lr_scale);
            losses.push((group.name.clone(), loss_sum / cfg.accumulate as f64, gnorm));
        }
        if let Some(e) = ema.as_mut() {
            e.update(step as i64);
        }
        state.step += 1;
        pb.set_position(state.step);
        let loss_text: Vec<String> = losses
            .iter()
            .map(|(n, v, _)| format!("{n} {v:.4}"))
            .collect();
        pb.set_message(format!("{} lr {lr:.2e}", loss_text.join(" ")));
        if state.step.is_multiple_of(cfg.log_every) || state.step == cfg.steps {
            let sps = (state.step - first_step) as f64 / start.elapsed().as_secs_f64();
            for (name, v, gnorm) in &losses {
                let suffix = if single {
                    String::new()
                } else {
                    format!("_{name}")
                };
                tb.scalar(&format!("train/loss{suffix}"), state.step as i64, *v)?;
                tb.scalar(
                    &format!("train/grad_norm{suffix}"),
                    state.step as i64,
                    *gnorm,
                )?;
            }
            for (name, v) in model.loss_parts() {
                tb.scalar(&format!("train/{name}"), state.step as i64, v)?;
            }
            tb.scalar("train/lr", state.step as i64, lr)?;
            tb.scalar("train/steps_per_sec", state.step as i64, sps)?;
        }
        let interrupted = INTERRUPTED.load(Ordering::SeqCst) || stop_after == Some(state.step);
        // One rank's Ctrl-C stops them all at the same step.
        let interrupted = !distributed::all_agree(!interrupted)?;
        if state.step.is_multiple_of(cfg.eval_every) || state.step == cfg.steps {
            // The live weights and this step's gradients, as trainer users expect to see
            // them (TensorBoard's histogram tab); the EMA shadow is not swapped in yet.
            for (name, var) in model_vars.iter().filter(|(_, v)| v.requires_grad()) {
                let name = name.strip_prefix("model.").unwrap_or(name);
                tb.histogram(&format!("weights/{name}"), state.step as i64, var)?;
                let grad = var.grad();
                if grad.defined() {
                    tb.histogram(&format!("grads/{name}"), state.step as i64, &grad)?;
                }
            }
            let eval_start = std::time::Instant::now();
            let metrics = match &ema {
                Some(e) => e.with_shadow(|| model.evaluate(state.step, &mut tb))?,
                None => model.evaluate(state.step, &mut tb)?,
            };
            evaluating += eval_start.elapsed();
            for (k, v) in &metrics {
                tb.scalar(&format!("val/{k}"), state.step as i64, *v)?;
            }
            let line: Vec<String> = metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
            let parts: Vec<String> = model
                .loss_parts()
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect();
            let parts = if parts.is_empty() {
                String::new()
            } else {
                format!(" ({})", parts.join(", "))
            };
            crate::util::progress::say(
                &pb,
                format!(
                    "step {:>6} | train {}{parts} | {}",
                    state.step,
                    loss_text.join(" "),
                    line.join(" | ")
                ),
            );
            let value = *metrics.get(&opts.best.name).with_context(|| {
                format!(
                    "evaluation produced no metric {:?} (best.name in the config)",
                    opts.best.name
                )
            })?;
            state.metrics = metrics.clone();
            last_metrics = metrics;
            if better(value, state.best_metric, opts.best.higher_is_better) {
                state.best_metric = Some(value);
                state.best_step = Some(state.step);
                state.stale_evals = 0;
                save("best", &state, &optimizers, &ema)?;
            } else {
                state.stale_evals += 1;
                if cfg.patience > 0 && state.stale_evals >= cfg.patience {
                    stopped_early = true;
                }
            }
            save("latest", &state, &optimizers, &ema)?;
        } else if interrupted {
            save("latest", &state, &optimizers, &ema)?;
        }
        tb.flush()?;
        stopped_early = !distributed::all_agree(!stopped_early)?;
        if interrupted {
            distributed::barrier()?;
            pb.finish_and_clear();
            bail!(
                "interrupted at step {}; checkpoint written to {}; continue with --resume",
                state.step,
                checkpoint::meta_path(run_dir, "latest").display()
            );
        }
        if stopped_early {
            crate::util::progress::say(
                &pb,
                format!(
                    "early stop: no improvement of {} in {} evaluations",
                    opts.best.name, cfg.patience
                ),
            );
            break;
        }
    }
    // The other ranks read what rank 0 wrote (the best checkpoint) only after this.
    distributed::barrier()?;
    pb.finish_and_clear();
    let training = (start.elapsed() - evaluating).as_secs_f64();
    let samples = (state.step - first_step) * cfg.accumulate * cfg.batch_size as u64;
    crate::util::progress::note(format!(
        "throughput: {:.1} samples/s ({samples} samples in {training:.2} s, evaluation excluded)",
        samples as f64 / training.max(1e-9)
    ));
    if let Some(g) = distributed::current() {
        let total = training;
        crate::util::progress::note(format!(
            "data-parallel: {} ranks ({}), gradient averaging {:.2} s of {total:.2} s of training ({:.1} %)",
            g.world,
            g.backend.name(),
            comm.as_secs_f64(),
            100.0 * comm.as_secs_f64() / total.max(1e-9)
        ));
    }
    Ok(RunSummary {
        steps: state.step,
        best_metric: state.best_metric,
        best_step: state.best_step,
        last_metrics,
        seconds: start.elapsed().as_secs_f64(),
        stopped_early,
    })
}
