//! The invertible bridge stage (Menon et al., ICVGIP 2024): train an image autoencoder,
//! then an invertible MLP f with f(E_I(image)) ≈ E_T(caption) on captioning alone (the
//! autoencoder and the sentence embedder E_T frozen), then generate by inversion:
//! image = D_I(f⁻¹(E_T(text))). `train invertible`, `eval invertible`, and the painter the
//! cycle uses for its bridge column.

use super::t2i::{generation_scores, resized, T2IEvalConfig};
use crate::data::layout::{Dataset, Split};
use crate::data::loader::{batch_indices, load_split, micro_batch, to_float, to_u8, SplitData};
use crate::eval::image::psnr;
use crate::eval::mean;
use crate::models::invertible::{Autoencoder, AutoencoderConfig, InvertibleConfig, InvertibleMlp};
use crate::train::runner::{self, BestMetric, RunOptions, TrainConfig, Trainable};
use crate::util::tensorboard::EventWriter;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

mod bridge;
mod embedder;
pub use bridge::*;
pub use embedder::SentenceEmbedder;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoencoderStage {
    pub model: AutoencoderConfig,
    pub train: TrainConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeStage {
    pub layers: i64,
    #[serde(default = "d_slope")]
    pub slope: f64,
    #[serde(default = "d_diag")]
    pub diagonal: crate::models::invertible::Diagonal,
    /// Weight of ‖f⁻¹(y) − z‖² beside the captioning loss ‖f(z) − y‖² (0 = Menon et al.'s
    /// captioning-only training).
    #[serde(default)]
    pub bidirectional: f64,
    pub train: TrainConfig,
}
fn d_slope() -> f64 {
    0.5
}
fn d_diag() -> crate::models::invertible::Diagonal {
    crate::models::invertible::Diagonal::Learned
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvertibleStageConfig {
    pub data: PathBuf,
    pub seed: u64,
    /// The frozen sentence embedder E_T: an align run (its sentence vector; the general
    /// path) or a contrastive run (its text tower, as Menon et al. use CLIP's).
    pub text_embedder: PathBuf,
    pub autoencoder: AutoencoderStage,
    pub bridge: BridgeStage,
    pub eval: T2IEvalConfig,
    /// σ of the noise added to f(E_I(x)) before inverting (Menon et al.'s finding).
    #[serde(default = "d_noise")]
    pub inversion_noise: f64,
}
fn d_noise() -> f64 {
    0.01
}

fn bridge_config(cfg: &InvertibleStageConfig, dim: i64) -> InvertibleConfig {
    InvertibleConfig {
        dim,
        layers: cfg.bridge.layers,
        slope: cfg.bridge.slope,
        diagonal: cfg.bridge.diagonal,
    }
}

/// Checks what serde cannot: Menon et al.'s squareness requirement and an invertible slope.
fn validate(cfg: &InvertibleStageConfig, embed_dim: i64) -> Result<()> {
    let ae = &cfg.autoencoder.model;
    if ae.channels.is_empty() || ae.image_size % (1 << ae.channels.len()) != 0 {
        bail!(
            "autoencoder.model.channels: {} stride-2 stages do not divide {} px",
            ae.channels.len(),
            ae.image_size
        );
    }
    if ae.latent_dim() != embed_dim {
        bail!(
            "the autoencoder's flat latent has {} dimensions (latent_channels {} × {}×{}) but the sentence embedding of {} has {embed_dim}: the invertible bridge needs square layers, so they must be equal (Menon et al. 2024, §3.2)",
            ae.latent_dim(),
            ae.latent_channels,
            ae.latent_side(),
            ae.latent_side(),
            cfg.text_embedder.display()
        );
    }
    if cfg.bridge.slope <= 0.0 {
        bail!(
            "bridge.slope {} must be positive for the leaky ReLU to be invertible",
            cfg.bridge.slope
        );
    }
    if cfg.bridge.layers < 1 {
        bail!("bridge.layers must be at least 1");
    }
    Ok(())
}

struct AeStage<'a> {
    vs: &'a nn::VarStore,
    ae: &'a Autoencoder,
    train: &'a SplitData,
    val: &'a SplitData,
    cfg: &'a AutoencoderStage,
    seed: u64,
    device: Device,
}

impl Trainable for AeStage<'_> {
    fn var_store(&self) -> &nn::VarStore {
        self.vs
    }
    fn loss(&mut self, micro: u64) -> Result<Tensor> {
        let (x, _) = micro_batch(
            self.train,
            self.cfg.train.batch_size,
            self.seed,
            micro,
            self.device,
        );
        Ok(self.ae.reconstruction_loss(&x))
    }
    fn evaluate(&mut self, step: u64, tb: &mut EventWriter) -> Result<BTreeMap<String, f64>> {
        let x = to_float(&self.val.images, self.device);
        let recon = tch::no_grad(|| self.ae.decode(&self.ae.encode(&x, false)));
        let mse = (&recon - &x).square().mean(Kind::Float).double_value(&[]);
        let p = psnr(&x.to_device(Device::Cpu), &recon.to_device(Device::Cpu));
        let k = 8.min(x.size()[0]);
        let both = Tensor::cat(
            &[to_u8(&x.narrow(0, 0, k)), to_u8(&recon.narrow(0, 0, k))],
            0,
        );
        let (rgb, h, w) = crate::report::grid::grid_rgb(&both, k);
        tb.image("autoencoder/val_reconstructions", step as i64, &rgb, h, w)?;
        Ok(BTreeMap::from([
            ("recon_mse".to_string(), mse),
            (
                "psnr".to_string(),
                p.iter().sum::<f64>() / p.len().max(1) as f64,
            ),
        ]))
    }
}

