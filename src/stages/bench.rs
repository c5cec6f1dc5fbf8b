//! The measurements behind `make bench` (bench/run.py sets them beside the PyTorch
//! reference in bench/reference.py): training steps/s of the demo captioner and GAN with
//! the time split into forward, backward and optimizer; greedy decoding tokens/s; the
//! machine's fp32 matmul peak; decode + resize of image files. Each prints one JSON
//! object so the runner can read it.

use crate::data::images::load_rgb;
use crate::models::captioner::decode::{decode, DecodeOptions, NextToken};
use crate::models::captioner::{Captioner, CaptionerConfig};
use crate::models::t2i::{T2IConfig, TextToImage, DISCRIMINATOR_PREFIX};
use crate::train::adamw::{AdamW, AdamWConfig};
use crate::train::runner::TrainConfig;
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// Token id 0 is padding in the benchmark's random batches; real tokens start here.
const FIRST_TOKEN: i64 = 3;

#[derive(Debug, Serialize)]
pub struct StepTiming {
    pub model: String,
    pub parameters: i64,
    pub batch: i64,
    pub steps: u64,
    pub steps_per_s: f64,
    /// Mean seconds per step in each phase (CPU work is synchronous, so they add up).
    pub forward_s: f64,
    pub backward_s: f64,
    pub optimizer_s: f64,
    pub threads: i32,
}

