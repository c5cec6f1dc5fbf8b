//! 80/10/10 train/val/test splits by image id, seeded.

use crate::util::fsio::atomic_write;
use anyhow::Result;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::Path;

/// Shuffles the sorted ids with `seed` and cuts them 80/10/10. Every split gets at least
/// one id when there are three or more.
pub fn split_ids(ids: &[String], seed: u64) -> [Vec<String>; 3] {
    let mut ids = ids.to_vec();
    ids.sort();
    ids.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let n = ids.len();
    let n_val = ((n as f64 * 0.1).round() as usize).max(usize::from(n >= 3));
    let n_test = n_val;
    let n_train = n - n_val - n_test;
    let test = ids.split_off(n_train + n_val);
    let val = ids.split_off(n_train);
    [ids, val, test]
}

pub fn write_splits(dir: &Path, ids: &[String], seed: u64) -> Result<[usize; 3]> {
    let parts = split_ids(ids, seed);
    for (name, part) in ["train", "val", "test"].iter().zip(&parts) {
        let mut text = part.join("\n");
        text.push('\n');
        atomic_write(&dir.join(format!("{name}_ids.txt")), text.as_bytes())?;
    }
    Ok([parts[0].len(), parts[1].len(), parts[2].len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_disjoint_complete_and_seeded() {
        let ids: Vec<String> = (0..1000).map(|i| format!("x{i}")).collect();
        let [a, b, c] = split_ids(&ids, 3);
        assert_eq!((a.len(), b.len(), c.len()), (800, 100, 100));
        let mut all: Vec<_> = a.iter().chain(&b).chain(&c).cloned().collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 1000);
        assert_eq!(split_ids(&ids, 3)[2], c);
        assert_ne!(split_ids(&ids, 4)[2], c);
    }
}
