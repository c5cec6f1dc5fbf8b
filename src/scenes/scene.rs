//! The scene model of the embedded dataset: what a synthetic painting contains, how a
//! scene is sampled from a seed, and the flat list of attribute "facts" it asserts.

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Named colours an object can have, with the RGB the painter uses.
pub const COLOURS: [(&str, [u8; 3]); 10] = [
    ("red", [210, 40, 40]),
    ("orange", [240, 140, 30]),
    ("yellow", [245, 215, 50]),
    ("green", [50, 160, 60]),
    ("blue", [40, 80, 210]),
    ("purple", [130, 50, 170]),
    ("pink", [240, 130, 180]),
    ("brown", [120, 75, 40]),
    ("white", [245, 245, 240]),
    ("black", [25, 25, 30]),
];

pub const KINDS: [&str; 10] = [
    "sun", "moon", "cloud", "bird", "tree", "house", "boat", "mountain", "tower", "flower",
];
pub const SKIES: [&str; 4] = ["dawn", "midday", "dusk", "night"];
pub const GROUNDS: [&str; 4] = ["sea", "meadow", "desert", "snow"];
pub const STYLES: [&str; 4] = ["oil", "watercolour", "pointillist", "mosaic"];
pub const SIZES: [&str; 3] = ["small", "medium", "large"];
/// Rows top to bottom, columns left to right; a position is `row * 3 + col`.
pub const ROWS: [&str; 3] = ["top", "middle", "bottom"];
pub const COLS: [&str; 3] = ["left", "centre", "right"];

/// A scene holds 1 to this many objects.
pub const MAX_OBJECTS: usize = 4;

/// Kinds that live in the sky are placed in the top two rows, the rest in the bottom two.
pub fn is_sky_kind(kind: usize) -> bool {
    kind < 4
}

/// How many values a kind's detail takes: a colour (house door, boat sail, tower flag),
/// a yes/no (tree crown, mountain snow cap, sun rays, moon phase), or none.
pub fn detail_classes(kind: usize) -> usize {
    match KINDS.get(kind).copied() {
        Some("house" | "boat" | "tower") => COLOURS.len(),
        Some("tree" | "mountain" | "sun" | "moon") => 2,
        _ => 0,
    }
}

/// A per-kind detail, the one attribute that is not colour, size or position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Detail {
    None,
    /// house: colour of the door
    Door(usize),
    /// boat: colour of the sail
    Sail(usize),
    /// tower: colour of the flag
    Flag(usize),
    /// tree: pointed (conifer) or round crown
    Pointed(bool),
    /// mountain: snow cap or bare
    SnowCap(bool),
    /// sun: rays drawn around the disc
    Rays(bool),
    /// moon: crescent or full
    Crescent(bool),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Object {
    pub kind: usize,
    pub colour: usize,
    pub size: usize,
    pub pos: usize,
    pub detail: Detail,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub sky: usize,
    pub ground: usize,
    pub style: usize,
    pub objects: Vec<Object>,
}

impl Object {
    pub fn row(&self) -> usize {
        self.pos / 3
    }
    pub fn col(&self) -> usize {
        self.pos % 3
    }
    pub fn position_name(&self) -> String {
        position_name(self.pos)
    }
}

/// "top left", "middle centre" is called "centre", "bottom right", ...
pub fn position_name(pos: usize) -> String {
    let (r, c) = (pos / 3, pos % 3);
    if r == 1 && c == 1 {
        "centre".to_string()
    } else {
        format!("{} {}", ROWS[r], COLS[c])
    }
}

