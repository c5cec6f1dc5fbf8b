//! The diffusion body: the U-Net and its schedule, the learned null condition, caption
//! dropout, and classifier-free guidance (Ho & Salimans 2022) around the U-Net's output.

use super::*;

pub struct DiffusionBody {
    pub(super) unet: UNet,
    pub(super) schedule: Schedule,
    /// The learned null condition of classifier-free guidance: a global vector and one
    /// token.
    null_global: Tensor,
    null_token: Tensor,
}

impl DiffusionBody {
    pub(super) fn new(p: &nn::Path, cfg: &T2IConfig) -> Result<Self> {
        let u = need(&cfg.unet, "diffusion", "unet")?;
        let levels = u.channels.len() as u32;
        if u.channels.is_empty() || cfg.image_size % (1 << (levels - 1)) != 0 {
            bail!(
                "model.unet.channels: {levels} levels halve {} px {} times; it must divide evenly",
                cfg.image_size,
                levels.saturating_sub(1)
            );
        }
        if u.channels[0] % 2 != 0 {
            bail!(
                "model.unet.channels[0] = {} must be even: the time embedding is its sines and cosines, half each",
                u.channels[0]
            );
        }
        let d = cfg.diffusion.clone().unwrap_or_default();
        if d.timesteps < 2 || d.sample_steps < 1 || d.sample_steps > d.timesteps {
            bail!("model.diffusion: timesteps must be ≥ 2 and sample_steps from 1 to timesteps");
        }
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        // In the order the variables were always drawn: the U-Net, then the null pair.
        let unet = UNet::new(p / "unet", u, cfg.image_size, cfg.text.dim, cfg.text.dim);
        let schedule = Schedule::new(&d);
        let null_global = p.var("null_global", &[cfg.text.dim], init);
        let null_token = p.var("null_token", &[cfg.text.dim], init);
        Ok(DiffusionBody {
            unet,
            schedule,
            null_global,
            null_token,
        })
    }

    /// The null condition for `b` rows (one token).
    fn null_condition(&self, b: i64) -> Condition {
        self.null_condition_like(&self.null_global.view([1, -1]).expand([b, -1], false))
    }

    /// Replaces the condition of the rows where `drop` is true by the null condition
    /// (caption dropout, which teaches the unconditional model guidance needs).
    fn drop_captions(&self, c: Condition, drop: &Tensor) -> Condition {
        let (b, l, d) = c.tokens.size3().expect("tokens are (B, L, D)");
        let null = self.null_condition(b);
        let first = Tensor::arange(l, (Kind::Int64, c.mask.device()))
            .eq(0)
            .view([1, l])
            .expand([b, l], false);
        Condition {
            // `a.where_self(cond, b)` is torch.where(cond, a, b).
            global: null.global.where_self(&drop.view([b, 1]), &c.global),
            tokens: null
                .tokens
                .expand([b, l, d], false)
                .where_self(&drop.view([b, 1, 1]), &c.tokens),
            mask: first.where_self(&drop.view([b, 1]), &c.mask),
        }
    }

    /// The output for noisy images at step `t` with classifier-free guidance `scale`.
    /// Scale 1 runs the conditional model alone.
    pub(super) fn guided(&self, x: &Tensor, t: i64, cond: &Condition, scale: f64) -> Tensor {
        let b = x.size()[0];
        let tt = Tensor::full([b], t, (Kind::Int64, x.device()));
        let out = self
            .unet
            .forward(x, &tt, &cond.global, &cond.tokens, &cond.mask, false);
        if scale == 1.0 {
            return out;
        }
        let null = self.null_condition(b);
        let un = self
            .unet
            .forward(x, &tt, &null.global, &null.tokens, &null.mask, false);
        diffusion::guide(&out, &un, scale)
    }

    /// The null condition with the rows of `global` `(B, D)`, in tensor operations only
    /// (the export traces it).
    pub(super) fn null_condition_like(&self, global: &Tensor) -> Condition {
        let row = global.narrow(1, 0, 1); // (B, 1)
        Condition {
            global: self.null_global.unsqueeze(0).expand_as(global),
            tokens: self.null_token.view([1, 1, -1]) + row.unsqueeze(-1).zeros_like(),
            mask: row.ones_like().to_kind(Kind::Bool),
        }
    }
}

impl Body for DiffusionBody {
    fn loss_terms(&self, images: &Tensor, c: Condition, _step: u64) -> Result<BodyLoss> {
        let b = images.size()[0];
        let p = self.schedule.cfg.caption_dropout;
        let drop = draws::uniform(&[b], images.device()).lt(p);
        let c = self.drop_captions(c, &drop);
        let (t, xt, target) = self.schedule.training_example(images);
        let out = self
            .unet
            .forward(&xt, &t, &c.global, &c.tokens, &c.mask, true);
        Ok(BodyLoss {
            terms: vec![("denoise", (out - target).square().mean(Kind::Float))],
            painted: None,
        })
    }
    fn sample(&self, c: &Condition, z: &Tensor) -> Tensor {
        let scale = self.schedule.cfg.guidance;
        self.schedule
            .sample(z.shallow_clone(), |x, t| self.guided(x, t, c, scale))
    }
    fn diffusion(&self) -> Option<&DiffusionBody> {
        Some(self)
    }
    fn diffusion_mut(&mut self) -> Option<&mut DiffusionBody> {
        Some(self)
    }
}

impl TextToImage {
    /// The model's output for noisy images at step `t` with classifier-free guidance
    /// `scale` (diffusion only). Scale 1 runs the conditional model alone.
    /// `None` for the other kinds.
    pub fn denoise(&self, x: &Tensor, t: i64, cond: &Condition, scale: f64) -> Option<Tensor> {
        Some(self.body.diffusion()?.guided(x, t, cond, scale))
    }

    /// Sampling settings of a diffusion model (sampler, steps, guidance, η), for `draw`.
    pub fn diffusion_mut(&mut self) -> Option<&mut DiffusionConfig> {
        Some(&mut self.body.diffusion_mut()?.schedule.cfg)
    }

    /// The diffusion U-Net's conditional output at time steps `t` `(B,)`, a tensor (a
    /// trace keeps it an input). `None` for the other kinds.
    pub fn denoise_at(&self, x: &Tensor, t: &Tensor, cond: &Condition) -> Option<Tensor> {
        let d = self.body.diffusion()?;
        Some(
            d.unet
                .forward(x, t, &cond.global, &cond.tokens, &cond.mask, false),
        )
    }

    /// The null condition with the rows of `global` `(B, D)`, in tensor operations only
    /// (the export traces it). `None` for the other kinds.
    pub fn null_condition_like(&self, global: &Tensor) -> Option<Condition> {
        Some(self.body.diffusion()?.null_condition_like(global))
    }
}