fn trainable_parameters(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

fn adam(t: &TrainConfig) -> AdamWConfig {
    AdamWConfig {
        beta1: t.beta1,
        beta2: t.beta2,
        weight_decay: t.weight_decay,
        ..Default::default()
    }
}

/// Accumulates phase times over the timed steps (after `warmup` untimed ones).
struct Phases {
    forward: f64,
    backward: f64,
    optimizer: f64,
}

impl Phases {
    fn timing(
        &self,
        model: &str,
        vs: &nn::VarStore,
        batch: i64,
        steps: u64,
        total: f64,
    ) -> StepTiming {
        let n = steps as f64;
        StepTiming {
            model: model.into(),
            parameters: trainable_parameters(vs),
            batch,
            steps,
            steps_per_s: n / total,
            forward_s: self.forward / n,
            backward_s: self.backward / n,
            optimizer_s: self.optimizer / n,
            threads: tch::get_num_threads(),
        }
    }
}

/// Random images in [-1, 1] and `len`-token rows without padding.
fn random_batch(b: i64, side: i64, len: i64, vocab: i64) -> (Tensor, Tensor) {
    let images = Tensor::rand([b, 3, side, side], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let tokens = Tensor::randint_low(FIRST_TOKEN, vocab, [b, len], (Kind::Int64, Device::Cpu));
    (images, tokens)
}

/// A randomly initialised captioner of config `model` over a `vocab`-token vocabulary.
fn fresh_captioner(model: &CaptionerConfig, vocab: i64) -> Result<(nn::VarStore, Captioner)> {
    let mut cfg = model.clone();
    cfg.vocab_size = vocab;
    let vs = nn::VarStore::new(Device::Cpu);
    let m = Captioner::new(&vs.root(), &cfg)?;
    Ok((vs, m))
}

/// One optimizer group of a training step: its optimizer, learning rate and loss.
struct Group<'a> {
    opt: AdamW,
    lr: f64,
    loss: Box<dyn Fn() -> Result<Tensor> + 'a>,
}

/// Runs `warmup + steps` training steps, each stepping `groups` in turn (gradients
/// zeroed, loss, backward, clip, update), and times the last `steps` by phase.
fn time_steps(groups: &mut [Group], clip: f64, steps: u64, warmup: u64) -> Result<(Phases, f64)> {
    let mut ph = Phases {
        forward: 0.0,
        backward: 0.0,
        optimizer: 0.0,
    };
    let mut total = 0.0;
    for i in 0..warmup + steps {
        for g in groups.iter_mut() {
            let t0 = Instant::now();
            g.opt.zero_grad();
            let loss = (g.loss)()?;
            let t1 = Instant::now();
            loss.backward();
            let t2 = Instant::now();
            g.opt.clip_grad_norm(clip);
            g.opt.step(g.lr);
            let t3 = Instant::now();
            if i >= warmup {
                ph.forward += (t1 - t0).as_secs_f64();
                ph.backward += (t2 - t1).as_secs_f64();
                ph.optimizer += (t3 - t2).as_secs_f64();
                total += (t3 - t0).as_secs_f64();
            }
        }
    }
    Ok((ph, total))
}

/// Training steps of the captioner of `model` on random images and `seq_len`-token
/// paragraphs (no padding, so every step does the same work).
pub fn captioner_steps(
    model: &CaptionerConfig,
    train: &TrainConfig,
    vocab: i64,
    seq_len: i64,
    steps: u64,
    warmup: u64,
) -> Result<StepTiming> {
    let (vs, m) = fresh_captioner(model, vocab)?;
    let b = train.batch_size as i64;
    let (images, tokens) = random_batch(b, model.image_size, seq_len, vocab);
    // With attribute heads, targets where every head applies (class 0 everywhere), as
    // bench/reference.py uses.
    let attributes = m
        .wants_attributes()
        .then(|| Tensor::zeros([b, 39], (Kind::Int64, Device::Cpu)));
    let mut groups = [Group {
        opt: AdamW::new(&vs, adam(train)),
        lr: train.lr,
        loss: Box::new(|| Ok(m.loss(&images, &tokens, attributes.as_ref(), 0, 0.0, 0.0, true))),
    }];
    let (ph, total) = time_steps(&mut groups, train.grad_clip, steps, warmup)?;
    Ok(ph.timing("captioner", &vs, b, steps, total))
}

/// Training steps of the GAN of `model`: a discriminator step, then a generator (and
/// text encoder) step on the same batch, as the trainer's two optimizer groups do.
pub fn gan_steps(
    model: &T2IConfig,
    train: &TrainConfig,
    vocab: i64,
    seq_len: i64,
    steps: u64,
    warmup: u64,
) -> Result<StepTiming> {
    let mut cfg = model.clone();
    cfg.text.vocab_size = vocab;
    let vs = nn::VarStore::new(Device::Cpu);
    let m = TextToImage::new(&vs.root(), &cfg)?;
    if !m.is_gan() {
        bail!("bench gan needs a config with model.kind: gan");
    }
    let lr_d = cfg.gan.as_ref().map_or(1.0, |g| g.lr_d_scale);
    let b = train.batch_size as i64;
    let (images, tokens) = random_batch(b, cfg.image_size, seq_len, vocab);
    let loss = |group: usize| {
        let (m, images, tokens) = (&m, &images, &tokens);
        Box::new(move || m.gan_losses(group, images, tokens, 0))
    };
    let mut groups = [
        Group {
            opt: AdamW::for_group(&vs, adam(train), "d", &[DISCRIMINATOR_PREFIX.into()]),
            lr: train.lr * lr_d,
            loss: loss(0),
        },
        Group {
            opt: AdamW::for_group(
                &vs,
                adam(train),
                "g",
                &["generator.".into(), "text.".into()],
            ),
            lr: train.lr,
            loss: loss(1),
        },
    ];
    let (ph, total) = time_steps(&mut groups, train.grad_clip, steps, warmup)?;
    Ok(ph.timing("gan", &vs, b, steps, total))
}

#[derive(Debug, Serialize)]
pub struct DecodeTiming {
    pub batch: i64,
    pub tokens: i64,
    pub seconds: f64,
    pub tokens_per_s: f64,
}

/// Greedy decoding with the KV cache, `tokens` new tokens for each of `batch` random
/// images (the end token is made unreachable so every run does the same work).
pub fn greedy_decoding(
    model: &CaptionerConfig,
    vocab: i64,
    batch: i64,
    tokens: usize,
    repeats: usize,
) -> Result<DecodeTiming> {
    let (_vs, m) = fresh_captioner(model, vocab)?;
    let (images, _) = random_batch(batch, model.image_size, 1, vocab);
    let opts = DecodeOptions {
        max_tokens: tokens + 1,
        ..Default::default()
    };
    let run = |m: &Captioner| -> Result<usize> {
        let ctx = tch::no_grad(|| m.encode(&images, false));
        let state = m.start_state(&ctx, &opts);
        let out = decode(m, state, batch, Device::Cpu, &opts, 1, -1, 0)?;
        Ok(out.iter().map(|r| r.len() - 1).sum())
    };
    run(&m)?; // warm-up
    let t0 = Instant::now();
    let mut produced = 0;
    for _ in 0..repeats {
        produced += run(&m)?;
    }
    let seconds = t0.elapsed().as_secs_f64();
    if produced < repeats * batch as usize * tokens.min(m.max_len() - 1) {
        bail!("decoding stopped early: the benchmark must produce every token");
    }
    Ok(DecodeTiming {
        batch,
        tokens: produced as i64,
        seconds,
        tokens_per_s: produced as f64 / seconds,
    })
}

/// fp32 matmul throughput (GFLOP/s) of `n`×`n` products on this machine's threads.
pub fn matmul_gflops(n: i64, repeats: usize) -> f64 {
    let a = Tensor::randn([n, n], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([n, n], (Kind::Float, Device::Cpu));
    let _ = a.matmul(&b);
    let t0 = Instant::now();
    for _ in 0..repeats {
        let _ = std::hint::black_box(a.matmul(&b));
    }
    2.0 * (n as f64).powi(3) * repeats as f64 / t0.elapsed().as_secs_f64() / 1e9
}

#[derive(Debug, Serialize)]
pub struct FileDecodeTiming {
    pub files: usize,
    pub seconds: f64,
    pub images_per_s: f64,
    pub threads: usize,
}

/// Decodes, centre-crops and resizes every image file in `dir` to `size` (rayon, all
/// cores), as the dataset preparation does.
pub fn decode_files(dir: &Path, size: u32) -> Result<FileDecodeTiming> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no image files", dir.display());
    }
    let t0 = Instant::now();
    let bytes: usize = files
        .par_iter()
        .map(|p| load_rgb(p, size).map(|v| v.len()))
        .collect::<Result<Vec<_>>>()?
        .iter()
        .sum();
    let seconds = t0.elapsed().as_secs_f64();
    std::hint::black_box(bytes);
    Ok(FileDecodeTiming {
        files: files.len(),
        seconds,
        images_per_s: files.len() as f64 / seconds,
        threads: rayon::current_num_threads(),
    })
}
