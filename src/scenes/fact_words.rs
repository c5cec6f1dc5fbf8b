//! Fact words: the attribute heads' reading of a scene written as caption words. Each
//! class of a head (a kind, a colour, a size, a sky…) maps to the tokens of its name, and
//! each grid cell to the tokens of its position ("top left"). The captioner turns the
//! heads' class probabilities into a probability-weighted bag of those tokens' embeddings,
//! one per cell and one for the scene, and attends to them beside the grid: with tied
//! input and output embeddings, copying a fact into the paragraph becomes reading a
//! vector that already points at the words to write.

use crate::scenes::heads::{AttributeLogits, CELL_HEADS, GLOBAL_HEADS};
use crate::scenes::scene::{position_name, COLOURS, GROUNDS, KINDS, SIZES, SKIES, STYLES};
use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

/// Rows of token weights `(classes, vocab)`: row i spreads one unit over the tokens of
/// class i's name (an empty row for a class with no words, e.g. an empty cell).
pub struct FactWords {
    global: Tensor,
    kind: Tensor,
    colour: Tensor,
    size: Tensor,
    position: Tensor,
}

impl FactWords {
    /// The table for a tokenizer: `encode` gives the token ids of a text (no start or end
    /// tokens); names are encoded with a leading space, as they stand in a paragraph.
    pub fn new(
        encode: impl Fn(&str) -> Result<Vec<i64>>,
        vocab: i64,
        device: Device,
    ) -> Result<Self> {
        let table = |names: &[String]| -> Result<Tensor> {
            let mut rows = vec![0f32; names.len() * vocab as usize];
            for (i, name) in names.iter().enumerate() {
                if name.is_empty() {
                    continue;
                }
                let ids = encode(&format!(" {name}"))?;
                if ids.is_empty() || ids.iter().any(|&id| id < 0 || id >= vocab) {
                    bail!(
                        "fact words: {name:?} encodes to {ids:?}, outside a vocabulary of {vocab}"
                    );
                }
                // A token that occurs twice in a name counts twice: each row sums to one.
                for id in &ids {
                    rows[i * vocab as usize + *id as usize] += 1.0 / ids.len() as f32;
                }
            }
            Ok(Tensor::from_slice(&rows)
                .view([names.len() as i64, vocab])
                .to_device(device))
        };
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let global: Vec<String> = [SKIES, GROUNDS, STYLES]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut kinds = names(&KINDS);
        kinds.push(String::new()); // "empty"
        let colours: Vec<String> = COLOURS.iter().map(|c| c.0.to_string()).collect();
        let positions: Vec<String> = (0..9).map(position_name).collect();
        Ok(FactWords {
            global: table(&global)?,
            kind: table(&kinds)?,
            colour: table(&colours)?,
            size: table(&names(&SIZES))?,
            position: table(&positions)?,
        })
    }

    /// Token weights `(B, 10, V)` of the heads' reading: the scene's sky, ground and style
    /// words, then per cell its position words plus the expected kind words and, weighted
    /// by the probability that the cell is occupied, the expected colour and size words.
    pub fn weights(&self, l: &AttributeLogits) -> Tensor {
        let expected =
            |logits: &Tensor, table: &Tensor| logits.softmax(-1, Kind::Float).matmul(table);
        // Summed out of place: a scene row broadcasts over the batch.
        let scene = GLOBAL_HEADS
            .iter()
            .map(|&(off, w)| expected(&l.global.narrow(1, off, w), &self.global.narrow(0, off, w)))
            .reduce(|a, b| a + b)
            .expect("three global heads");
        let kind = l
            .cells
            .narrow(2, CELL_HEADS[0].0, CELL_HEADS[0].1)
            .softmax(-1, Kind::Float);
        // Colour and size are only trained where a cell holds an object: their words count
        // as much as the heads believe one is there.
        let occupied = 1.0 - kind.narrow(2, CELL_HEADS[0].1 - 1, 1); // (B, 9, 1)
        let attributes = expected(
            &l.cells.narrow(2, CELL_HEADS[1].0, CELL_HEADS[1].1),
            &self.colour,
        ) + expected(
            &l.cells.narrow(2, CELL_HEADS[2].0, CELL_HEADS[2].1),
            &self.size,
        );
        let cells = kind.matmul(&self.kind) + attributes * occupied + &self.position; // (B, 9, V)
        Tensor::cat(&[scene.unsqueeze(1), cells], 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenes::heads::{CELL_WIDTH, GLOBAL_WIDTH};

    /// A toy tokenizer: one token per character code below the vocabulary.
    fn chars(text: &str) -> Result<Vec<i64>> {
        Ok(text.trim().bytes().map(|b| b as i64).collect())
    }

    #[test]
    fn confident_heads_give_their_words() {
        let words = FactWords::new(chars, 128, Device::Cpu).unwrap();
        // The scene is certain of dawn / sea / oil; cell 0 of a red (0) small (0) sun (0),
        // the other cells certain to be empty.
        let global = Tensor::full([1, GLOBAL_WIDTH], -1e4, (Kind::Float, Device::Cpu));
        for (off, _) in GLOBAL_HEADS {
            let _ = global.get(0).get(off).fill_(0.0);
        }
        let cells = Tensor::full([1, 9, CELL_WIDTH], -1e4, (Kind::Float, Device::Cpu));
        for c in 0..9 {
            let kind = if c == 0 { 0 } else { KINDS.len() as i64 };
            let _ = cells.get(0).get(c).get(kind).fill_(0.0);
            for (first_class, _) in &CELL_HEADS[1..3] {
                let _ = cells.get(0).get(c).get(*first_class).fill_(0.0);
            }
        }
        let l = AttributeLogits {
            global,
            cells,
            hidden: Tensor::zeros([1, 10, 4], (Kind::Float, Device::Cpu)),
        };
        let w = words.weights(&l);
        assert_eq!(w.size(), [1, 10, 128]);
        let weight = |row: i64, text: &str| -> f64 {
            text.bytes()
                .map(|b| w.double_value(&[0, row, b as i64]))
                .sum::<f64>()
        };
        // "dawn", "sea" and "oil" each spread one unit over their letters.
        assert!((w.get(0).get(0).sum(Kind::Float).double_value(&[]) - 3.0).abs() < 1e-4);
        assert!(weight(0, "dawn") > 0.99);
        // Cell 0: its position ("top left"), "sun", "red" and "small", one unit each.
        assert!((w.get(0).get(1).sum(Kind::Float).double_value(&[]) - 4.0).abs() < 1e-4);
        assert!(weight(1, "sun") > 0.99);
        // An empty cell carries only its position.
        assert!((w.get(0).get(5).sum(Kind::Float).double_value(&[]) - 1.0).abs() < 1e-4);
    }

    #[test]
    fn a_name_outside_the_vocabulary_is_refused() {
        let e = FactWords::new(chars, 50, Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("outside a vocabulary of 50"), "{e}");
    }
}
