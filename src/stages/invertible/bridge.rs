//! The invertible bridge's half of the stage: training f on captioning alone,
//! f(E_I(image)) ≈ E_T(caption), with the autoencoder and the sentence embedder frozen; its
//! errors; and the trained bridge read back to paint by inversion.

use super::*;

/// The bridge's variables: f, and the latent statistics used to standardise E_I(x).
pub struct Bridge {
    pub f: InvertibleMlp,
    mean: Tensor,
    std: Tensor,
}

impl Bridge {
    fn new(p: &nn::Path, cfg: &InvertibleConfig) -> Self {
        Bridge {
            f: InvertibleMlp::new(p / "f", cfg),
            mean: p.zeros_no_train("latent_mean", &[cfg.dim]),
            std: p.ones_no_train("latent_std", &[cfg.dim]),
        }
    }
    pub fn standardise(&self, z: &Tensor) -> Tensor {
        (z - &self.mean) / &self.std
    }
    pub fn unstandardise(&self, z: &Tensor) -> Tensor {
        z * &self.std + &self.mean
    }
}

pub(super) struct BridgeTraining {
    vs: nn::VarStore,
    bridge: Bridge,
    z_train: Tensor,
    y_train: Tensor,
    z_val: Tensor,
    y_val: Tensor,
    bidirectional: f64,
    batch: usize,
    seed: u64,
}

impl Trainable for BridgeTraining {
    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
    fn loss(&mut self, micro: u64) -> Result<Tensor> {
        let n = self.z_train.size()[0] as usize;
        let idx = Tensor::from_slice(&batch_indices(n, self.batch, self.seed, micro))
            .to_device(self.z_train.device());
        let (z, y) = (
            self.z_train.index_select(0, &idx),
            self.y_train.index_select(0, &idx),
        );
        let mut loss = (self.bridge.f.forward(&z) - &y).square().mean(Kind::Float);
        if self.bidirectional > 0.0 {
            let back = (self.bridge.f.inverse(&y) - &z).square().mean(Kind::Float);
            loss += back * self.bidirectional;
        }
        Ok(loss)
    }
    fn evaluate(&mut self, _step: u64, _tb: &mut EventWriter) -> Result<BTreeMap<String, f64>> {
        Ok(tch::no_grad(|| {
            bridge_errors(&self.bridge.f, &self.z_val, &self.y_val)
        }))
    }
}

/// Forward error (the captioning objective), inversion error of the true embedding, and
/// the numerical round-trip error ‖f⁻¹(f(z)) − z‖∞.
pub(super) fn bridge_errors(f: &InvertibleMlp, z: &Tensor, y: &Tensor) -> BTreeMap<String, f64> {
    let pred = f.forward(z);
    let mse = |a: &Tensor, b: &Tensor| (a - b).square().mean(Kind::Float).double_value(&[]);
    BTreeMap::from([
        ("forward_mse".to_string(), mse(&pred, y)),
        ("inverse_mse".to_string(), mse(&f.inverse(y), z)),
        (
            "roundtrip_max_error".to_string(),
            (f.inverse(&pred) - z).abs().max().double_value(&[]),
        ),
    ])
}

