//! The shared byte-level BPE tokenizer (Hugging Face `tokenizers` format), its training
//! on the training split, and `tokenized_captions.json`.

use crate::data::layout::{Dataset, Split};
use crate::util::fsio::{atomic_write, sha256_file, write_json};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper,
    PreTokenizerWrapper, TokenizerBuilder,
};

pub const PAD: &str = "<pad>";
pub const BOS: &str = "<s>";
pub const EOS: &str = "</s>";
pub const UNK: &str = "<unk>";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    /// Vocabulary size including the special tokens (5,000–10,000 for real data).
    pub vocab_size: usize,
    #[serde(default = "default_min_frequency")]
    pub min_frequency: u64,
    /// Longest token sequence, start and end tokens included.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
}
fn default_min_frequency() -> u64 {
    2
}
fn default_max_len() -> usize {
    256
}

/// A loaded tokenizer with the ids of its special tokens and the hash of its file.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    pub pad: i64,
    pub bos: i64,
    pub eos: i64,
    /// SHA-256 of `tokenizer.json`: models trained with different files cannot be joined.
    pub hash: String,
    /// The file it was read from (the export copies it beside the model).
    pub source: std::path::PathBuf,
}

fn find_token(t: &tokenizers::Tokenizer, names: &[&str]) -> Option<i64> {
    names
        .iter()
        .find_map(|n| t.token_to_id(n))
        .map(|i| i as i64)
}

impl TextTokenizer {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the tokenizer {}", path.display()))?;
        // Malformed JSON is reported with its line and column here: the tokenizers crate
        // panics on some malformed files instead of returning an error (found by
        // tests/fuzz.rs), so it only sees well-formed JSON, and a panic is still caught.
        serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| anyhow!("{}: not valid JSON: {e}", path.display()))?;
        let parsed = std::panic::catch_unwind(|| {
            <tokenizers::Tokenizer as std::str::FromStr>::from_str(&text)
        })
        .map_err(|_| {
            anyhow!(
                "{}: not a tokenizers JSON file (the parser gave up)",
                path.display()
            )
        })?;
        let inner =
            parsed.map_err(|e| anyhow!("{}: not a tokenizers JSON file: {e}", path.display()))?;
        // Our own names first, then the conventions of common pretrained tokenizers.
        let pad = find_token(&inner, &[PAD, "[PAD]", "<|endoftext|>"]);
        let bos = find_token(&inner, &[BOS, "[CLS]", "<|startoftext|>", "<|endoftext|>"]);
        let eos = find_token(&inner, &[EOS, "[SEP]", "<|endoftext|>"]);
        let (Some(pad), Some(bos), Some(eos)) = (pad, bos, eos) else {
            bail!(
                "{}: needs pad, start and end special tokens ({PAD} {BOS} {EOS} or equivalents)",
                path.display()
            );
        };
        Ok(TextTokenizer {
            inner,
            pad,
            bos,
            eos,
            hash: sha256_file(path)?,
            source: path.to_path_buf(),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The ids of the vocabulary's tokens that end a sentence: ".", "!" and "?" where
    /// they are tokens of their own (byte-level vocabularies spell them the same).
    pub fn sentence_end_ids(&self) -> Vec<i64> {
        [".", "!", "?"]
            .iter()
            .filter_map(|t| self.inner.token_to_id(t))
            .map(|i| i as i64)
            .collect()
    }

    /// `<s> tokens… </s>`, truncated to `max_len` (the end token is kept).
    pub fn encode(&self, text: &str, max_len: usize) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizing: {e}"))?;
        let mut ids = Vec::with_capacity(max_len);
        ids.push(self.bos);
        ids.extend(
            enc.get_ids()
                .iter()
                .take(max_len.saturating_sub(2))
                .map(|&i| i as i64),
        );
        ids.push(self.eos);
        Ok(ids)
    }

    /// Number of tokens `text` has before truncation (start and end included).
    pub fn token_count(&self, text: &str) -> Result<usize> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizing: {e}"))?
            .len()
            + 2)
    }

    /// Decodes ids, stopping at the end token and skipping special tokens.
    pub fn decode(&self, ids: &[i64]) -> String {
        let ids: Vec<u32> = ids
            .iter()
            .take_while(|&&i| i != self.eos)
            .filter(|&&i| i != self.bos && i != self.pad && i >= 0)
            .map(|&i| i as u32)
            .collect();
        self.inner
            .decode(&ids, true)
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

/// Trains byte-level BPE on `texts` and writes a standard `tokenizer.json` to `out`.
pub fn train_bpe(texts: &[String], cfg: &TokenizerConfig, out: &Path) -> Result<()> {
    if cfg.vocab_size < 300 {
        bail!(
            "tokenizer.vocab_size must be at least 300 (256 bytes + specials + merges), got {}",
            cfg.vocab_size
        );
    }
    let specials = [PAD, BOS, EOS, UNK]
        .map(|t| AddedToken::from(t.to_string(), true))
        .to_vec();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(cfg.vocab_size)
        .min_frequency(cfg.min_frequency)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    let mut tk = TokenizerBuilder::<
        ModelWrapper,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default().into())
    .with_normalizer(None)
    .with_pre_tokenizer(Some(ByteLevel::default().into()))
    .with_post_processor(Some(ByteLevel::default().into()))
    .with_decoder(Some(ByteLevel::default().into()))
    .build()
    .map_err(|e| anyhow!("building tokenizer: {e}"))?;
    tk.train(&mut trainer, texts.iter())
        .map_err(|e| anyhow!("training tokenizer: {e}"))?;
    let tokenizer = tokenizers::Tokenizer::from(tk);
    let json = tokenizer
        .to_string(true)
        .map_err(|e| anyhow!("serialising tokenizer: {e}"))?;
    atomic_write(out, json.as_bytes())
}

