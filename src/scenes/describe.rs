//! The paragraph writer of the embedded dataset: a 100–200-word description of a
//! [`Scene`] in varied prose that states every attribute and nothing absent.
//!
//! The wording obeys a few rules that keep the paragraph parseable by `parse.rs`:
//! an object's kind noun appears only in that object's own sentences; a detail sentence
//! follows its object and starts with "It"/"Its"; ground, sky and style sentences never
//! name an object kind nor start with "It".

use super::scene::{position_name, Detail, Object, Scene, COLOURS, KINDS, SIZES};
use rand::seq::SliceRandom;
use rand::Rng;

const NUMBERS: [&str; 5] = ["no", "one", "two", "three", "four"];

fn pick<'a, R: Rng>(rng: &mut R, options: &[&'a str]) -> &'a str {
    options.choose(rng).expect("every option list is non-empty")
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn style_name<R: Rng>(rng: &mut R, style: usize) -> &'static str {
    match style {
        0 => pick(rng, &["oil painting", "painting in oil", "small oil study"]),
        1 => pick(
            rng,
            &[
                "watercolour",
                "watercolour painting",
                "light watercolour sketch",
            ],
        ),
        2 => pick(
            rng,
            &[
                "pointillist painting",
                "pointillist study",
                "pointillist canvas",
            ],
        ),
        _ => pick(rng, &["mosaic", "tile mosaic", "mosaic picture"]),
    }
}

fn sky_phrase<R: Rng>(rng: &mut R, sky: usize) -> &'static str {
    match sky {
        0 => pick(rng, &["a dawn sky", "the sky at dawn", "an early dawn sky"]),
        1 => pick(
            rng,
            &[
                "a bright midday sky",
                "the clear sky of midday",
                "a midday sky",
            ],
        ),
        2 => pick(
            rng,
            &["a dusk sky", "the sky at dusk", "a glowing dusk sky"],
        ),
        _ => pick(
            rng,
            &["a night sky", "the dark sky of night", "a deep night sky"],
        ),
    }
}

fn ground_phrase<R: Rng>(rng: &mut R, ground: usize) -> &'static str {
    match ground {
        0 => pick(rng, &["a calm sea", "the open sea", "a wide sea"]),
        1 => pick(
            rng,
            &["a green meadow", "a grassy meadow", "an open meadow"],
        ),
        2 => pick(rng, &["a sandy desert", "a dry desert", "a flat desert"]),
        _ => pick(
            rng,
            &["a white snowfield", "a quiet snowfield", "a wide snowfield"],
        ),
    }
}

fn sky_sentence<R: Rng>(rng: &mut R, sky: usize) -> String {
    match sky {
        0 => pick(rng, &[
            "The sky is pale blue at the top and warms to pink and peach along the horizon, as it does at dawn.",
            "Dawn colours the sky, which fades from soft blue above to a peach glow near the horizon.",
        ]).into(),
        1 => pick(rng, &[
            "The midday sky is a clean blue that grows lighter towards the horizon.",
            "Above, the sky of midday is bright blue, paler where it meets the land.",
        ]).into(),
        2 => pick(rng, &[
            "The dusk sky runs from deep violet at the top to a warm orange band at the horizon.",
            "At dusk the sky turns from dark violet overhead to glowing orange low down.",
        ]).into(),
        _ => pick(rng, &[
            "The night sky is a deep navy, scattered with faint pale stars.",
            "Night has fallen, and the dark navy sky is sprinkled with small faint stars.",
        ]).into(),
    }
}

fn ground_sentence<R: Rng>(rng: &mut R, ground: usize) -> String {
    match ground {
        0 => pick(rng, &[
            "Below the horizon the sea stretches out, deep blue and crossed by thin pale lines of waves.",
            "The lower part of the picture is sea, a deep blue surface marked with light wave lines.",
        ]),
        1 => pick(rng, &[
            "Below the horizon lies a meadow of fresh green grass that darkens towards the foreground.",
            "The lower half is a green meadow, slightly darker near the viewer.",
        ]),
        2 => pick(rng, &[
            "Below the horizon spreads a desert of pale golden sand that darkens towards the foreground.",
            "The lower half is desert, flat sand in warm ochre tones.",
        ]),
        _ => pick(rng, &[
            "Below the horizon lies a snowfield, almost white with a faint cool grey shading.",
            "The lower half is a snowfield of clean white, faintly grey near the viewer.",
        ]),
    }
    .into()
}

