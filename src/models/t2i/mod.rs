//! Text → image: a text encoder trained jointly with one of three
//! conditional generators: `vae` (the demo default: stable and fast on a CPU), `gan`
//! (DF-GAN-style, Tao et al. 2022) and `diffusion` (a U-Net denoiser with classifier-free
//! guidance).

pub mod critic;
pub mod diffusion;
pub mod gan;
pub mod generator;
mod guidance;
pub mod layout;
mod scene_facts;
use scene_facts::fact_condition;
#[cfg(test)]
mod tests;
pub mod unet;
pub mod vae;

use super::align::AlignTextHeads;
use super::text_encoder::{TextEncoder, TextEncoderConfig};
use crate::scenes::facts::{FactEmbedding, FactReader, Facts};
use crate::scenes::heads::attribute_loss;
use crate::util::draws;
use anyhow::{bail, Context, Result};
use critic::MatchCritic;
use diffusion::{DiffusionConfig, Schedule};
use gan::GanConfig;
use generator::{Generator, GeneratorConfig};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};
use unet::{UNet, UNetConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum T2IKind {
    Vae,
    Gan,
    Diffusion,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct T2IConfig {
    pub kind: T2IKind,
    pub image_size: i64,
    /// The model's own text encoder; left out with `align`, whose run's is read.
    #[serde(default, skip_serializing_if = "text_left_out")]
    pub text: TextEncoderConfig,
    /// vae, gan: the generator network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<GeneratorConfig>,
    /// VAE: channels of the posterior's conv encoder.
    #[serde(default = "d_enc")]
    pub encoder_channels: Vec<i64>,
    /// VAE: final weight of the KL term, reached linearly over `beta_warmup` steps.
    #[serde(default = "d_one")]
    pub beta: f64,
    #[serde(default)]
    pub beta_warmup: u64,
    /// gan: the discriminator and the adversarial training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gan: Option<GanConfig>,
    /// diffusion: the denoising U-Net.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unet: Option<UNetConfig>,
    /// diffusion: schedule, prediction target, guidance and sampler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diffusion: Option<DiffusionConfig>,
    /// Paint from the scene's facts read off the caption (see [`facts`]; vae, embedded
    /// set): the text encoder feeds a fact reader taught by the paragraph's facts, and
    /// the generator paints from the reader's facts, never from the text directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<FactsConfig>,
    /// The general path: paint from the frozen text side of a finished `train align`
    /// run ([`crate::models::align`]): its sentence vector and the grid of place vectors
    /// it reads off the caption, which modulate the generator place by place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub align: Option<AlignedText>,
}

/// `model.align`: the align run whose text side the generator paints from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlignedText {
    pub run: std::path::PathBuf,
    /// Side of its place grid, set from the run at build time.
    #[serde(default)]
    pub places: i64,
    /// vae, gan: weight of the align model's score of the generator's own pictures
    /// against their captions ([`critic`], AttnGAN's DAMSM term); 0 leaves it out.
    #[serde(default, skip_serializing_if = "crate::config::is_default")]
    pub match_weight: f64,
    /// vae: the matching term scores a fresh prior sample painted from the caption
    /// alone, not the reconstruction, whose posterior latent has seen the picture.
    #[serde(default, skip_serializing_if = "crate::config::is_default")]
    pub match_prior: bool,
    /// The condition carries the align run's word vectors after its place vectors, and
    /// the generator's attention blocks read both (AttnGAN's word attention, Xu et al.
    /// 2018); the places alone still modulate it place by place.
    ///
    /// Why: the place vectors keep little of each object, while the word vectors hold
    /// most of it for a reader that learns where to look (docs/results.md, "What the
    /// place vectors carry").
    #[serde(default, skip_serializing_if = "crate::config::is_default")]
    pub words: bool,
}

impl T2IConfig {
    /// Whether the condition's tokens are a grid of places (facts or aligned places)
    /// rather than the caption's tokens.
    pub fn paints_from_places(&self) -> bool {
        self.facts.is_some() || self.align.is_some()
    }
}

/// `model.facts`: no options; its presence switches the fact path on.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FactsConfig {}

fn text_left_out(t: &TextEncoderConfig) -> bool {
    *t == TextEncoderConfig::default()
}
fn d_enc() -> Vec<i64> {
    vec![32, 64, 128, 128]
}
fn d_one() -> f64 {
    1.0
}

/// The caption as the generator sees it: global vector, tokens, token mask.
pub struct Condition {
    pub global: Tensor,
    pub tokens: Tensor,
    pub mask: Tensor,
}

impl Condition {
    /// Repeats each caption's condition `n` times (several noises per caption).
    pub fn repeat(&self, n: i64) -> Condition {
        Condition {
            global: self.global.repeat_interleave_self_int(n, 0, None),
            tokens: self.tokens.repeat_interleave_self_int(n, 0, None),
            mask: self.mask.repeat_interleave_self_int(n, 0, None),
        }
    }

    /// The same tensors, shared.
    fn shallow(&self) -> Condition {
        Condition {
            global: self.global.shallow_clone(),
            tokens: self.tokens.shallow_clone(),
            mask: self.mask.shallow_clone(),
        }
    }

    /// The sentence vector alone, detached: what the GAN's discriminator conditions on.
    fn sentence(&self) -> Tensor {
        self.global.detach()
    }
}

/// What a body's training step gives: its named terms and, from a one-pass generator,
/// the pictures it painted for them (what a [`MatchCritic`] scores).
struct BodyLoss {
    terms: Vec<(&'static str, Tensor)>,
    painted: Option<Tensor>,
}

/// The network that turns a condition into pixels. One file per kind holds its body
/// ([`vae::VaeBody`], [`gan::GanBody`], [`guidance::DiffusionBody`]); [`build_body`] is
/// the registry that picks one, and a new generator is one more file and one more arm
/// there (with its [`T2IKind`] and its starting [`noise`]).
trait Body {
    /// The named training terms for `images` in [-1, 1] and their condition; `step`
    /// drives warm-ups. A GAN has none (it trains through [`TextToImage::gan_losses`]).
    fn loss_terms(&self, images: &Tensor, c: Condition, step: u64) -> Result<BodyLoss>;
    /// One image per row of `c` from the starting noise `z`.
    fn sample(&self, c: &Condition, z: &Tensor) -> Tensor;
    /// The one-pass generator (vae, gan): what the export traces.
    fn generator(&self) -> Option<&Generator> {
        None
    }
    fn gan(&self) -> Option<&gan::GanBody> {
        None
    }
    fn diffusion(&self) -> Option<&guidance::DiffusionBody> {
        None
    }
    fn diffusion_mut(&mut self) -> Option<&mut guidance::DiffusionBody> {
        None
    }
}

/// The body `cfg.kind` names.
fn build_body(p: &nn::Path, cfg: &T2IConfig) -> Result<Box<dyn Body>> {
    Ok(match cfg.kind {
        T2IKind::Vae => Box::new(vae::VaeBody::new(p, cfg)?),
        T2IKind::Gan => Box::new(gan::GanBody::new(p, cfg)?),
        T2IKind::Diffusion => Box::new(guidance::DiffusionBody::new(p, cfg)?),
    })
}

pub struct TextToImage {
    pub cfg: T2IConfig,
    pub text: TextEncoder,
    /// With `facts`: the reader of the caption's facts and their embedding.
    facts: Option<(FactReader, FactEmbedding)>,
    /// With `align`: the align run's sentence and place heads over `text`.
    aligned: Option<AlignTextHeads>,
    /// With `align.match_weight`, while training: the frozen align model scoring the
    /// painted pictures ([`TextToImage::attach_critic`]).
    critic: Option<MatchCritic>,
    /// The text side (encoder and fact reader) was trained first and is frozen.
    text_frozen: bool,
    body: Box<dyn Body>,
}

/// Variable-name prefixes of the GAN's two optimizer groups.
pub const DISCRIMINATOR_PREFIX: &str = "discriminator.";

pub(super) fn need<'a, T>(v: &'a Option<T>, kind: &str, key: &str) -> Result<&'a T> {
    match v {
        Some(x) => Ok(x),
        None => bail!("model.kind {kind} needs a model.{key} section"),
    }
}