#[allow(clippy::too_many_arguments)] // the two trained halves and their data, each distinct
pub(super) fn train_bridge(
    cfg: &InvertibleStageConfig,
    run_dir: &Path,
    resume: bool,
    device: Device,
    embedder: &SentenceEmbedder,
    ae: &Autoencoder,
    train_split: &SplitData,
    val_split: &SplitData,
) -> Result<()> {
    // 2. The bridge, on frozen latents and frozen sentence embeddings computed once.
    crate::util::progress::note(format!(
        "invertible 2/2: the bridge f, {} layers of {} dims",
        cfg.bridge.layers,
        embedder.dim()
    ));
    let dim = embedder.dim();
    let z_train = encode_all(ae, &train_split.images, device);
    let z_val = encode_all(ae, &val_split.images, device);
    let y_train = embedder.embed(&train_split.captions, device)?;
    let y_val = embedder.embed(&val_split.captions, device)?;
    tch::manual_seed(cfg.seed as i64 + 1);
    let vs = nn::VarStore::new(device);
    let bridge = Bridge::new(&vs.root(), &bridge_config(cfg, dim));
    tch::no_grad(|| {
        bridge
            .mean
            .shallow_clone()
            .copy_(&z_train.mean_dim(0, false, Kind::Float));
        bridge
            .std
            .shallow_clone()
            .copy_(&z_train.std_dim(0, true, false).clamp_min(1e-4));
    });
    let bridge_dir = run_dir.join("bridge");
    let opts = RunOptions {
        run_dir: bridge_dir.clone(),
        resume: resume && crate::train::checkpoint::exists(&bridge_dir, "latest"),
        seed: cfg.seed,
        arch: serde_json::to_value(bridge_config(cfg, dim))?,
        tokenizer_hash: embedder.tokenizer().hash.clone(),
        best: BestMetric {
            name: "forward_mse".into(),
            higher_is_better: false,
        },
        config_yaml: crate::config::to_yaml(&cfg.bridge)?,
    };
    let mut stage = BridgeTraining {
        z_train: bridge.standardise(&z_train),
        z_val: bridge.standardise(&z_val),
        vs,
        bridge,
        y_train,
        y_val,
        bidirectional: cfg.bridge.bidirectional,
        batch: cfg.bridge.train.batch_size,
        seed: cfg.seed,
    };
    let s = runner::run(&mut stage, &cfg.bridge.train, &opts)?;
    crate::stages::write_done(&bridge_dir, &s)?;
    crate::stages::write_done(run_dir, &s)
}

/// A trained bridge ready to paint: the autoencoder, f, and the sentence embedder.
pub struct LoadedBridge {
    pub cfg: InvertibleStageConfig,
    _ae_vs: nn::VarStore,
    pub(super) ae: Autoencoder,
    _vs: nn::VarStore,
    pub bridge: Bridge,
    pub embedder: SentenceEmbedder,
    device: Device,
}

pub fn load_run(run_dir: &Path, device: Device) -> Result<LoadedBridge> {
    let cfg: InvertibleStageConfig = crate::stages::run_config(run_dir, "invertible")?;
    let embedder = SentenceEmbedder::load(&cfg.text_embedder, device)?;
    validate(&cfg, embedder.dim())?;
    let (ae_vs, ae) = build_ae(&cfg.autoencoder.model, device);
    crate::train::checkpoint::load_weights(&ae_vs, &run_dir.join("autoencoder"), "best", None)?;
    let vs = nn::VarStore::new(device);
    let bridge = Bridge::new(&vs.root(), &bridge_config(&cfg, embedder.dim()));
    crate::train::checkpoint::load_weights(
        &vs,
        &run_dir.join("bridge"),
        "best",
        Some(&embedder.tokenizer().hash),
    )?;
    Ok(LoadedBridge {
        cfg,
        _ae_vs: ae_vs,
        ae,
        _vs: vs,
        bridge,
        embedder,
        device,
    })
}

impl LoadedBridge {
    /// Images (uint8) for texts by inversion: D_I(f⁻¹(E_T(text))).
    pub fn draw(&self, texts: &[String]) -> Result<Tensor> {
        let y = self.embedder.embed(texts, self.device)?;
        Ok(tch::no_grad(|| {
            let z = self.bridge.unstandardise(&self.bridge.f.inverse(&y));
            to_u8(&self.ae.decode(&z))
        }))
    }

    /// The seed's finding: invert f(E_I(x)) + N(0, σ²) instead of a caption's embedding.
    pub(super) fn reinvert(&self, images: &Tensor, sigma: f64) -> Tensor {
        let z = self
            .bridge
            .standardise(&encode_all(&self.ae, images, self.device));
        tch::no_grad(|| {
            let y = self.bridge.f.forward(&z);
            let y = &y + y.randn_like() * sigma;
            to_u8(
                &self
                    .ae
                    .decode(&self.bridge.unstandardise(&self.bridge.f.inverse(&y))),
            )
        })
    }

    pub(super) fn reconstruct(&self, images: &Tensor) -> Tensor {
        let z = encode_all(&self.ae, images, self.device);
        tch::no_grad(|| to_u8(&self.ae.decode(&z)))
    }
}
