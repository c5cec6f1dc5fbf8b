//! Train/val/test splits by image id: 80/10/10 seeded, or given as id lists (the
//! Karpathy splits, a benchmark's own).

use crate::util::fsio::atomic_write;
use anyhow::{bail, Context, Result};
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

/// The three list files of a given-splits folder; checked before any image is decoded.
pub fn given_split_files(dir: &Path) -> Result<[std::path::PathBuf; 3]> {
    let find = |name: &str| {
        [format!("{name}_ids.txt"), format!("{name}.txt")]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "{}: no {name}_ids.txt or {name}.txt in the given splits",
                    dir.display()
                )
            })
    };
    Ok([find("train")?, find("val")?, find("test")?])
}

/// The given splits of `ids`: `dir` holds `train`, `val` and `test` lists (`<name>_ids.txt`
/// or `<name>.txt`), one image per line as its id or its file name (a folder and an
/// extension are dropped: Karpathy's lists name files). Refused: a list missing, an
/// image in two lists (naming the file and line), a split left empty. Returned with the
/// number of listed lines that name no image here, and of images in no list (left out
/// of every split).
pub fn given_splits(dir: &Path, ids: &[String]) -> Result<([Vec<String>; 3], usize, usize)> {
    let known: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    let mut unknown = 0;
    let mut parts: [Vec<String>; 3] = Default::default();
    let files = given_split_files(dir)?;
    for ((name, part), path) in ["train", "val", "test"]
        .iter()
        .zip(parts.iter_mut())
        .zip(files)
    {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let stem = Path::new(line)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let id = if known.contains(line) {
                line.to_string()
            } else {
                stem
            };
            if !known.contains(id.as_str()) {
                unknown += 1;
                continue;
            }
            let at = format!("{}:{}", path.display(), n + 1);
            if let Some(first) = seen.insert(id.clone(), at.clone()) {
                bail!("{at}: {id} is already listed at {first}; an image belongs to one split");
            }
            part.push(id);
        }
        if part.is_empty() {
            bail!(
                "{}: the {name} split names none of the {} prepared images",
                path.display(),
                ids.len()
            );
        }
    }
    let unlisted = ids.len() - seen.len();
    Ok((parts, unknown, unlisted))
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
