//! The scene-supervised path of the text → image model (`model.facts`): the hook through
//! which the embedded set's fact reader ([`crate::scenes::facts`]) replaces the text
//! condition, its loss while the text side trains, and the freeze before the generator's
//! phase.

use super::*;
use anyhow::Context;

impl TextToImage {
    /// Whether the model paints from facts read off the caption (`model.facts`).
    pub fn reads_facts(&self) -> bool {
        self.facts.is_some()
    }

    /// The fact reader's logits `(B, 12)`, `(B, 9, 34)` for caption tokens; `None`
    /// without `facts`.
    pub fn fact_logits(&self, tokens: &Tensor, pad: i64, train: bool) -> Option<(Tensor, Tensor)> {
        let (reader, _) = self.facts.as_ref()?;
        Some(reader.logits(&self.text.forward(tokens, pad, train)))
    }

    /// The fact reader's loss against target rows `(B, 39)` (the text side's pretraining
    /// objective); `None` without `facts`.
    pub fn fact_loss(&self, tokens: &Tensor, targets: &Tensor, pad: i64) -> Option<Tensor> {
        let (global, cells) = self.fact_logits(tokens, pad, true)?;
        Some(attribute_loss(&global, &cells, targets))
    }

    /// The condition a facts model trains its generator on, and, while the text side
    /// still trains, the reader's loss. The generator never passes gradients to the
    /// text: it paints from the reader's facts, detached.
    pub(super) fn fact_training_condition(
        &self,
        tokens: &Tensor,
        targets: Option<&Tensor>,
        pad: i64,
    ) -> Result<(Condition, Option<Tensor>)> {
        let Some((_, embedding)) = &self.facts else {
            bail!("model.facts is not set: this model paints from the text");
        };
        let Some(t) = targets else {
            bail!("model.facts trains on the embedded set's scene facts, and this batch has none");
        };
        let (global, cells) = if self.text_frozen {
            tch::no_grad(|| self.fact_logits(tokens, pad, false))
        } else {
            self.fact_logits(tokens, pad, true)
        }
        .context("model.facts is set but the model has no fact reader")?;
        let loss = (!self.text_frozen).then(|| attribute_loss(&global, &cells, t));
        let facts = Facts::from_logits(&global.detach(), &cells.detach());
        Ok((fact_condition(embedding, &facts), loss))
    }

    /// Whether the model trains with the scene facts (`facts`), and so needs targets.
    pub fn wants_attributes(&self) -> bool {
        self.facts.is_some()
    }
}

/// The generator's condition for facts: the global vector, and the nine cells' vectors
/// as the tokens (all present).
pub(super) fn fact_condition(embedding: &FactEmbedding, facts: &Facts) -> Condition {
    let (global, cells) = embedding.forward(facts);
    let mask = all_present(&cells);
    Condition {
        global,
        tokens: cells,
        mask,
    }
}
