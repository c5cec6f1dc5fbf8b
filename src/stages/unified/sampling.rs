//! Sampling the unified generator: one seed → one latent → an image and its paragraph
//! (`MultimodalGenerator`), and the batched `Sampler` the evaluation and `generate` use.

use super::*;

/// One prior sample: the seed, its image (uint8 `(3, S, S)`) and its caption.
pub struct Sample {
    pub seed: u64,
    pub image: Tensor,
    pub caption: String,
}

/// The Multimodal Art Generator's `MultimodalGenerator`: one seed in, an image and its caption out, the
/// same for the same seed.
pub struct MultimodalGenerator {
    pub model: Unified,
    pub tok: TextTokenizer,
    pub decode: DecodeOptions,
    pub scene: SceneChoice,
    pub run: PathBuf,
    device: Device,
    _vs: nn::VarStore,
}

impl MultimodalGenerator {
    pub fn load(run_dir: &Path, device: Device) -> Result<Self> {
        let cfg: UnifiedStageConfig = crate::stages::run_config(run_dir, "unified")?;
        let ds = Dataset::open(&cfg.data)?;
        let tok = TextTokenizer::load(&ds.tokenizer_path())?;
        let (vs, model) = build(&cfg.model, &tok, device)?;
        crate::train::checkpoint::load_weights(&vs, run_dir, "best", Some(&tok.hash))?;
        Ok(MultimodalGenerator {
            model,
            tok,
            decode: cfg.eval.decode,
            scene: cfg.eval.scene,
            run: run_dir.to_path_buf(),
            device,
            _vs: vs,
        })
    }

    /// Reads each sample's scene `scene`'s way from now on (`--scene`); only a facts
    /// model reads a scene.
    pub fn set_scene(&mut self, scene: SceneChoice) -> Result<()> {
        if !self.model.cfg.facts {
            bail!(
                "--scene: {} does not read a scene off its latent (model.facts is off)",
                self.run.display()
            );
        }
        self.scene = scene;
        Ok(())
    }

    /// The borrowed sampler behind the API.
    pub fn sampler(&self) -> Sampler<'_> {
        Sampler {
            model: &self.model,
            tok: &self.tok,
            decode: &self.decode,
            scene: self.scene,
            device: self.device,
        }
    }

    pub fn generate(&self, seed: u64) -> Sample {
        self.generate_batch(&[seed])
            .pop()
            .expect("one seed, one sample")
    }

    pub fn generate_batch(&self, seeds: &[u64]) -> Vec<Sample> {
        self.sampler().generate_batch(seeds)
    }

    /// A sample and what made it: seed, caption, model run, decoding settings.
    pub fn generate_with_metadata(&self, seed: u64) -> (Sample, serde_json::Value) {
        let s = self.generate(seed);
        let meta = self.metadata(&s);
        (s, meta)
    }

    pub fn metadata(&self, s: &Sample) -> serde_json::Value {
        serde_json::json!({
            "seed": s.seed,
            "caption": s.caption,
            "model": self.run.display().to_string(),
            "latent_dim": self.model.cfg.latent_dim,
            "decoding": self.decode,
            "scene": self.model.cfg.facts.then_some(self.scene),
        })
    }
}

/// Prior sampling with borrowed parts (the training loop samples without owning them).
pub struct Sampler<'a> {
    pub model: &'a Unified,
    pub tok: &'a TextTokenizer,
    pub decode: &'a DecodeOptions,
    pub scene: SceneChoice,
    pub device: Device,
}

impl Sampler<'_> {
    /// The latent of a seed and the noise its scene is drawn with: drawn on the CPU
    /// from the seed's own generator state, so a seed gives the same sample alone or in
    /// a batch, on any device. The latent comes first, so it does not depend on the
    /// scene choice.
    fn latent(&self, seed: u64) -> (Tensor, Tensor) {
        tch::manual_seed(seed as i64);
        let z = Tensor::randn([1, self.model.cfg.latent_dim], (Kind::Float, Device::Cpu));
        let u = Tensor::rand([1, Unified::SCENE_NOISE], (Kind::Float, Device::Cpu));
        (z, gumbel(&u))
    }

    pub fn generate_batch(&self, seeds: &[u64]) -> Vec<Sample> {
        if seeds.is_empty() {
            return vec![];
        }
        let (z, noise): (Vec<Tensor>, Vec<Tensor>) = seeds.iter().map(|&s| self.latent(s)).unzip();
        let z = Tensor::cat(&z, 0).to_device(self.device);
        let noise = Tensor::cat(&noise, 0).to_device(self.device);
        let (images, ids) = tch::no_grad(|| {
            let draw = (self.scene == SceneChoice::Sampled).then_some(&noise);
            let scene = self.model.latent_facts(&z, draw);
            let images = to_u8(&self.model.paint(&z, scene.as_ref()));
            let ids = self.model.captioner.generate_from_context(
                &self.model.caption_context(&z, scene.as_ref()),
                self.decode,
                self.tok.bos,
                self.tok.eos,
                self.tok.pad,
            );
            (images, ids)
        });
        seeds
            .iter()
            .zip(ids)
            .enumerate()
            .map(|(i, (&seed, ids))| Sample {
                seed,
                image: images.get(i as i64),
                caption: self.tok.decode(&ids),
            })
            .collect()
    }
}