#[derive(Serialize)]
struct Tokenized {
    input_ids: Vec<i64>,
    attention_mask: Vec<u8>,
}

pub struct TokenizeSummary {
    pub vocab_size: usize,
    pub tokens_mean: f64,
    pub tokens_max: usize,
    pub truncated: usize,
}

/// Trains on the training split's captions (or copies a supplied tokenizer), then
/// writes `tokenized_captions.json` for every caption, padded to `max_len`.
pub fn build_for_dataset(
    ds: &Dataset,
    cfg: &TokenizerConfig,
    supplied: Option<&Path>,
) -> Result<TokenizeSummary> {
    let captions = ds.captions()?;
    match supplied {
        Some(src) => {
            TextTokenizer::load(src)?; // validate before copying
            let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
            atomic_write(&ds.tokenizer_path(), &bytes)?;
        }
        None => {
            let train: Vec<String> = ds
                .split_ids(Split::Train)?
                .iter()
                .filter_map(|id| captions.get(id).cloned())
                .collect();
            train_bpe(&train, cfg, &ds.tokenizer_path())?;
        }
    }
    let tok = TextTokenizer::load(&ds.tokenizer_path())?;
    let mut out = BTreeMap::new();
    let (mut total, mut max, mut truncated) = (0usize, 0usize, 0usize);
    for (id, text) in &captions {
        let n = tok.token_count(text)?;
        total += n;
        max = max.max(n);
        truncated += usize::from(n > cfg.max_len);
        let mut ids = tok.encode(text, cfg.max_len)?;
        let mut mask = vec![1u8; ids.len()];
        ids.resize(cfg.max_len, tok.pad);
        mask.resize(cfg.max_len, 0);
        out.insert(
            id.clone(),
            Tokenized {
                input_ids: ids,
                attention_mask: mask,
            },
        );
    }
    write_json(&ds.tokenized_path(), &out)?;
    Ok(TokenizeSummary {
        vocab_size: tok.vocab_size(),
        tokens_mean: total as f64 / captions.len().max(1) as f64,
        tokens_max: max,
        truncated,
    })
}