pub(super) fn checked_generator(p: &nn::Path, cfg: &T2IConfig, kind: &str) -> Result<Generator> {
    let gcfg = need(&cfg.generator, kind, "generator")?;
    if gcfg.place_mlp && !cfg.paints_from_places() {
        bail!("model.generator.place_mlp reads the places model.facts or model.align paints from: without them there are none");
    }
    if gcfg.cell_coordinates && !cfg.paints_from_places() {
        bail!("model.generator.cell_coordinates needs the places model.facts or model.align paints from");
    }
    let d = cfg.text.dim;
    let g = match (&cfg.facts, &cfg.align) {
        // The nine cells' fact vectors are the layout.
        (Some(_), _) => Generator::painting_from_places(p / "generator", gcfg, d, d, 3),
        (None, Some(a)) => Generator::painting_from_places(p / "generator", gcfg, d, d, a.places),
        (None, None) => Generator::new(p / "generator", gcfg, d, d),
    };
    if g.output_side() != cfg.image_size {
        bail!(
            "model.generator.channels has {} upsampling blocks: images of {} px, but model.image_size is {}",
            gcfg.channels.len(),
            g.output_side(),
            cfg.image_size
        );
    }
    Ok(g)
}

impl TextToImage {
    pub fn new(p: &nn::Path, cfg: &T2IConfig) -> Result<Self> {
        if cfg.text.vocab_size <= 0 {
            bail!("t2i: vocab_size is not set (it comes from the tokenizer)");
        }
        if cfg.facts.is_some() && cfg.kind != T2IKind::Vae {
            bail!(
                "model.facts is implemented for the vae; a {:?} paints from the text",
                cfg.kind
            );
        }
        if cfg.facts.is_some() && cfg.align.is_some() {
            bail!("model.facts and model.align are two text sides: keep one");
        }
        if cfg.align.as_ref().is_some_and(|a| a.places < 1) {
            bail!("model.align.places is not set (it comes from the align run)");
        }
        if let Some(a) = &cfg.align {
            if !(a.match_weight >= 0.0 && a.match_weight.is_finite()) {
                bail!(
                    "model.align.match_weight must be 0 or more, not {}",
                    a.match_weight
                );
            }
            if a.match_weight > 0.0 && cfg.kind == T2IKind::Diffusion {
                bail!("model.align.match_weight scores a one-pass generator's pictures (vae, gan); diffusion paints in many steps: leave it out");
            }
            if a.match_prior && (cfg.kind != T2IKind::Vae || a.match_weight <= 0.0) {
                bail!("model.align.match_prior chooses which VAE picture the matching term scores: it needs kind vae and match_weight above 0");
            }
        }
        let text = TextEncoder::new(p / "text", &cfg.text);
        let aligned = cfg
            .align
            .as_ref()
            .map(|a| AlignTextHeads::new(&(p / "text"), cfg.text.dim, a.places));
        let body = build_body(p, cfg)?;
        let d = cfg.text.dim;
        // The reader under "text." (it is the text side), the embedding under
        // "generator." (it is what the generator paints from).
        let facts = cfg.facts.as_ref().map(|_| {
            (
                FactReader::new(p / "text" / "facts", d),
                FactEmbedding::new(p / "generator" / "facts", d),
            )
        });
        Ok(TextToImage {
            cfg: cfg.clone(),
            text,
            facts,
            aligned,
            critic: None,
            text_frozen: false,
            body,
        })
    }