fn texture_sentence<R: Rng>(rng: &mut R, style: usize) -> String {
    match style {
        0 => pick(rng, &[
            "Short horizontal brush strokes give every surface a rough, uneven texture.",
            "The paint is laid on in short strokes, so the surface looks lively and textured.",
        ]),
        1 => pick(rng, &[
            "Soft washes bleed at the edges, the colours look light, and the grain of the paper shows through.",
            "The edges are soft and the pigment is thin, letting the paper grain show.",
        ]),
        2 => pick(rng, &[
            "Everything is built from small dots of colour set on a pale canvas.",
            "Up close the picture dissolves into tiny separate dots of colour on pale ground.",
        ]),
        _ => pick(rng, &[
            "Each form is broken into small square tiles separated by dark lines of grout.",
            "The whole picture is made of little square tiles with thin dark joints between them.",
        ]),
    }
    .into()
}

fn mood_sentence<R: Rng>(rng: &mut R, sky: usize) -> String {
    match sky {
        0 => pick(
            rng,
            &[
                "The light is fresh and quiet, like the first minutes of morning.",
                "The mood is calm and hopeful, the day only just beginning.",
            ],
        ),
        1 => pick(
            rng,
            &[
                "The light is strong and even, and the mood is open and cheerful.",
                "Everything sits in plain daylight, and the mood is bright and simple.",
            ],
        ),
        2 => pick(
            rng,
            &[
                "The warm evening light gives the scene a wistful, peaceful mood.",
                "The mood is warm and a little melancholy, the day coming to its end.",
            ],
        ),
        _ => pick(
            rng,
            &[
                "The darkness makes the scene feel still, hushed and mysterious.",
                "The mood is calm and secretive, as if the world were asleep.",
            ],
        ),
    }
    .into()
}

/// Extra sentences used only to reach the minimum length; each one is true of any scene.
const FILLERS: [&str; 4] = [
    "The horizon runs straight across the picture, a little below its middle.",
    "The forms are simple and flat, with clear outlines and no fine detail.",
    "Nothing else appears in the picture beyond what has been described.",
    "The picture is square, and the eye moves easily from one part to the next.",
];

fn verb<R: Rng>(rng: &mut R, kind: &str) -> &'static str {
    match kind {
        "sun" | "moon" => pick(rng, &["hangs", "shines", "glows"]),
        "cloud" => pick(rng, &["drifts", "floats", "hangs"]),
        "bird" => pick(rng, &["flies", "glides", "soars"]),
        "boat" => pick(rng, &["sits", "rests", "floats"]),
        "flower" => pick(rng, &["grows", "blooms", "stands"]),
        _ => pick(rng, &["stands", "rises", "sits"]),
    }
}

fn size_word<R: Rng>(rng: &mut R, size: usize) -> &'static str {
    match SIZES[size] {
        "small" => pick(rng, &["small", "little"]),
        "medium" => pick(rng, &["medium", "medium-sized"]),
        _ => pick(rng, &["large", "big"]),
    }
}

fn object_sentence<R: Rng>(rng: &mut R, o: &Object) -> String {
    let kind = KINDS[o.kind];
    let colour = COLOURS[o.colour].0;
    let size = size_word(rng, o.size);
    let pos = position_name(o.pos);
    let v = verb(rng, kind);
    let a = article(size);
    match rng.gen_range(0..3) {
        0 => format!("In the {pos} {a} {size} {colour} {kind} {v}."),
        1 => format!(
            "{} {size} {colour} {kind} {v} in the {pos} of the picture.",
            capitalise(a)
        ),
        _ => format!("The {pos} holds {a} {size} {kind}, painted {colour}."),
    }
}