fn encode_all(ae: &Autoencoder, images: &Tensor, device: Device) -> Tensor {
    tch::no_grad(|| {
        let n = images.size()[0];
        let mut out = vec![];
        let mut s = 0;
        while s < n {
            let len = 128.min(n - s);
            out.push(ae.encode(&to_float(&images.narrow(0, s, len), device), false));
            s += len;
        }
        Tensor::cat(&out, 0)
    })
}

fn build_ae(cfg: &AutoencoderConfig, device: Device) -> (nn::VarStore, Autoencoder) {
    let vs = nn::VarStore::new(device);
    let ae = Autoencoder::new(vs.root(), cfg);
    (vs, ae)
}

pub fn train(
    cfg: InvertibleStageConfig,
    yaml: String,
    run_dir: &Path,
    resume: bool,
    device: Device,
) -> Result<()> {
    let ds = Dataset::open(&cfg.data)?;
    let embedder = SentenceEmbedder::load(&cfg.text_embedder, device).with_context(|| {
        format!(
            "loading the sentence embedder {} (train it with `make train-align`)",
            cfg.text_embedder.display()
        )
    })?;
    if embedder.tokenizer().hash != crate::util::fsio::sha256_file(&ds.tokenizer_path())? {
        bail!(
            "the sentence embedder {} was trained with a different tokenizer",
            cfg.text_embedder.display()
        );
    }
    validate(&cfg, embedder.dim())?;
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    crate::util::fsio::atomic_write(&run_dir.join("config.yaml"), yaml.as_bytes())?;
    let size = cfg.autoencoder.model.image_size as u32;
    let train_split = load_split(&ds, Split::Train, size, None)?;
    let val_split = load_split(&ds, Split::Val, size, Some(cfg.eval.subset))?;

    // 1. The autoencoder (its own run folder, so it resumes on its own).
    let ae_dir = run_dir.join("autoencoder");
    tch::manual_seed(cfg.seed as i64);
    let (ae_vs, ae) = build_ae(&cfg.autoencoder.model, device);
    if ae_dir.join("done.json").exists() {
        crate::train::checkpoint::load_weights(&ae_vs, &ae_dir, "best", None)?;
    } else {
        crate::util::progress::note(format!(
            "invertible 1/2: image autoencoder, latent {} dims",
            cfg.autoencoder.model.latent_dim()
        ));
        let opts = RunOptions {
            run_dir: ae_dir.clone(),
            resume: resume && crate::train::checkpoint::exists(&ae_dir, "latest"),
            seed: cfg.seed,
            arch: serde_json::to_value(&cfg.autoencoder.model)?,
            tokenizer_hash: String::new(),
            best: BestMetric {
                name: "recon_mse".into(),
                higher_is_better: false,
            },
            config_yaml: crate::config::to_yaml(&cfg.autoencoder)?,
        };
        let mut stage = AeStage {
            vs: &ae_vs,
            ae: &ae,
            train: &train_split,
            val: &val_split,
            cfg: &cfg.autoencoder,
            seed: cfg.seed,
            device,
        };
        let s = runner::run(&mut stage, &cfg.autoencoder.train, &opts)?;
        super::write_done(&ae_dir, &s)?;
        crate::train::checkpoint::load_weights(&ae_vs, &ae_dir, "best", None)?;
    }
    train_bridge(
        &cfg,
        run_dir,
        resume,
        device,
        &embedder,
        &ae,
        &train_split,
        &val_split,
    )
}