    /// Whether training wants a [`MatchCritic`] attached (`model.align.match_weight`).
    pub fn wants_critic(&self) -> bool {
        self.cfg
            .align
            .as_ref()
            .is_some_and(|a| a.match_weight > 0.0)
    }

    /// Adds the align model's score of the painted pictures to every training loss
    /// from now on. Sampling never reads it, so a loaded model for drawing has none.
    /// The critic must be the align model whose text side this model paints from.
    pub fn attach_critic(&mut self, critic: MatchCritic) -> Result<()> {
        let (dim, places) = critic.widths();
        let want = self.cfg.align.as_ref().map_or(0, |a| a.places);
        if dim != self.cfg.text.dim || places != want {
            bail!(
                "the critic's align model is {dim} wide with {places}×{places} places; this generator paints from {} wide with {want}×{want}: it must be the run of model.align",
                self.cfg.text.dim
            );
        }
        self.critic = Some(critic);
        Ok(())
    }

    /// The critic's term for pictures painted from condition `c` of `tokens`, when one
    /// is attached.
    fn match_term(
        &self,
        painted: &Tensor,
        c: &Condition,
        tokens: &Tensor,
    ) -> Result<Option<Tensor>> {
        self.critic
            .as_ref()
            .map(|critic| critic.loss(painted, c, tokens))
            .transpose()
    }

