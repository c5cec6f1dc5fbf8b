//! The image → paragraph captioner (Show, Attend and Tell with a
//! Transformer decoder): a CNN or small ViT turns the image into a grid of feature
//! vectors, and a pre-norm Transformer decoder with tied embeddings cross-attends to
//! that grid while writing the paragraph token by token.

pub mod decode;

use crate::models::align::{AlignConfig, AlignImageHeads};
use crate::nn::conv::{default_stem, is_default_stem, total_stride, ConvEncoder};
use crate::nn::transformer::{DecoderLayer, EncoderLayer, LayerCache};
use crate::scenes::fact_words::FactWords;
use crate::scenes::heads::{attribute_loss, AttributeHeads, AttributeLogits};
use crate::util::draws;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderKind {
    Cnn,
    Vit,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptionerConfig {
    pub encoder: EncoderKind,
    /// CNN: channels of each stride-2 stage; the grid is image/2^stages.
    #[serde(default = "default_channels")]
    pub channels: Vec<i64>,
    /// CNN: downsampling of the first stage, 2 (a 3×3 convolution) or a larger patchify
    /// stride (the probe's cheap stem); the grid is then image/(stem·2^(stages-1)).
    #[serde(default = "default_stem", skip_serializing_if = "is_default_stem")]
    pub stem: i64,
    /// ViT: patch side in pixels, and number of encoder layers.
    #[serde(default = "default_patch")]
    pub patch: i64,
    #[serde(default = "default_vit_layers")]
    pub vit_layers: i64,
    /// Width of the decoder (and of the ViT).
    pub dim: i64,
    pub layers: i64,
    pub heads: i64,
    pub mlp: i64,
    /// Longest paragraph in tokens, start and end included.
    pub max_len: i64,
    #[serde(default)]
    pub dropout: f64,
    /// Image side the model is trained for.
    pub image_size: i64,
    /// Set from the tokenizer at build time.
    #[serde(default)]
    pub vocab_size: i64,
    /// Weight of an auxiliary attribute loss: the probe's cell-structured heads
    /// ([`AttributeHeads`]) read the facts of the training paragraph (sky, ground, style,
    /// and each grid cell's object) off the CNN's feature map. It tells the encoder what
    /// the paragraph will need long before the next-token loss does. 0 disables it; it
    /// needs the embedded set's scene metadata and the CNN encoder.
    #[serde(default)]
    pub attribute_weight: f64,
    /// Hidden width of those heads.
    #[serde(default = "default_attribute_hidden")]
    pub attribute_hidden: i64,
    /// A residual 3×3 convolution in the heads before pooling (the probe's heads), so an
    /// object that overflows its cell is still seen whole.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attribute_mix: bool,
    /// The heads' hidden states (one for the scene, one per grid cell) join the grid the
    /// decoder attends to: ten object-level memory tokens, what the paragraph's sentences
    /// are about. Needs `attribute_weight` > 0.
    #[serde(default)]
    pub attribute_context: bool,
    /// The heads' reading also joins the context as words ([`FactWords`]): per cell the
    /// embeddings of its position and of its likely kind, colour and size, for the scene
    /// its sky, ground and style. Needs `attribute_context` and a tokenizer at build time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attribute_words: bool,
    /// The general path's words: this many of the caption words that the align run's
    /// words-as-labels head finds most likely in the image join the context, each its
    /// token embedding weighted by its probability (attributes as words, Wu et al., CVPR
    /// 2016). Needs the stage's `encoder_from` run to have that head; 0 is off.
    #[serde(default, skip_serializing_if = "crate::config::is_default")]
    pub context_words: i64,
    /// The general path's object tokens: the align run's global image vector and its
    /// place vectors (what stands at each place, matched to what the paragraph says
    /// stands there) join the context, projected to the decoder's width. Needs the
    /// stage's `encoder_from`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub context_places: bool,
    /// The `encoder_from` run's model, filled in at build time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aligned: Option<AlignConfig>,
}
fn default_attribute_hidden() -> i64 {
    256
}
fn default_channels() -> Vec<i64> {
    vec![32, 64, 128]
}
fn default_patch() -> i64 {
    8
}
fn default_vit_layers() -> i64 {
    2
}

enum ImageEncoder {
    Cnn {
        conv: ConvEncoder,
        proj: nn::Linear,
    },
    Vit {
        patch: nn::Conv2D,
        layers: Vec<EncoderLayer>,
    },
}

pub struct Captioner {
    pub cfg: CaptionerConfig,
    encoder: ImageEncoder,
    grid_pos: Tensor,
    enc_ln: nn::LayerNorm,
    tok_emb: nn::Embedding,
    pos_emb: Tensor,
    layers: Vec<DecoderLayer>,
    ln_f: nn::LayerNorm,
    /// The auxiliary attribute heads over the CNN's feature map when enabled, and with
    /// `attribute_context` the projection and positions of their hidden states.
    attributes: Option<AttributeHeads>,
    attribute_tokens: Option<(nn::Linear, Tensor)>,
    /// With `attribute_words`: the word table and the ten tokens' positions.
    fact_words: Option<(FactWords, Tensor)>,
    /// With `context_words` or `context_places`: the align run's image heads, the
    /// words' positions, and the places' projection and positions.
    aligned: Option<AlignedContext>,
    /// Set by [`Captioner::freeze_encoder`]: the CNN and the heads run in inference mode
    /// without gradients, and only the decoder side learns.
    encoder_frozen: bool,
    /// Set by [`Captioner::freeze_encoder`] and [`Captioner::fine_tune_encoder`]: the
    /// CNN's batch norms keep the statistics they came with.
    encoder_stats_kept: bool,
}

/// The general path's extra context read off the align run's image heads.
struct AlignedContext {
    heads: AlignImageHeads,
    /// With `context_words`: the words' positions.
    word_pos: Option<Tensor>,
    /// With `context_places`: the projection and positions of [global; places].
    places: Option<(nn::Linear, Tensor)>,
}

/// What [`AlignedContext::read`] takes off the frozen grid.
struct AlignedReading {
    /// The most likely words' probabilities and ids `(B, K)`.
    words: Option<(Tensor, Tensor)>,
    /// `(B, 1 + P², D)`: the global vector, then the places.
    places: Option<Tensor>,
}

impl AlignedContext {
    fn read(&self, f: &Tensor, cfg: &CaptionerConfig) -> AlignedReading {
        let parts = self.heads.read(f);
        let words = self.word_pos.as_ref().map(|_| {
            let label = self
                .heads
                .bag_logits(&parts)
                .expect("checked at build: the align run has the head");
            // The token labels come first; the hashed pairs are no words.
            let (p, ids) = label.narrow(1, 0, cfg.vocab_size).sigmoid().topk(
                cfg.context_words,
                -1,
                true,
                true,
            );
            (p, ids)
        });
        let places = self
            .places
            .as_ref()
            .map(|_| Tensor::cat(&[parts.global.unsqueeze(1), parts.places], 1));
        AlignedReading { words, places }
    }

    /// `ctx` followed by the reading's tokens at the decoder's width.
    fn tokens(&self, ctx: Tensor, r: AlignedReading, tok_emb: &nn::Embedding) -> Vec<Tensor> {
        let mut out = vec![ctx];
        if let (Some((proj, pos)), Some(p)) = (&self.places, r.places) {
            out.push(p.apply(proj) + pos);
        }
        if let (Some(pos), Some((p, ids))) = (&self.word_pos, r.words) {
            out.push(ids.apply(tok_emb) * p.unsqueeze(-1) + pos);
        }
        out
    }
}

/// Variable-name prefixes of the CNN encoder and of the attribute heads: what
/// [`Captioner::freeze_encoder`] freezes and the encoder pretraining optimises.
pub const ENCODER_PREFIXES: [&str; 2] = ["cnn.", "aux_attributes."];

/// Variable-name prefix of the align run's image heads (`context_words`), frozen with
/// the encoder.
pub const ALIGNED_PREFIX: &str = "image.";

impl Captioner {
    pub fn new(p: &nn::Path, cfg: &CaptionerConfig) -> Result<Self> {
        Self::with_words(p, cfg, None)
    }

    /// A captioner whose config may ask for `attribute_words`: `words` is then the table
    /// built from its tokenizer.
    pub fn with_words(
        p: &nn::Path,
        cfg: &CaptionerConfig,
        words: Option<FactWords>,
    ) -> Result<Self> {
        if cfg.attribute_words && (!cfg.attribute_context || words.is_none()) {
            bail!("model.attribute_words needs model.attribute_context and the tokenizer's word table");
        }
        if cfg.vocab_size <= 0 {
            bail!("captioner: vocab_size is not set (it comes from the tokenizer)");
        }
        if cfg.max_len < 2 {
            bail!(
                "model.max_len {} leaves no room for a word between <s> and </s>: give 2 or more",
                cfg.max_len
            );
        }
        if cfg.dim % cfg.heads != 0 {
            bail!(
                "model.dim ({}) must be a multiple of model.heads ({})",
                cfg.dim,
                cfg.heads
            );
        }
        if cfg.attribute_weight > 0.0 && cfg.encoder != EncoderKind::Cnn {
            bail!(
                "model.attribute_weight needs model.encoder: cnn (the heads read its feature map)"
            );
        }
        if cfg.attribute_context && cfg.attribute_weight <= 0.0 {
            bail!("model.attribute_context needs model.attribute_weight > 0 (the heads it reads are trained by that loss)");
        }
        let (encoder, grid) = match cfg.encoder {
            EncoderKind::Cnn => {
                if cfg.stem < 2 {
                    bail!("model.stem {} must be at least 2", cfg.stem);
                }
                let down = total_stride(cfg.channels.len(), cfg.stem);
                if cfg.channels.is_empty() || cfg.image_size % down != 0 {
                    bail!("model.image_size {} must be divisible by {down} (the stem's {}, then 2 per further channel stage)", cfg.image_size, cfg.stem);
                }
                let conv = ConvEncoder::with_stem(p / "cnn", &cfg.channels, cfg.stem);
                let proj = nn::linear(
                    p / "cnn_proj",
                    *cfg.channels.last().expect("channels checked non-empty"),
                    cfg.dim,
                    Default::default(),
                );
                (ImageEncoder::Cnn { conv, proj }, cfg.image_size / down)
            }
            EncoderKind::Vit => {
                if cfg.image_size % cfg.patch != 0 {
                    bail!(
                        "model.image_size {} must be divisible by model.patch {}",
                        cfg.image_size,
                        cfg.patch
                    );
                }
                let conv_cfg = nn::ConvConfig {
                    stride: cfg.patch,
                    ..Default::default()
                };
                let patch = nn::conv2d(p / "vit_patch", 3, cfg.dim, cfg.patch, conv_cfg);
                let layers = (0..cfg.vit_layers)
                    .map(|i| {
                        EncoderLayer::new(p / "vit" / i, cfg.dim, cfg.heads, cfg.mlp, cfg.dropout)
                    })
                    .collect();
                (
                    ImageEncoder::Vit { patch, layers },
                    cfg.image_size / cfg.patch,
                )
            }
        };
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let aligned = if cfg.context_words > 0 || cfg.context_places {
            let Some(a) = cfg.aligned.as_ref() else {
                bail!(
                    "model.context_words and model.context_places need encoder_from (an align run)"
                );
            };
            if cfg.context_words > 0 && a.bag_weight <= 0.0 {
                bail!("model.context_words needs an align run with its words-as-labels head (bag_weight > 0)");
            }
            if cfg.context_words > cfg.vocab_size {
                bail!(
                    "model.context_words {} is more than the vocabulary's {} tokens",
                    cfg.context_words,
                    cfg.vocab_size
                );
            }
            Some(AlignedContext {
                heads: AlignImageHeads::new(&(p / "image"), a)?,
                word_pos: (cfg.context_words > 0)
                    .then(|| p.var("aligned_word_pos", &[cfg.context_words, cfg.dim], init)),
                places: cfg.context_places.then(|| {
                    (
                        nn::linear(p / "aligned_proj", a.text.dim, cfg.dim, Default::default()),
                        p.var(
                            "aligned_place_pos",
                            &[1 + a.places * a.places, cfg.dim],
                            init,
                        ),
                    )
                }),
            })
        } else {
            None
        };
        Ok(Captioner {
            cfg: cfg.clone(),
            encoder,
            aligned,
            grid_pos: p.var("grid_pos", &[grid * grid, cfg.dim], init),
            enc_ln: nn::layer_norm(p / "enc_ln", vec![cfg.dim], Default::default()),
            tok_emb: nn::embedding(
                p / "tok_emb",
                cfg.vocab_size,
                cfg.dim,
                nn::EmbeddingConfig {
                    ws_init: init,
                    ..Default::default()
                },
            ),
            pos_emb: p.var("pos_emb", &[cfg.max_len, cfg.dim], init),
            layers: (0..cfg.layers)
                .map(|i| {
                    DecoderLayer::new(
                        p / "dec" / i,
                        cfg.dim,
                        cfg.dim,
                        cfg.heads,
                        cfg.mlp,
                        cfg.dropout,
                    )
                })
                .collect(),
            ln_f: nn::layer_norm(p / "ln_f", vec![cfg.dim], Default::default()),
            attributes: (cfg.attribute_weight > 0.0).then(|| {
                let c = *cfg.channels.last().expect("channels checked non-empty");
                AttributeHeads::new(
                    &(p / "aux_attributes"),
                    c,
                    cfg.attribute_hidden,
                    cfg.attribute_mix,
                )
            }),
            attribute_tokens: cfg.attribute_context.then(|| {
                (
                    nn::linear(
                        p / "attribute_proj",
                        cfg.attribute_hidden,
                        cfg.dim,
                        Default::default(),
                    ),
                    p.var("attribute_pos", &[10, cfg.dim], init),
                )
            }),
            fact_words: words
                .filter(|_| cfg.attribute_words)
                .map(|w| (w, p.var("fact_word_pos", &[10, cfg.dim], init))),
            encoder_frozen: false,
            encoder_stats_kept: false,
        })
    }

    /// A pretrained encoder learns on with the decoder (at the rate the stage gives its
    /// prefixes) while its batch norms keep their pretrained statistics: the captioner's
    /// small batches would estimate them worse.
    pub fn fine_tune_encoder(&mut self) {
        self.encoder_frozen = false;
        self.encoder_stats_kept = true;
    }

    /// Freezes the CNN and the attribute heads of `vs` (this model's store): they stop
    /// requiring gradients, so an optimizer built afterwards leaves them out, and they
    /// run in inference mode. What the decoder phase of a pretrained encoder trains on.
    pub fn freeze_encoder(&mut self, vs: &nn::VarStore) {
        for (name, t) in vs.variables() {
            if ENCODER_PREFIXES.iter().any(|p| name.starts_with(p))
                || name.starts_with(ALIGNED_PREFIX)
            {
                let _ = t.set_requires_grad(false);
            }
        }
        self.encoder_frozen = true;
        self.encoder_stats_kept = true;
    }

    /// The auxiliary attribute loss alone (the encoder pretraining's objective); None
    /// when the model has no attribute heads.
    pub fn attribute_only_loss(
        &self,
        images: &Tensor,
        targets: &Tensor,
        train: bool,
    ) -> Option<Tensor> {
        let heads = self.attributes.as_ref()?;
        match &self.encoder {
            ImageEncoder::Cnn { conv, .. } => {
                Some(heads.loss(&conv.forward(images, train), targets, train))
            }
            ImageEncoder::Vit { .. } => None,
        }
    }

    /// The attribute heads' logits for images, without gradients (to grade them).
    pub fn attribute_logits(&self, images: &Tensor) -> Option<AttributeLogits> {
        let heads = self.attributes.as_ref()?;
        match &self.encoder {
            ImageEncoder::Cnn { conv, .. } => Some(tch::no_grad(|| {
                heads.logits(&conv.forward(images, false), false)
            })),
            ImageEncoder::Vit { .. } => None,
        }
    }

    /// Checks an image batch before it reaches the network.
    pub fn check_images(&self, images: &Tensor) -> Result<()> {
        let s = images.size();
        let want = [3, self.cfg.image_size, self.cfg.image_size];
        if s.len() != 4 || s[1..] != want {
            bail!(
                "captioner expects images of shape (N, 3, {n}, {n}), got {s:?}",
                n = want[1]
            );
        }
        Ok(())
    }

    /// Images in [-1, 1] `(B, 3, S, S)` → the context the decoder attends to `(B, G, D)`:
    /// the grid, and with `attribute_context` ten attribute tokens after it.
    pub fn encode(&self, images: &Tensor, train: bool) -> Tensor {
        self.encode_parts(images, train, false).0
    }

    /// The context and, when `want_attributes` (or the context needs them) and the model
    /// has its attribute heads, their logits.
    fn encode_parts(
        &self,
        images: &Tensor,
        train: bool,
        want_attributes: bool,
    ) -> (Tensor, Option<AttributeLogits>) {
        match &self.encoder {
            ImageEncoder::Cnn { conv, proj } => {
                let frozen = self.encoder_frozen;
                let encoder_train = train && !self.encoder_stats_kept;
                let wanted = want_attributes || self.attribute_tokens.is_some();
                let features = || {
                    let f = conv.forward(images, encoder_train); // (B, C, g, g)
                    let logits = self
                        .attributes
                        .as_ref()
                        .filter(|_| wanted)
                        .map(|heads| heads.logits(&f, encoder_train));
                    let aligned = self.aligned.as_ref().map(|a| a.read(&f, &self.cfg));
                    (f, logits, aligned)
                };
                let (f, logits, words) = if frozen {
                    tch::no_grad(features)
                } else {
                    features()
                };
                let h = f.flatten(2, 3).transpose(1, 2).apply(proj) + &self.grid_pos; // (B, G, D)
                let ctx = match (&self.attribute_tokens, &logits) {
                    (Some((proj, pos)), Some(l)) => {
                        let mut parts = vec![h, l.hidden.apply(proj) + pos];
                        if let Some((words, word_pos)) = &self.fact_words {
                            parts.push(words.weights(l).matmul(&self.tok_emb.ws) + word_pos);
                        }
                        Tensor::cat(&parts, 1)
                    }
                    _ => h,
                };
                let ctx = match (&self.aligned, words) {
                    (Some(a), Some(read)) => Tensor::cat(&a.tokens(ctx, read, &self.tok_emb), 1),
                    _ => ctx,
                };
                (self.enc_ln.forward(&ctx), logits)
            }
            ImageEncoder::Vit { patch, layers } => {
                let mut h = patch.forward(images).flatten(2, 3).transpose(1, 2) + &self.grid_pos; // (B, G, D)
                for l in layers {
                    h = l.forward(&h, None, train);
                }
                (self.enc_ln.forward(&h), None)
            }
        }
    }

    /// Whether the model trains with the auxiliary attribute loss (and so needs targets).
    pub fn wants_attributes(&self) -> bool {
        self.attributes.is_some()
    }

    /// Next-token logits `(B, T, V)` for `tokens` `(B, T)` placed at positions
    /// `offset..offset+T`, attending to `ctx`; `caches` (one per layer) make it incremental.
    pub fn logits(
        &self,
        ctx: &Tensor,
        tokens: &Tensor,
        offset: i64,
        caches: Option<&mut [LayerCache]>,
        train: bool,
    ) -> Tensor {
        let t = tokens.size()[1];
        let mut x = tokens.apply(&self.tok_emb) + self.pos_emb.narrow(0, offset, t);
        x = draws::dropout(&x, self.cfg.dropout, train);
        match caches {
            Some(caches) => {
                for (l, c) in self.layers.iter().zip(caches.iter_mut()) {
                    x = l.forward(&x, ctx, Some(c), train);
                }
            }
            None => {
                for l in &self.layers {
                    x = l.forward(&x, ctx, None, train);
                }
            }
        }
        // Tied embeddings: the output layer is the transposed input embedding.
        self.ln_f.forward(&x).matmul(&self.tok_emb.ws.tr())
    }

    /// Every decoder layer's cross-attention keys and values for a context, stacked
    /// `(2, L, B, H, G, Dh)` (keys, then values): computed once per image, read at every
    /// step.
    pub fn cross_kv(&self, ctx: &Tensor) -> Tensor {
        let (k, v): (Vec<Tensor>, Vec<Tensor>) =
            self.layers.iter().map(|l| l.context_kv(ctx)).unzip();
        Tensor::stack(&[Tensor::stack(&k, 0), Tensor::stack(&v, 0)], 0)
    }

    /// One decoding step written only in tensor operations, so that a trace of it is
    /// the whole decoder (the TorchScript export). `token` `(B, 1)` sits at position
    /// `pos` (one int64); `self_kv` `(2, L, B, H, M, Dh)` is the self-attention cache of
    /// fixed length M = max_len, written at `pos` in place; `key_positions` = arange(M);
    /// `cross_kv` is [`Captioner::cross_kv`]. Returns the next-token logits `(B, V)`.
    pub fn step_fixed_cache(
        &self,
        token: &Tensor,
        pos: &Tensor,
        self_kv: &Tensor,
        cross_kv: &Tensor,
        key_positions: &Tensor,
    ) -> Tensor {
        let mut x = token.apply(&self.tok_emb) + self.pos_emb.index_select(0, pos);
        let (sk, sv) = (self_kv.get(0), self_kv.get(1));
        let (ck, cv) = (cross_kv.get(0), cross_kv.get(1));
        for (i, l) in self.layers.iter().enumerate() {
            let i = i as i64;
            x = l.step_fixed_cache(
                &x,
                (&sk.get(i), &sv.get(i)),
                (&ck.get(i), &cv.get(i)),
                pos,
                key_positions,
            );
        }
        self.ln_f
            .forward(&x)
            .matmul(&self.tok_emb.ws.tr())
            .select(1, 0)
    }

    /// The empty self-attention cache of [`Captioner::step_fixed_cache`] for `b` rows.
    pub fn empty_fixed_cache(&self, b: i64, device: tch::Device) -> Tensor {
        let c = &self.cfg;
        Tensor::zeros(
            [2, c.layers, b, c.heads, c.max_len, c.dim / c.heads],
            (Kind::Float, device),
        )
    }

    /// Teacher-forced cross-entropy of `tokens` `(B, L)` given images; padding ignored.
    /// With `sampled_fraction` > 0, that share of the input tokens is replaced by the
    /// model's own predictions (parallel scheduled sampling, Mihaylova & Martins 2019).
    /// `attributes` `(B, 39)` ([`crate::scenes::probe::cell_targets`] rows) add the
    /// auxiliary attribute loss when the model has its heads.
    #[allow(clippy::too_many_arguments)]
    pub fn loss(
        &self,
        images: &Tensor,
        tokens: &Tensor,
        attributes: Option<&Tensor>,
        pad: i64,
        label_smoothing: f64,
        sampled_fraction: f64,
        train: bool,
    ) -> Tensor {
        // Trim the batch to its longest paragraph: padding costs compute, not information.
        let longest = tokens
            .ne(pad)
            .sum_dim_intlist(1, false, Kind::Int64)
            .max()
            .int64_value(&[])
            .max(2);
        let tokens = tokens.narrow(1, 0, longest.min(tokens.size()[1]));
        let (ctx, logits) = self.encode_parts(images, train, attributes.is_some());
        let ce =
            self.loss_from_context(&ctx, &tokens, pad, label_smoothing, sampled_fraction, train);
        match (logits, attributes) {
            (Some(l), Some(targets)) => {
                ce + attribute_loss(&l.global, &l.cells, targets) * self.cfg.attribute_weight
            }
            _ => ce,
        }
    }

    /// The loss of [`Captioner::loss`] for a context computed elsewhere `(B, G, D)`
    /// (the unified generator's latent tokens).
    pub fn loss_from_context(
        &self,
        ctx: &Tensor,
        tokens: &Tensor,
        pad: i64,
        label_smoothing: f64,
        sampled_fraction: f64,
        train: bool,
    ) -> Tensor {
        let t = tokens.size()[1];
        let mut input = tokens.narrow(1, 0, t - 1);
        let target = tokens.narrow(1, 1, t - 1);
        if sampled_fraction > 0.0 {
            let predicted =
                tch::no_grad(|| self.logits(ctx, &input, 0, None, false).argmax(-1, false));
            // Position i+1 of the input gets the prediction made at position i.
            let shifted = Tensor::cat(&[input.narrow(1, 0, 1), predicted.narrow(1, 0, t - 2)], 1);
            let pick = draws::uniform(&input.size(), input.device()).lt(sampled_fraction);
            let pick = pick.logical_and(&input.ne(pad));
            input = shifted.where_self(&pick, &input);
        }
        let logits = self.logits(ctx, &input, 0, None, train);
        let v = logits.size()[2];
        // The mean over the real tokens of the global batch (ranks hold different counts).
        let sum = logits.view([-1, v]).cross_entropy_loss::<Tensor>(
            &target.reshape([-1]),
            None,
            tch::Reduction::Sum,
            pad,
            label_smoothing,
        );
        crate::distributed::global_mean(&sum, &target.ne(pad).sum(Kind::Float))
    }
}