fn detail_sentence<R: Rng>(rng: &mut R, detail: Detail) -> Option<String> {
    let c = |i: usize| COLOURS[i].0;
    Some(match detail {
        Detail::None => return None,
        Detail::Door(i) => match rng.gen_range(0..2) {
            0 => format!("Its door is painted {}.", c(i)),
            _ => format!("Its front has a narrow {} door.", c(i)),
        },
        Detail::Sail(i) => match rng.gen_range(0..2) {
            0 => format!("Its sail is {}.", c(i)),
            _ => format!("Its mast carries a {} sail.", c(i)),
        },
        Detail::Flag(i) => match rng.gen_range(0..2) {
            0 => format!("Its roof flies a {} flag.", c(i)),
            _ => format!("Its small flag is {}.", c(i)),
        },
        Detail::Pointed(true) => "Its crown is pointed, like a fir.".into(),
        Detail::Pointed(false) => "Its crown is round and full.".into(),
        Detail::SnowCap(true) => "Its peak is capped with snow.".into(),
        Detail::SnowCap(false) => "Its peak is bare, with no snow.".into(),
        Detail::Rays(true) => "Its short rays spread out all around.".into(),
        Detail::Rays(false) => "It is a plain disc without rays.".into(),
        Detail::Crescent(true) => "It is a thin crescent.".into(),
        Detail::Crescent(false) => "It is full and perfectly round.".into(),
    })
}

fn composition_sentence<R: Rng>(rng: &mut R, scene: &Scene) -> String {
    let n = scene.objects.len();
    let names: Vec<String> = scene
        .objects
        .iter()
        .map(|o| format!("{} {}", article(KINDS[o.kind]), KINDS[o.kind]))
        .collect();
    let list = match names.len() {
        1 => names[0].clone(),
        _ => format!("{} and {}", names[..n - 1].join(", "), names[n - 1]),
    };
    let noun = if n == 1 { "subject" } else { "subjects" };
    match rng.gen_range(0..2) {
        0 => format!("The composition holds {} {noun}: {list}.", NUMBERS[n]),
        _ => format!(
            "There {} {} {noun} in all: {list}.",
            if n == 1 { "is" } else { "are" },
            NUMBERS[n]
        ),
    }
}

fn palette_sentence<R: Rng>(rng: &mut R, scene: &Scene) -> String {
    let mut colours: Vec<&str> = scene.objects.iter().map(|o| COLOURS[o.colour].0).collect();
    colours.dedup();
    let list = match colours.len() {
        1 => colours[0].to_string(),
        n => format!("{} and {}", colours[..n - 1].join(", "), colours[n - 1]),
    };
    match rng.gen_range(0..2) {
        0 => format!("Against the background the main accents are {list}."),
        _ => format!("The strongest accents in the palette are {list}."),
    }
}

/// Counts words the way the length rule counts them: whitespace-separated tokens.
pub fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Writes the paragraph for `scene`; always 100–200 words.
pub fn describe<R: Rng>(scene: &Scene, rng: &mut R) -> String {
    let opening = match rng.gen_range(0..3) {
        0 => format!(
            "This {} shows {} above {}.",
            style_name(rng, scene.style),
            sky_phrase(rng, scene.sky),
            ground_phrase(rng, scene.ground)
        ),
        1 => {
            let s = style_name(rng, scene.style);
            format!(
                "{} {s} depicts {} under {}.",
                capitalise(article(s)),
                ground_phrase(rng, scene.ground),
                sky_phrase(rng, scene.sky)
            )
        }
        _ => {
            let s = style_name(rng, scene.style);
            format!(
                "The picture is {} {s} of {} beneath {}.",
                article(s),
                ground_phrase(rng, scene.ground),
                sky_phrase(rng, scene.sky)
            )
        }
    };
    let mut head = vec![opening];
    let mut setting = vec![
        sky_sentence(rng, scene.sky),
        ground_sentence(rng, scene.ground),
    ];
    if rng.gen_bool(0.5) {
        setting.reverse();
    }
    head.extend(setting);
    head.push(composition_sentence(rng, scene));
    for o in &scene.objects {
        head.push(object_sentence(rng, o));
        head.extend(detail_sentence(rng, o.detail));
    }
    let mut tail = vec![
        palette_sentence(rng, scene),
        texture_sentence(rng, scene.style),
    ];
    if rng.gen_bool(0.5) {
        tail.reverse();
    }
    tail.push(mood_sentence(rng, scene.sky));
    let mut sentences: Vec<String> = head.into_iter().chain(tail).collect();
    let mut fillers = FILLERS.to_vec();
    fillers.shuffle(rng);
    let mut fillers = fillers.into_iter();
    while word_count(&sentences.join(" ")) < 105 {
        match fillers.next() {
            // Before the closing mood sentence, so the paragraph still ends on the mood.
            Some(f) => sentences.insert(sentences.len() - 1, f.to_string()),
            None => break,
        }
    }
    sentences.join(" ")
}
