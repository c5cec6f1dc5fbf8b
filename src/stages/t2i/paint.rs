//! Drawing: one [`Painter`] interface over the trainer's model and the exported one,
//! seeded noise in batches, `draw`'s diffusion sampling overrides, and the PNG files and
//! grid it writes.

use super::*;

/// What drawing needs from a text → image model. The trainer's model and the exported
/// TorchScript one both implement it, so they draw through the same code.
pub trait Painter {
    /// The condition of caption token rows (`pad` is the tokenizer's padding id).
    fn condition_of(&self, tokens: &Tensor, pad: i64) -> Result<Condition>;
    /// The starting noise of `n` samples.
    fn noise_of(&self, n: i64, device: Device) -> Tensor;
    /// Images in [-1, 1], one per row of `cond`, from the noise `z`.
    fn paint(&self, cond: &Condition, z: &Tensor) -> Result<Tensor>;
}

impl Painter for TextToImage {
    fn condition_of(&self, tokens: &Tensor, pad: i64) -> Result<Condition> {
        Ok(self.condition(tokens, pad, false))
    }
    fn noise_of(&self, n: i64, device: Device) -> Tensor {
        self.noise(n, device)
    }
    fn paint(&self, cond: &Condition, z: &Tensor) -> Result<Tensor> {
        Ok(self.sample(cond, z))
    }
}

/// Draws one image per caption row of `tokens` (uint8 out), with noise seeded by `seed`.
pub fn draw_tokens(
    model: &TextToImage,
    tokens: &Tensor,
    pad: i64,
    per_caption: i64,
    seed: i64,
    device: Device,
) -> Tensor {
    paint_tokens(model, tokens, pad, per_caption, seed, device)
        .expect("the trainer's generator returns no errors while drawing")
}

/// [`draw_tokens`] for any [`Painter`]: `per_caption` images per caption row, in
/// batches of 64 captions, noise seeded by `seed`.
pub fn paint_tokens(
    model: &impl Painter,
    tokens: &Tensor,
    pad: i64,
    per_caption: i64,
    seed: i64,
    device: Device,
) -> Result<Tensor> {
    tch::no_grad(|| {
        let n = tokens.size()[0];
        let mut out = vec![];
        let mut s = 0;
        tch::manual_seed(seed);
        while s < n {
            let len = 64.min(n - s);
            let cond = model
                .condition_of(&tokens.narrow(0, s, len).to_device(device), pad)?
                .repeat(per_caption);
            let z = model.noise_of(len * per_caption, device);
            out.push(to_u8(&model.paint(&cond, &z)?));
            s += len;
        }
        Ok(Tensor::cat(&out, 0))
    })
}

/// `draw`'s diffusion sampling options; each replaces the run's setting when given.
#[derive(Debug, Default)]
pub struct SamplingOverrides {
    pub sampler: Option<Sampler>,
    pub sample_steps: Option<i64>,
    pub guidance: Option<f64>,
    pub eta: Option<f64>,
}

impl SamplingOverrides {
    /// Applies the overrides to a diffusion model's settings (`None`: not diffusion).
    pub fn apply(&self, settings: Option<&mut DiffusionConfig>) -> Result<()> {
        let given = self.sampler.is_some()
            || self.sample_steps.is_some()
            || self.guidance.is_some()
            || self.eta.is_some();
        let Some(d) = settings else {
            if given {
                bail!("--sampler/--sample-steps/--guidance/--eta apply to diffusion runs only");
            }
            return Ok(());
        };
        if let Some(s) = self.sampler {
            d.sampler = s;
        }
        if let Some(n) = self.sample_steps {
            if !(1..=d.timesteps).contains(&n) {
                bail!(
                    "--sample-steps {n}: give 1 to {} (the timesteps the model was trained with)",
                    d.timesteps
                );
            }
            d.sample_steps = n;
        }
        if let Some(g) = self.guidance {
            if !(0.0..=crate::config::MAX_GUIDANCE).contains(&g) {
                bail!(
                    "--guidance {g}: give a scale from 0 to {} (1 = the conditional model alone)",
                    crate::config::MAX_GUIDANCE
                );
            }
            d.guidance = g;
        }
        if let Some(e) = self.eta {
            if !(0.0..=1.0).contains(&e) {
                bail!("--eta {e}: give a number from 0 (deterministic DDIM) to 1");
            }
            d.eta = e;
        }
        Ok(())
    }
}

/// What `draw` paints: each text `n` times, noise seeded by `seed`, with the diffusion
/// sampling overrides.
pub struct DrawRequest<'a> {
    pub texts: &'a [String],
    pub n: i64,
    pub seed: i64,
    pub sampling: &'a SamplingOverrides,
}

/// `draw --run`: the uint8 images of `req` from a trained run, `n` per text in order.
pub fn draw(run_dir: &Path, req: &DrawRequest, device: Device) -> Result<Tensor> {
    let mut lt = load_run(run_dir, device)?;
    req.sampling.apply(lt.model.diffusion_mut())?;
    let tokens = tokens_for(&lt.tok, req.texts, lt.cfg.model.text.max_len as usize)?;
    Ok(draw_tokens(
        &lt.model, &tokens, lt.tok.pad, req.n, req.seed, device,
    ))
}

/// Writes uint8 images `(T·n, 3, S, S)`, n per text, as `caption<T>_noise<i>.png`, and
/// `grid.png` (texts × noises) with `grid`.
pub fn write_drawings(images: &Tensor, n: i64, out: &Path, grid: bool) -> Result<Vec<PathBuf>> {
    let mut paths = vec![];
    let s = images.size()[2] as u32;
    for i in 0..images.size()[0] {
        let rgb: Vec<u8> = Vec::try_from(images.get(i).permute([1, 2, 0]).contiguous().view([-1]))
            .expect("a tensor of the kind we made");
        let p = out.join(format!("caption{:03}_noise{}.png", i / n, i % n));
        crate::util::fsio::atomic_write(&p, &crate::report::grid::png(&rgb, s, s)?)?;
        paths.push(p);
    }
    if grid {
        let (rgb, h, w) = crate::report::grid::grid_rgb(images, n);
        let p = out.join("grid.png");
        crate::util::fsio::atomic_write(&p, &crate::report::grid::png(&rgb, w, h)?)?;
        paths.push(p);
    }
    Ok(paths)
}