    pub fn condition(&self, tokens: &Tensor, pad: i64, train: bool) -> Condition {
        let e = self.text.forward(tokens, pad, train && !self.text_frozen);
        if let Some(heads) = &self.aligned {
            let t = heads.read(&e);
            let places = all_present(&t.places);
            let (tokens, mask) = if self.cfg.align.as_ref().is_some_and(|a| a.words) {
                (
                    Tensor::cat(&[&t.places, &t.words], 1),
                    Tensor::cat(&[places, t.mask], 1),
                )
            } else {
                (t.places, places)
            };
            return Condition {
                mask,
                global: t.sentence,
                tokens,
            };
        }
        match &self.facts {
            Some((reader, embedding)) => {
                let (global, cells) = reader.logits(&e);
                fact_condition(embedding, &Facts::from_logits(&global, &cells))
            }
            None => Condition {
                global: e.pooled,
                tokens: e.seq,
                mask: e.mask,
            },
        }
    }

    /// Stops training the text side (encoder, fact reader or aligned heads): it was
    /// trained first (a facts pretraining phase, or an align run).
    pub fn freeze_text(&mut self, vs: &nn::VarStore) {
        for (name, t) in vs.variables() {
            if name.starts_with("text.") {
                let _ = t.set_requires_grad(false);
            }
        }
        self.text_frozen = true;
    }

    /// The single training loss of vae and diffusion (images in [-1, 1], caption tokens,
    /// optional attribute targets); `step` drives the KL warm-up. A GAN trains through
    /// [`TextToImage::gan_losses`].
    pub fn loss(
        &self,
        images: &Tensor,
        tokens: &Tensor,
        attributes: Option<&Tensor>,
        pad: i64,
        step: u64,
    ) -> Result<Tensor> {
        Ok(sum_terms(
            self.loss_terms(images, tokens, attributes, pad, step)?,
        ))
    }

    /// The weighted terms that [`TextToImage::loss`] sums, named for the training log:
    /// `pixel` and `kl` (β·KL) of a VAE or `denoise` of diffusion, then `facts`
    /// when the model has the auxiliary heads and the batch has targets.
    pub fn loss_terms(
        &self,
        images: &Tensor,
        tokens: &Tensor,
        attributes: Option<&Tensor>,
        pad: i64,
        step: u64,
    ) -> Result<Vec<(&'static str, Tensor)>> {
        let (c, aux) = if self.reads_facts() {
            self.fact_training_condition(tokens, attributes, pad)?
        } else {
            (self.condition(tokens, pad, true), None)
        };
        // The critic scores the pictures against the condition they were painted from.
        let kept = self.critic.is_some().then(|| c.shallow());
        let BodyLoss { mut terms, painted } = self.body.loss_terms(images, c, step)?;
        if let Some(c) = kept {
            let painted = painted.context("this generator paints no picture to score")?;
            terms.extend(self.match_term(&painted, &c, tokens)?.map(|m| ("match", m)));
        }
        terms.extend(aux.map(|a| ("facts", a)));
        Ok(terms)
    }

    /// Whether this model trains through [`TextToImage::gan_losses`] (two optimizer
    /// groups) instead of [`TextToImage::loss`].
    pub fn is_gan(&self) -> bool {
        self.body.gan().is_some()
    }

