//! The denoising U-Net of the diffusion generator (Ho et al. 2020; Nichol & Dhariwal
//! 2021): residual blocks that take a time embedding (plus the caption's global vector),
//! text cross-attention at low resolutions (Rombach et al. 2022), skip connections
//! between the down and up paths. It predicts ε or v for a noisy image at a time step;
//! the noise schedule lives in [`super::diffusion`], not here.

use crate::nn::attention::Attention;
use crate::util::draws;
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UNetConfig {
    /// Channels at each resolution, from full size down; the image is halved between
    /// levels, so the side must divide by 2^(len − 1).
    pub channels: Vec<i64>,
    /// Levels whose side is at most this cross-attend to the caption tokens.
    #[serde(default = "d_attn")]
    pub attention_max_side: i64,
    #[serde(default)]
    pub dropout: f64,
}
fn d_attn() -> i64 {
    8
}

fn group_norm(p: nn::Path, ch: i64) -> nn::GroupNorm {
    let g = [8, 4, 2, 1]
        .into_iter()
        .find(|g| ch % g == 0)
        .expect("1 divides everything");
    nn::group_norm(p, g, ch, Default::default())
}

fn conv3(p: nn::Path, cin: i64, cout: i64, stride: i64) -> nn::Conv2D {
    nn::conv2d(
        p,
        cin,
        cout,
        3,
        nn::ConvConfig {
            padding: 1,
            stride,
            ..Default::default()
        },
    )
}

/// The frequencies of a sinusoidal time embedding of width `dim`.
fn timestep_frequencies(dim: i64, device: tch::Device) -> Tensor {
    let half = dim / 2;
    (Tensor::arange(half, (Kind::Float, device)) * (-(10_000f64.ln()) / half as f64)).exp()
}

/// Sinusoidal embedding of (continuous) time steps `(B,)` → `(B, 2·len(freqs))`.
pub fn timestep_embedding(t: &Tensor, freqs: &Tensor) -> Tensor {
    // `to_dtype` keeps a traced denoiser free of the device it was traced on.
    let args = t.to_dtype(Kind::Float, false, false).unsqueeze(1) * freqs.unsqueeze(0);
    Tensor::cat(&[args.cos(), args.sin()], 1)
}

#[derive(Debug)]
struct ResBlock {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    emb: nn::Linear,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    skip: Option<nn::Conv2D>,
    dropout: f64,
}

impl ResBlock {
    fn new(p: nn::Path, cin: i64, cout: i64, emb_dim: i64, dropout: f64) -> Self {
        // The last conv starts at zero, so every block starts as the identity.
        let zero = nn::ConvConfig {
            padding: 1,
            ws_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        ResBlock {
            norm1: group_norm(&p / "norm1", cin),
            conv1: conv3(&p / "conv1", cin, cout, 1),
            emb: nn::linear(&p / "emb", emb_dim, 2 * cout, Default::default()),
            norm2: group_norm(&p / "norm2", cout),
            conv2: nn::conv2d(&p / "conv2", cout, cout, 3, zero),
            skip: (cin != cout).then(|| nn::conv2d(&p / "skip", cin, cout, 1, Default::default())),
            dropout,
        }
    }

    fn forward(&self, x: &Tensor, emb: &Tensor, train: bool) -> Tensor {
        let h = x.apply(&self.norm1).silu().apply(&self.conv1);
        // Scale-shift conditioning on time + caption (the "adaptive group norm" of
        // improved DDPM).
        let ss = self.emb.forward(&emb.silu()).unsqueeze(-1).unsqueeze(-1);
        let parts = ss.chunk(2, 1);
        let h = h.apply(&self.norm2) * (&parts[0] + 1.0) + &parts[1];
        let h = draws::dropout(&h.silu(), self.dropout, train).apply(&self.conv2);
        match &self.skip {
            Some(s) => x.apply(s) + h,
            None => x + h,
        }
    }
}

/// Image positions attend to the caption tokens.
#[derive(Debug)]
struct CrossAttention {
    ln: nn::LayerNorm,
    attn: Attention,
}

impl CrossAttention {
    fn new(p: nn::Path, ch: i64, text_dim: i64) -> Self {
        let heads = if ch % 4 == 0 { 4 } else { 1 };
        CrossAttention {
            ln: nn::layer_norm(&p / "ln", vec![ch], Default::default()),
            attn: Attention::new(&p / "attn", ch, text_dim, heads, 0.0),
        }
    }