/// `eval invertible`: bridge errors, generation scores of images made by inversion,
/// and the y_pred + noise variant; metrics.json and a comparison grid.
pub fn evaluate(
    run_dir: &Path,
    split: Split,
    limit: Option<usize>,
    device: Device,
) -> Result<BTreeMap<String, f64>> {
    let lb = load_run(run_dir, device)?;
    let ds = Dataset::open(&lb.cfg.data)?;
    let data = load_split(
        &ds,
        split,
        lb.cfg.autoencoder.model.image_size as u32,
        limit,
    )?;
    let (clip, probe) = super::t2i::load_evaluators(&lb.cfg.eval, &ds, device)?;
    let z = lb
        .bridge
        .standardise(&encode_all(&lb.ae, &data.images, device));
    let y = lb.embedder.embed(&data.captions, device)?;
    let mut m = tch::no_grad(|| bridge_errors(&lb.bridge.f, &z, &y));
    let scores = |images: &Tensor| {
        generation_scores(
            images,
            &data.captions,
            &data.ids,
            &data.images,
            &clip,
            probe.as_ref(),
            &ds,
            device,
        )
    };
    let inverted = lb.draw(&data.captions)?;
    for (k, v) in scores(&inverted)? {
        m.insert(format!("inverted_{k}"), v);
    }
    tch::manual_seed(0);
    let noisy = lb.reinvert(&data.images, lb.cfg.inversion_noise);
    let recon = lb.reconstruct(&data.images);
    let x = to_float(&data.images, Device::Cpu);
    for (name, imgs) in [
        ("autoencoder", &recon),
        ("noisy_prediction", &noisy),
        ("inverted", &inverted),
    ] {
        m.insert(
            format!("{name}_psnr"),
            mean(&psnr(&x, &to_float(imgs, Device::Cpu))),
        );
    }
    for (k, v) in scores(&noisy)? {
        if k == "probe_attr_accuracy" || k == "r_precision" {
            m.insert(format!("noisy_prediction_{k}"), v);
        }
    }
    m.insert("images".into(), data.ids.len() as f64);
    let out = run_dir.join(format!("eval_{}", split.name()));
    crate::util::fsio::write_json(&out.join("metrics.json"), &m)?;
    // Rows: original | autoencoder | inverted from f(E_I(x)) + noise | inverted from caption.
    let k = 8.min(data.ids.len() as i64);
    let side = lb.cfg.autoencoder.model.image_size;
    let rows: Vec<Tensor> = [&data.images, &recon, &noisy, &inverted]
        .iter()
        .map(|t| resized(&t.narrow(0, 0, k), side))
        .collect();
    let (rgb, h, w) = crate::report::grid::grid_rgb(&Tensor::cat(&rows, 0), k);
    crate::util::fsio::atomic_write(
        &out.join("grid.png"),
        &crate::report::grid::png(&rgb, w, h)?,
    )?;
    Ok(m)
}
