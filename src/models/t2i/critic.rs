//! The general path's matching term for a generator, after the DAMSM loss of AttnGAN
//! (Xu et al., CVPR 2018): the frozen align model ([`crate::models::align`]) scores the
//! generator's own pictures against their captions with the terms it was trained with
//! (sentence, places and words-as-labels), and that score joins the generator's loss.
//! The caption's side is the generator's condition, which is the same frozen align text
//! side, so it is read once; DAMSM's word term, which needs the word vectors the
//! condition does not keep, is left out.
//!
//! Why: a summed pixel loss spreads its gradient over the whole picture, so a generator
//! learns the sky, the ground and the palette long before the small object a place
//! vector names. The align model's place term asks directly whether the pixels of each
//! place match what the caption says stands there, and its words-as-labels term whether
//! the caption's words can be read off the picture.
//!
//! The align model only conditions and trains here; it never grades. The contrastive
//! evaluator and the probe that grade the generator were trained apart from it (TISE,
//! Dinh et al. 2021).

use super::Condition;
use crate::models::align::{bag_targets, Aligner};
use anyhow::Result;
use tch::{nn, Tensor};

/// A frozen align model and the weight of its term.
pub struct MatchCritic {
    aligner: Aligner,
    /// Owns the align model's weights, apart from the generator's: they are neither
    /// trained nor saved with it.
    _weights: nn::VarStore,
    /// Tokens that are no label (padding, start, end) and those that end a sentence.
    ignore: Vec<i64>,
    sentence_ends: Vec<i64>,
    weight: f64,
}

impl MatchCritic {
    /// The critic of a loaded align model whose variables live in `weights` (frozen
    /// here). `ignore` and `sentence_ends` are the tokenizer's ids, as the align run's
    /// words-as-labels targets were built.
    pub fn new(
        weights: nn::VarStore,
        aligner: Aligner,
        ignore: Vec<i64>,
        sentence_ends: Vec<i64>,
        weight: f64,
    ) -> Self {
        for (_, t) in weights.variables() {
            let _ = t.set_requires_grad(false);
        }
        MatchCritic {
            aligner,
            _weights: weights,
            ignore,
            sentence_ends,
            weight,
        }
    }

    /// The width of its shared space and the side of its place grid.
    pub fn widths(&self) -> (i64, i64) {
        (self.aligner.cfg.text.dim, self.aligner.cfg.places)
    }

    /// The weighted term for `painted` images in [-1, 1] `(B, 3, H, W)` against the
    /// condition they were painted from (the align run's sentence and place vectors of
    /// caption tokens `(B, L)`): the align model's loss on these pairs, the other rows
    /// of the batch the negatives. Gradients reach the pixels only.
    pub fn loss(&self, painted: &Tensor, condition: &Condition, tokens: &Tensor) -> Result<Tensor> {
        let cfg = &self.aligner.cfg;
        let side = cfg.image_size;
        let h = painted.size()[2];
        // Seen at the align model's own size: averaged down (as the loader's resize
        // does), or stretched up for a generator that paints smaller.
        let x = if h == side {
            painted.shallow_clone()
        } else if h > side {
            painted.adaptive_avg_pool2d([side, side])
        } else {
            painted.upsample_bilinear2d([side, side], false, None, None)
        };
        let bag = if cfg.bag_weight > 0.0 {
            Some(
                bag_targets(
                    tokens,
                    &self.ignore,
                    &self.sentence_ends,
                    cfg.text.vocab_size,
                    cfg.pair_buckets,
                )?
                .to_device(painted.device()),
            )
        } else {
            None
        };
        // train = false: the batch norms keep the align run's statistics, which the
        // generator's pictures must not move.
        let img = self.aligner.image.forward(&x, false);
        let terms = self.aligner.pair_losses(
            &img,
            &condition.global.detach(),
            // The places lead the condition's tokens (words may follow them).
            &condition
                .tokens
                .narrow(1, 0, cfg.places * cfg.places)
                .detach(),
            None,
            bag.as_ref(),
        );
        Ok(terms.total(cfg) * self.weight)
    }
}