impl Scene {
    /// Samples a scene: 1–4 objects of distinct kinds in distinct cells.
    pub fn sample<R: Rng>(rng: &mut R) -> Scene {
        let sky = rng.gen_range(0..SKIES.len());
        let ground = rng.gen_range(0..GROUNDS.len());
        let style = rng.gen_range(0..STYLES.len());
        let n = rng.gen_range(1..=MAX_OBJECTS);
        let mut kinds: Vec<usize> = (0..KINDS.len()).collect();
        kinds.shuffle(rng);
        let mut used = [false; 9];
        let mut objects = Vec::with_capacity(n);
        for &kind in kinds.iter() {
            if objects.len() == n {
                break;
            }
            let rows: [usize; 2] = if is_sky_kind(kind) { [0, 1] } else { [1, 2] };
            let free: Vec<usize> = rows
                .iter()
                .flat_map(|&r| (0..3).map(move |c| r * 3 + c))
                .filter(|&p| !used[p])
                .collect();
            let Some(&pos) = free.choose(rng) else {
                continue;
            };
            used[pos] = true;
            let colour = rng.gen_range(0..COLOURS.len());
            let other_colour = |rng: &mut R| loop {
                let c = rng.gen_range(0..COLOURS.len());
                if c != colour {
                    return c;
                }
            };
            let detail = match KINDS[kind] {
                "house" => Detail::Door(other_colour(rng)),
                "boat" => Detail::Sail(other_colour(rng)),
                "tower" => Detail::Flag(other_colour(rng)),
                "tree" => Detail::Pointed(rng.gen()),
                "mountain" => Detail::SnowCap(rng.gen()),
                "sun" => Detail::Rays(rng.gen()),
                "moon" => Detail::Crescent(rng.gen()),
                _ => Detail::None,
            };
            objects.push(Object {
                kind,
                colour,
                size: rng.gen_range(0..SIZES.len()),
                pos,
                detail,
            });
        }
        // Painting order: far (sky) things first, then ground things from top to bottom.
        objects.sort_by_key(|o| (!is_sky_kind(o.kind), o.row(), o.col()));
        Scene {
            sky,
            ground,
            style,
            objects,
        }
    }

    /// The attribute facts the scene asserts, e.g. `house.colour=red`. Captions are
    /// scored by comparing the fact sets parsed back from them.
    pub fn facts(&self) -> Vec<String> {
        let mut f = vec![
            format!("sky={}", SKIES[self.sky]),
            format!("ground={}", GROUNDS[self.ground]),
            format!("style={}", STYLES[self.style]),
        ];
        for o in &self.objects {
            let k = KINDS[o.kind];
            f.push(format!("{k}.colour={}", COLOURS[o.colour].0));
            f.push(format!("{k}.size={}", SIZES[o.size]));
            f.push(format!("{k}.position={}", o.position_name()));
            if let Some(d) = detail_fact(o.detail) {
                f.push(format!("{k}.{d}"));
            }
        }
        f.sort();
        f
    }
}

/// The fact string of a detail (without the kind prefix), e.g. `door=blue`.
pub fn detail_fact(d: Detail) -> Option<String> {
    Some(match d {
        Detail::None => return None,
        Detail::Door(c) => format!("door={}", COLOURS[c].0),
        Detail::Sail(c) => format!("sail={}", COLOURS[c].0),
        Detail::Flag(c) => format!("flag={}", COLOURS[c].0),
        Detail::Pointed(p) => format!("crown={}", if p { "pointed" } else { "round" }),
        Detail::SnowCap(s) => format!("snowcap={}", if s { "yes" } else { "no" }),
        Detail::Rays(r) => format!("rays={}", if r { "yes" } else { "no" }),
        Detail::Crescent(c) => format!("phase={}", if c { "crescent" } else { "full" }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn scenes_respect_layout_rules() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for _ in 0..500 {
            let s = Scene::sample(&mut rng);
            assert!((1..=MAX_OBJECTS).contains(&s.objects.len()));
            let mut cells: Vec<usize> = s.objects.iter().map(|o| o.pos).collect();
            cells.sort();
            cells.dedup();
            assert_eq!(cells.len(), s.objects.len());
            for o in &s.objects {
                let rows = if is_sky_kind(o.kind) { 0..2 } else { 1..3 };
                assert!(rows.contains(&o.row()));
                let classes = detail_classes(o.kind);
                match crate::scenes::probe::detail_index(o.detail) {
                    Some(d) => assert!((0..classes as i64).contains(&d), "{o:?}"),
                    None => assert_eq!(classes, 0, "{o:?}"),
                }
            }
        }
    }
}
