//! The caption parser of the embedded dataset: reads the attribute facts back out of a
//! paragraph (a reference one or one a model wrote), so captions and images can be
//! scored attribute by attribute.

use super::scene::{COLOURS, GROUNDS, KINDS, SKIES, STYLES};
use std::collections::BTreeSet;

fn words(sentence: &str) -> Vec<String> {
    sentence
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

fn colour_of(word: &str) -> Option<&'static str> {
    COLOURS.iter().map(|c| c.0).find(|c| *c == word)
}

fn size_of(word: &str) -> Option<&'static str> {
    match word {
        "small" | "little" => Some("small"),
        "medium" => Some("medium"),
        "large" | "big" => Some("large"),
        _ => None,
    }
}

const DETAIL_NOUNS: [(&str, &str); 3] = [("house", "door"), ("boat", "sail"), ("tower", "flag")];

/// Detail facts (without the kind prefix) stated in `w` about an object of `kind`.
fn details(kind: &str, w: &[String], its_sentence: bool) -> Vec<String> {
    let has = |x: &str| w.iter().any(|v| v == x);
    let negated = has("no") || has("without") || has("bare") || has("plain");
    let mut out = vec![];
    if let Some((_, noun)) = DETAIL_NOUNS.iter().find(|(k, _)| *k == kind) {
        if has(noun) {
            // In an "Its …" sentence any colour is the detail's; elsewhere only the colour
            // right before the noun ("a blue door") is.
            let colour = w.iter().enumerate().find_map(|(i, v)| {
                let before_noun = w.get(i + 1).is_some_and(|n| n == noun);
                colour_of(v).filter(|_| its_sentence || before_noun)
            });
            if let Some(c) = colour {
                out.push(format!("{noun}={c}"));
            }
        }
    }
    match kind {
        "tree" if has("pointed") => out.push("crown=pointed".into()),
        "tree" if has("round") => out.push("crown=round".into()),
        "mountain" if has("snow") => {
            out.push(format!("snowcap={}", if negated { "no" } else { "yes" }))
        }
        "sun" if has("rays") => out.push(format!("rays={}", if negated { "no" } else { "yes" })),
        "moon" if has("crescent") => out.push("phase=crescent".into()),
        "moon" if has("full") => out.push("phase=full".into()),
        _ => {}
    }
    out
}

/// Parses a paragraph into the fact set of [`super::scene::Scene::facts`], sorted.
pub fn parse(text: &str) -> Vec<String> {
    let mut facts = BTreeSet::new();
    let all = words(text);
    let first_of = |names: &[&str]| all.iter().find(|w| names.contains(&w.as_str())).cloned();
    if let Some(s) = first_of(&SKIES) {
        facts.insert(format!("sky={s}"));
    }
    if let Some(g) = first_of(&["sea", "meadow", "desert", "snowfield"]) {
        let g = if g == "snowfield" {
            GROUNDS[3].to_string()
        } else {
            g
        };
        facts.insert(format!("ground={g}"));
    }
    if let Some(s) = first_of(&STYLES) {
        facts.insert(format!("style={s}"));
    }
    let mut current: Option<&str> = None;
    for sentence in text.split(['.', '!', '?', ';']) {
        let w = words(sentence);
        let kinds: Vec<&str> = KINDS
            .iter()
            .copied()
            .filter(|k| w.iter().any(|v| v == k))
            .collect();
        match kinds.as_slice() {
            [kind] => {
                current = Some(kind);
                let detail_noun = DETAIL_NOUNS.iter().find(|(k, _)| k == kind).map(|d| d.1);
                let colour = w.iter().enumerate().find_map(|(i, v)| {
                    let before_detail = w.get(i + 1).map(|n| Some(n.as_str()) == detail_noun);
                    colour_of(v).filter(|_| before_detail != Some(true))
                });
                if let Some(c) = colour {
                    facts.insert(format!("{kind}.colour={c}"));
                }
                if let Some(s) = w.iter().find_map(|v| size_of(v)) {
                    facts.insert(format!("{kind}.size={s}"));
                }
                let row = w
                    .iter()
                    .find(|v| ["top", "middle", "bottom"].contains(&v.as_str()));
                let col = w
                    .iter()
                    .find(|v| ["left", "centre", "right"].contains(&v.as_str()));
                let pos = match (row, col) {
                    (Some(r), Some(c)) if !(r == "middle" && c == "centre") => format!("{r} {c}"),
                    (None | Some(_), Some(c)) if c == "centre" => "centre".into(),
                    (Some(r), Some(c)) => format!("{r} {c}"),
                    _ => String::new(),
                };
                if !pos.is_empty() {
                    facts.insert(format!("{kind}.position={pos}"));
                }
                for d in details(kind, &w, false) {
                    facts.insert(format!("{kind}.{d}"));
                }
            }
            [] => {
                let starts_with_it = w.first().is_some_and(|f| f == "it" || f == "its");
                if let (true, Some(kind)) = (starts_with_it, current) {
                    for d in details(kind, &w, true) {
                        facts.insert(format!("{kind}.{d}"));
                    }
                }
            }
            _ => current = None,
        }
    }
    facts.into_iter().collect()
}

