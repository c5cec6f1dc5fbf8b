//! Diffusion's conditioning: the learned null condition, caption dropout, and
//! classifier-free guidance (Ho & Salimans 2022) around the U-Net's output.

use super::*;

impl TextToImage {
    /// The diffusion model's null condition for `b` rows (one token).
    pub(super) fn null_condition(&self, b: i64) -> Option<Condition> {
        let Body::Diffusion { null_global, .. } = &self.body else {
            return None;
        };
        self.null_condition_like(&null_global.view([1, -1]).expand([b, -1], false))
    }

    /// Replaces the condition of the rows where `drop` is true by the null condition
    /// (caption dropout, which teaches the unconditional model guidance needs).
    pub(super) fn drop_captions(&self, c: Condition, drop: &Tensor) -> Condition {
        let (b, l, d) = c.tokens.size3().expect("tokens are (B, L, D)");
        let null = self
            .null_condition(b)
            .expect("diffusion has a null condition");
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

    /// The model's output for noisy images at step `t` with classifier-free guidance
    /// `scale` (diffusion only). Scale 1 runs the conditional model alone.
    /// `None` for the other kinds.
    pub fn denoise(&self, x: &Tensor, t: i64, cond: &Condition, scale: f64) -> Option<Tensor> {
        let Body::Diffusion { unet, .. } = &self.body else {
            return None;
        };
        Some(self.guided(unet, x, t, cond, scale))
    }

    pub(super) fn guided(
        &self,
        unet: &UNet,
        x: &Tensor,
        t: i64,
        cond: &Condition,
        scale: f64,
    ) -> Tensor {
        let b = x.size()[0];
        let tt = Tensor::full([b], t, (Kind::Int64, x.device()));
        let out = unet.forward(x, &tt, &cond.global, &cond.tokens, &cond.mask, false);
        if scale == 1.0 {
            return out;
        }
        let null = self
            .null_condition(b)
            .expect("a diffusion body has a null condition");
        let un = unet.forward(x, &tt, &null.global, &null.tokens, &null.mask, false);
        diffusion::guide(&out, &un, scale)
    }

    /// Sampling settings of a diffusion model (sampler, steps, guidance, η), for `draw`.
    pub fn diffusion_mut(&mut self) -> Option<&mut DiffusionConfig> {
        match &mut self.body {
            Body::Diffusion { schedule, .. } => Some(&mut schedule.cfg),
            _ => None,
        }
    }

    /// The diffusion U-Net's conditional output at time steps `t` `(B,)`, a tensor (a
    /// trace keeps it an input). `None` for the other kinds.
    pub fn denoise_at(&self, x: &Tensor, t: &Tensor, cond: &Condition) -> Option<Tensor> {
        let Body::Diffusion { unet, .. } = &self.body else {
            return None;
        };
        Some(unet.forward(x, t, &cond.global, &cond.tokens, &cond.mask, false))
    }

    /// The null condition with the rows of `global` `(B, D)`, in tensor operations only
    /// (the export traces it). `None` for the other kinds.
    pub fn null_condition_like(&self, global: &Tensor) -> Option<Condition> {
        let Body::Diffusion {
            null_global,
            null_token,
            ..
        } = &self.body
        else {
            return None;
        };
        let row = global.narrow(1, 0, 1); // (B, 1)
        Some(Condition {
            global: null_global.unsqueeze(0).expand_as(global),
            tokens: null_token.view([1, 1, -1]) + row.unsqueeze(-1).zeros_like(),
            mask: row.ones_like().to_kind(Kind::Bool),
        })
    }
}
