//! The bridge's frozen sentence embedder E_T: a contrastive run's text tower, as Menon
//! et al. (ICVGIP 2024) use CLIP's, or an align run's sentence vector (the general path:
//! the contrastive evaluator then grades a bridge conditioned on another model, TISE).

use super::super::align::{AlignStageConfig, AlignedText};
use super::super::evaluators::{embed_tokens, load_clip, tokenize_batch, LoadedClip};
use crate::data::tokenizer::TextTokenizer;
use crate::models::clip::l2_normalise;
use anyhow::{Context, Result};
use std::path::Path;
use tch::{Device, Tensor};

// One per loaded bridge, built once and never moved on a hot path: the variants' sizes
// do not matter.
#[allow(clippy::large_enum_variant)]
pub enum SentenceEmbedder {
    Contrastive(LoadedClip),
    Aligned {
        text: AlignedText,
        tok: TextTokenizer,
    },
}

impl SentenceEmbedder {
    /// The embedder of `run`: an align run when its config is one, else a contrastive run.
    pub fn load(run: &Path, device: Device) -> Result<Self> {
        if let Ok(cfg) = super::super::run_config::<AlignStageConfig>(run, "align") {
            let (_, tok) = super::super::open_training_data(&cfg.data, &[])?;
            let text = AlignedText::load(run, &tok, device)?;
            return Ok(SentenceEmbedder::Aligned { text, tok });
        }
        let clip = load_clip(run, device).with_context(|| {
            format!(
                "text_embedder {} is neither an align run (`train align`) nor a contrastive one (`train clip`)",
                run.display()
            )
        })?;
        Ok(SentenceEmbedder::Contrastive(clip))
    }

    /// The embedding's width, which the autoencoder's flat latent must equal.
    pub fn dim(&self) -> i64 {
        match self {
            SentenceEmbedder::Contrastive(c) => c.cfg.model.embed_dim,
            SentenceEmbedder::Aligned { text, .. } => text.cfg.text.dim,
        }
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        match self {
            SentenceEmbedder::Contrastive(c) => &c.tok,
            SentenceEmbedder::Aligned { tok, .. } => tok,
        }
    }

    /// y = √E · E_T(text): unit-norm embeddings scaled so each coordinate has about
    /// unit variance, like the standardised latents.
    pub fn embed(&self, texts: &[String], device: Device) -> Result<Tensor> {
        let unit = match self {
            SentenceEmbedder::Contrastive(c) => {
                let tokens = tokenize_batch(&c.tok, texts, c.cfg.model.text.max_len as usize)?;
                embed_tokens(&c.model, &tokens, c.tok.pad, device)
            }
            SentenceEmbedder::Aligned { text, tok } => {
                let tokens = tokenize_batch(tok, texts, text.cfg.text.max_len as usize)?;
                text.read_all(&tokens, tok.pad, |parts| l2_normalise(&parts.sentence))
            }
        };
        Ok(unit * (self.dim() as f64).sqrt())
    }
}