    fn forward(&self, x: &Tensor, tokens: &Tensor, mask: &Tensor) -> Tensor {
        let (_, _, h, w) = x.size4().expect("images are (N, C, H, W)");
        let seq = x.flatten(2, 3).transpose(1, 2);
        let a = self.attn.forward_masked(
            &self.ln.forward(&seq),
            Some(tokens),
            false,
            None,
            Some(mask),
            false,
        );
        (seq + a).transpose(1, 2).unflatten(2, [h, w])
    }
}

#[derive(Debug)]
struct Level {
    res: ResBlock,
    attn: Option<CrossAttention>,
}

impl Level {
    fn forward(
        &self,
        x: &Tensor,
        emb: &Tensor,
        tokens: &Tensor,
        mask: &Tensor,
        train: bool,
    ) -> Tensor {
        let h = self.res.forward(x, emb, train);
        match &self.attn {
            Some(a) => a.forward(&h, tokens, mask),
            None => h,
        }
    }
}

#[derive(Debug)]
pub struct UNet {
    pub cfg: UNetConfig,
    /// Built once, not per call: a traced copy then holds them as a constant that
    /// moves with the module to another device.
    time_freqs: Tensor,
    time_mlp: (nn::Linear, nn::Linear),
    cond_proj: nn::Linear,
    conv_in: nn::Conv2D,
    down: Vec<Level>,
    downsample: Vec<nn::Conv2D>,
    mid: (ResBlock, CrossAttention, ResBlock),
    up: Vec<Level>,
    upsample: Vec<nn::Conv2D>,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl UNet {
    /// `cond` is the width of the caption vector, `text_dim` of its tokens.
    pub fn new(p: nn::Path, cfg: &UNetConfig, image_size: i64, cond: i64, text_dim: i64) -> Self {
        let ch = &cfg.channels;
        let c0 = ch[0];
        let emb_dim = 4 * c0;
        let mut down = vec![];
        let mut downsample = vec![];
        let mut cin = c0;
        let mut side = image_size;
        for (i, &c) in ch.iter().enumerate() {
            let attend = side <= cfg.attention_max_side;
            down.push(Level {
                res: ResBlock::new(&p / "down" / i, cin, c, emb_dim, cfg.dropout),
                attn: attend.then(|| CrossAttention::new(&p / "down_attn" / i, c, text_dim)),
            });
            if i + 1 < ch.len() {
                downsample.push(conv3(&p / "downsample" / i, c, c, 2));
                side /= 2;
            }
            cin = c;
        }
        let cm = *ch.last().expect("channels checked non-empty");
        let mid = (
            ResBlock::new(&p / "mid1", cm, cm, emb_dim, cfg.dropout),
            CrossAttention::new(&p / "mid_attn", cm, text_dim),
            ResBlock::new(&p / "mid2", cm, cm, emb_dim, cfg.dropout),
        );
        let mut up = vec![];
        let mut upsample = vec![];
        for (j, i) in (0..ch.len()).rev().enumerate() {
            let attend = side <= cfg.attention_max_side;
            up.push(Level {
                res: ResBlock::new(&p / "up" / j, cin + ch[i], ch[i], emb_dim, cfg.dropout),
                attn: attend.then(|| CrossAttention::new(&p / "up_attn" / j, ch[i], text_dim)),
            });
            cin = ch[i];
            if i > 0 {
                upsample.push(conv3(&p / "upsample" / j, cin, cin, 1));
                side *= 2;
            }
        }
        UNet {
            cfg: cfg.clone(),
            time_freqs: timestep_frequencies(c0, p.device()),
            time_mlp: (
                nn::linear(&p / "time1", c0, emb_dim, Default::default()),
                nn::linear(&p / "time2", emb_dim, emb_dim, Default::default()),
            ),
            cond_proj: nn::linear(&p / "cond", cond, emb_dim, Default::default()),
            conv_in: conv3(&p / "conv_in", 3, c0, 1),
            down,
            downsample,
            mid,
            up,
            upsample,
            norm_out: group_norm(&p / "norm_out", c0),
            conv_out: nn::conv2d(
                &p / "conv_out",
                c0,
                3,
                3,
                nn::ConvConfig {
                    padding: 1,
                    ws_init: nn::Init::Const(0.0),
                    ..Default::default()
                },
            ),
        }
    }

    /// The network's prediction for noisy images `x` `(B, 3, S, S)` at time steps `t`
    /// `(B,)` given the caption (global vector, tokens, token mask).
    #[allow(clippy::too_many_arguments)] // the U-Net's inputs are these, each distinct
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &Tensor,
        tokens: &Tensor,
        mask: &Tensor,
        train: bool,
    ) -> Tensor {
        let temb = timestep_embedding(t, &self.time_freqs)
            .apply(&self.time_mlp.0)
            .silu()
            .apply(&self.time_mlp.1);
        let emb = temb + self.cond_proj.forward(cond);
        let mut h = x.apply(&self.conv_in);
        let mut skips = vec![];
        for (i, lvl) in self.down.iter().enumerate() {
            h = lvl.forward(&h, &emb, tokens, mask, train);
            skips.push(h.shallow_clone());
            if let Some(d) = self.downsample.get(i) {
                h = h.apply(d);
            }
        }
        h = self.mid.0.forward(&h, &emb, train);
        h = self.mid.1.forward(&h, tokens, mask);
        h = self.mid.2.forward(&h, &emb, train);
        for (j, lvl) in self.up.iter().enumerate() {
            let skip = skips.pop().expect("one skip per level");
            h = lvl.forward(&Tensor::cat(&[&h, &skip], 1), &emb, tokens, mask, train);
            if let Some(u) = self.upsample.get(j) {
                let (_, _, hh, ww) = h.size4().expect("images are (N, C, H, W)");
                h = h.upsample_nearest2d([hh * 2, ww * 2], None, None).apply(u);
            }
        }
        h.apply(&self.norm_out).silu().apply(&self.conv_out)
    }
}
