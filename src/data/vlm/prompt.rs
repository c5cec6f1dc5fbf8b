//! The chat-completions request for one artwork: the image as a base64
//! data URL, its metadata, and the instruction to write a 150–200-word visual description;
//! plus the checks on what comes back (length, refusal).

use crate::data::layout::MetadataRow;
use base64::Engine;
use serde_json::{json, Value};

pub const SYSTEM: &str = "You are an art historian who writes precise visual descriptions \
of artworks for a dataset that trains image models. Describe only what can be seen, in \
plain prose, without lists, headings or preamble.";

/// The user message's text: the instruction and whatever metadata the row has.
pub fn instruction(row: &MetadataRow, min_words: usize, max_words: usize) -> String {
    let target_low = min_words.max(150.min(max_words));
    let mut lines = vec![format!(
        "Write a {target_low}–{max_words} word visual description of this artwork: its \
composition, colours, subjects, details, textures and symbolism. One paragraph."
    )];
    let fields = [
        ("Title", &row.title),
        ("Artist", &row.artist),
        ("Year", &row.year),
        ("Medium", &row.medium),
        ("Style / movement", &row.style),
    ];
    let known: Vec<String> = fields
        .iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| format!("{k}: {}", v.trim()))
        .collect();
    if !known.is_empty() {
        lines.push(format!(
            "Metadata (use it, but describe the picture itself):\n{}",
            known.join("\n")
        ));
    }
    lines.join("\n\n")
}

/// The MIME type of an image file's bytes, from its magic number.
pub fn mime_of(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        "image/jpeg"
    } else {
        "image/png"
    }
}

pub fn data_url(bytes: &[u8]) -> String {
    format!(
        "data:{};base64,{}",
        mime_of(bytes),
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The first request for an image.
pub fn request(model: &str, instruction: &str, image_url: &str, max_tokens: u32) -> Value {
    json!({
        "model": model,
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": [
                {"type": "text", "text": instruction},
                {"type": "image_url", "image_url": {"url": image_url}},
            ]},
        ],
    })
}

/// The request that asks again after an answer of the wrong length: the conversation so
/// far, then a correction.
pub fn ask_again(first: &Value, answer: &str, words: usize, min: usize, max: usize) -> Value {
    let mut req = first.clone();
    let msgs = req["messages"]
        .as_array_mut()
        .expect("request() always builds a messages array");
    msgs.push(json!({"role": "assistant", "content": answer}));
    msgs.push(json!({"role": "user", "content": format!(
        "That description has {words} words. Rewrite it as one paragraph of {min}–{max} words."
    )}));
    req
}

pub fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Phrases with which models decline; an answer that opens with one is a refusal, not a
/// caption.
const REFUSALS: [&str; 9] = [
    "i'm sorry",
    "i am sorry",
    "sorry, i",
    "i can't",
    "i cannot",
    "i can not",
    "i'm unable",
    "i am unable",
    "as an ai",
];

pub fn is_refusal(text: &str) -> bool {
    let head: String = text.trim_start().chars().take(60).collect();
    let head = head.to_lowercase().replace('’', "'");
    REFUSALS.iter().any(|r| head.starts_with(r))
}

/// The request with the image's base64 shortened, for `--dry-run` printing.
pub fn redacted(req: &Value) -> Value {
    let mut v = req.clone();
    if let Some(msgs) = v["messages"].as_array_mut() {
        for m in msgs {
            if let Some(parts) = m["content"].as_array_mut() {
                for p in parts {
                    if let Some(url) = p.pointer_mut("/image_url/url") {
                        let s = url.as_str().unwrap_or_default();
                        let head = s.split(',').next().unwrap_or_default();
                        *url = Value::String(format!("{head},… ({} bytes)", s.len()));
                    }
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_lengths() {
        assert!(is_refusal("I'm sorry, but I can't help with that."));
        assert!(is_refusal("  I cannot describe this image."));
        assert!(is_refusal("I’m sorry"));
        assert!(!is_refusal("A sorry-looking dog sits under a tree."));
        assert_eq!(word_count(" a  b\nc "), 3);
    }

    #[test]
    fn instruction_names_known_metadata_only() {
        let row = MetadataRow {
            title: "Water Lilies".into(),
            artist: "Claude Monet".into(),
            ..Default::default()
        };
        let text = instruction(&row, 100, 200);
        assert!(text.contains("Title: Water Lilies") && text.contains("Artist: Claude Monet"));
        assert!(!text.contains("Year:"));
        assert!(text.contains("150–200"));
    }

    #[test]
    fn ask_again_keeps_the_conversation() {
        let first = request("m", "describe", "data:image/png;base64,AAAA", 400);
        let again = ask_again(&first, "Too short.", 2, 100, 200);
        let msgs = again["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 4);
        assert_eq!(msgs[2]["content"], "Too short.");
        let shown = redacted(&first).to_string();
        assert!(!shown.contains("AAAA"));
    }
}