/// The fields a fact can state, for per-field scores: the scene's three, then an
/// object's colour, size, position and its kind's detail (door, sail, flag, crown, snow
/// cap, rays, phase). An object's kind is part of every one of its facts' names.
pub const FACT_FIELDS: [&str; 7] = [
    "sky", "ground", "style", "colour", "size", "position", "detail",
];

/// The field of a fact: `house.door=blue` → `detail`, `sky=dawn` → `sky`.
pub fn fact_field(fact: &str) -> &'static str {
    let attr = fact.split('=').next().unwrap_or_default();
    let attr = attr.rsplit('.').next().unwrap_or_default();
    FACT_FIELDS
        .iter()
        .find(|f| **f == attr)
        .copied()
        .unwrap_or("detail")
}

/// Precision, recall and F1 of `predicted` facts against `truth`.
pub fn fact_scores(predicted: &[String], truth: &[String]) -> (f64, f64, f64) {
    let p: BTreeSet<&String> = predicted.iter().collect();
    let t: BTreeSet<&String> = truth.iter().collect();
    let hit = p.intersection(&t).count() as f64;
    let precision = if p.is_empty() {
        0.0
    } else {
        hit / p.len() as f64
    };
    let recall = if t.is_empty() {
        0.0
    } else {
        hit / t.len() as f64
    };
    let f1 = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    (precision, recall, f1)
}

#[cfg(test)]
mod tests {
    use super::super::describe::{describe, word_count};
    use super::super::scene::Scene;
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn parser_recovers_every_attribute_of_generated_paragraphs() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (mut hit, mut total) = (0usize, 0usize);
        for _ in 0..3000 {
            let scene = Scene::sample(&mut rng);
            let text = describe(&scene, &mut rng);
            let n = word_count(&text);
            assert!((100..=200).contains(&n), "{n} words: {text}");
            let truth = scene.facts();
            let got = parse(&text);
            total += truth.len();
            hit += truth.iter().filter(|f| got.contains(f)).count();
            let extra: Vec<_> = got.iter().filter(|f| !truth.contains(f)).collect();
            assert!(extra.is_empty(), "invented {extra:?} from: {text}");
        }
        assert!(hit as f64 / total as f64 >= 0.99, "recovered {hit}/{total}");
    }

    #[test]
    fn every_fact_of_a_scene_has_its_field() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut seen = BTreeSet::new();
        for _ in 0..300 {
            for f in Scene::sample(&mut rng).facts() {
                seen.insert(fact_field(&f));
            }
        }
        assert_eq!(seen, FACT_FIELDS.iter().copied().collect());
        assert_eq!(fact_field("house.door=blue"), "detail");
        assert_eq!(fact_field("moon.position=top left"), "position");
        assert_eq!(fact_field("style=oil"), "style");
    }

    #[test]
    fn scores_are_set_overlap() {
        let t = vec!["a=1".to_string(), "b=2".to_string()];
        let p = vec!["a=1".to_string(), "c=3".to_string()];
        let (pr, re, f1) = fact_scores(&p, &t);
        assert_eq!((pr, re, f1), (0.5, 0.5, 0.5));
    }
}