    /// The GAN's loss for optimizer group `group`: 0 = discriminator, 1 = generator and
    /// text encoder (and, with a [`MatchCritic`], its score of the fakes). Refused for
    /// other kinds.
    pub fn gan_losses(
        &self,
        group: usize,
        images: &Tensor,
        tokens: &Tensor,
        pad: i64,
    ) -> Result<Tensor> {
        let Some(gan::GanBody {
            generator,
            discriminator,
            cfg,
        }) = self.body.gan()
        else {
            bail!("only a GAN trains through two optimizer groups");
        };
        let b = images.size()[0];
        let z = gan::truncated_noise(b, generator.cfg.z_dim, 0.0, images.device());
        Ok(if group == 0 {
            // The discriminator's step trains neither the text encoder nor the generator:
            // no graph is built through them.
            let (c, fake) = tch::no_grad(|| {
                let c = self.condition(tokens, pad, true);
                let fake = generator.forward(&z, &c.global, &c.tokens, &c.mask);
                (c, fake)
            });
            gan::discriminator_loss(discriminator, cfg, images, &fake, &c.sentence())
        } else {
            let c = self.condition(tokens, pad, true);
            let fake = generator.forward(&z, &c.global, &c.tokens, &c.mask);
            let mut loss = gan::generator_loss(discriminator, &fake, &c.sentence());
            if let Some(m) = self.match_term(&fake, &c, tokens)? {
                loss += m;
            }
            if cfg.interpolate {
                // GAN-INT: a caption halfway between two real ones should also give a
                // convincing image (the discriminator scores it with the blend).
                let mix = |x: &Tensor| (x + crate::distributed::roll_global(x, 1)) * 0.5;
                let g = mix(&c.global);
                let fake = generator.forward(&z, &g, &c.tokens, &c.mask);
                loss += gan::generator_loss(discriminator, &fake, &g.detach());
            }
            loss
        })
    }

    /// Samples one image per row of `cond` from the noise `z` of [`TextToImage::noise`].
    pub fn sample(&self, cond: &Condition, z: &Tensor) -> Tensor {
        tch::no_grad(|| self.body.sample(cond, z))
    }

    /// The starting noise of `n` samples: see [`noise`].
    pub fn noise(&self, n: i64, device: Device) -> Tensor {
        noise(&self.cfg, n, device)
    }

    /// The vae or gan generator's images for noise `z` `(B, z)`, standard normal;
    /// `None` for diffusion.
    pub fn generate(&self, cond: &Condition, z: &Tensor) -> Option<Tensor> {
        self.body
            .generator()
            .map(|g| g.forward(z, &cond.global, &cond.tokens, &cond.mask))
    }
}

/// A mask `(B, N)` marking all `N` places of `places` `(B, N, D)` present.
pub(super) fn all_present(places: &Tensor) -> Tensor {
    // `to_dtype`, not `to_kind`: a trace must not pin the device.
    places
        .select(2, 0)
        .ones_like()
        .to_dtype(Kind::Bool, false, false)
}

/// The loss of named terms from [`TextToImage::loss_terms`].
pub fn sum_terms(terms: Vec<(&'static str, Tensor)>) -> Tensor {
    terms
        .into_iter()
        .map(|(_, t)| t)
        .reduce(|a, b| a + b)
        .expect("every kind has a term")
}

/// The starting noise of `n` samples of a model with config `cfg`: a latent vector (vae,
/// gan; truncated when the GAN config asks) or a noise image (diffusion). The exported
/// models draw theirs here too, so one seed gives the same pictures both ways.
pub fn noise(cfg: &T2IConfig, n: i64, device: Device) -> Tensor {
    let z_dim = cfg.generator.as_ref().map_or(0, |g| g.z_dim);
    match (cfg.kind, &cfg.gan) {
        (T2IKind::Vae, _) | (T2IKind::Gan, None) => draws::normal(&[n, z_dim], device),
        (T2IKind::Gan, Some(g)) => gan::truncated_noise(n, z_dim, g.truncation, device),
        (T2IKind::Diffusion, _) => {
            let s = cfg.image_size;
            draws::normal(&[n, 3, s, s], device)
        }
    }
}
