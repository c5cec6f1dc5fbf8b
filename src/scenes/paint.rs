//! The painter of the embedded dataset: rasterises a [`Scene`] into an RGB image with
//! simple anti-aliased shapes, then applies the scene's style as a visible texture.

use super::scene::{Detail, Scene, COLOURS, KINDS};
use rand::{Rng, SeedableRng};

type Rgb = [f32; 3];

/// Supersampling factor: shapes are drawn at this multiple of the output size and
/// box-filtered down, which anti-aliases edges without any geometry code.
const SS: usize = 2;
/// Where the sky meets the ground, as a fraction of the height.
pub const HORIZON: f32 = 0.55;

const SKY_GRADIENTS: [(Rgb, Rgb); 4] = [
    ([120., 140., 200.], [250., 180., 150.]), // dawn
    ([80., 150., 230.], [185., 215., 245.]),  // midday
    ([70., 50., 110.], [240., 130., 80.]),    // dusk
    ([8., 12., 40.], [40., 50., 95.]),        // night
];
const GROUND_COLOURS: [Rgb; 4] = [
    [30., 90., 160.],   // sea
    [90., 170., 70.],   // meadow
    [225., 195., 120.], // desert
    [232., 238., 245.], // snow
];
const TRUNK: Rgb = [80., 50., 25.];
const ROOF: Rgb = [75., 55., 55.];
const STEM: Rgb = [40., 120., 40.];

/// Anything that can say whether a point (normalised 0..1 coordinates) lies inside it.
trait Shape {
    fn contains(&self, x: f32, y: f32) -> bool;
    /// (x0, y0, x1, y1) in normalised coordinates.
    fn bounds(&self) -> (f32, f32, f32, f32);
}

struct Disc(f32, f32, f32);
struct Ellipse(f32, f32, f32, f32);
struct Rect(f32, f32, f32, f32);
struct Poly(Vec<(f32, f32)>);
/// A thick segment: endpoints and half-width.
struct Segment((f32, f32), (f32, f32), f32);
/// A disc with another disc cut out of it (the crescent moon).
struct Crescent(Disc, Disc);

impl Shape for Disc {
    fn contains(&self, x: f32, y: f32) -> bool {
        (x - self.0).powi(2) + (y - self.1).powi(2) <= self.2 * self.2
    }
    fn bounds(&self) -> (f32, f32, f32, f32) {
        (
            self.0 - self.2,
            self.1 - self.2,
            self.0 + self.2,
            self.1 + self.2,
        )
    }
}
impl Shape for Ellipse {
    fn contains(&self, x: f32, y: f32) -> bool {
        ((x - self.0) / self.2).powi(2) + ((y - self.1) / self.3).powi(2) <= 1.0
    }
    fn bounds(&self) -> (f32, f32, f32, f32) {
        (
            self.0 - self.2,
            self.1 - self.3,
            self.0 + self.2,
            self.1 + self.3,
        )
    }
}
impl Shape for Rect {
    fn contains(&self, x: f32, y: f32) -> bool {
        x >= self.0 && x <= self.2 && y >= self.1 && y <= self.3
    }
    fn bounds(&self) -> (f32, f32, f32, f32) {
        (self.0, self.1, self.2, self.3)
    }
}
impl Shape for Poly {
    /// Even-odd rule ray casting.
    fn contains(&self, x: f32, y: f32) -> bool {
        let p = &self.0;
        let mut inside = false;
        let mut j = p.len() - 1;
        for i in 0..p.len() {
            let ((xi, yi), (xj, yj)) = (p[i], p[j]);
            if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
                inside = !inside;
            }
            j = i;
        }
        inside
    }
    fn bounds(&self) -> (f32, f32, f32, f32) {
        let xs = self.0.iter().map(|p| p.0);
        let ys = self.0.iter().map(|p| p.1);
        (
            xs.clone().fold(f32::MAX, f32::min),
            ys.clone().fold(f32::MAX, f32::min),
            xs.fold(f32::MIN, f32::max),
            ys.fold(f32::MIN, f32::max),
        )
    }
}
impl Shape for Segment {
    fn contains(&self, x: f32, y: f32) -> bool {
        let ((ax, ay), (bx, by), hw) = (self.0, self.1, self.2);
        let (dx, dy) = (bx - ax, by - ay);
        let len2 = dx * dx + dy * dy;
        let t = if len2 > 0.0 {
            (((x - ax) * dx + (y - ay) * dy) / len2).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let (px, py) = (ax + t * dx, ay + t * dy);
        (x - px).powi(2) + (y - py).powi(2) <= hw * hw
    }
    fn bounds(&self) -> (f32, f32, f32, f32) {
        let hw = self.2;
        (
            self.0 .0.min(self.1 .0) - hw,
            self.0 .1.min(self.1 .1) - hw,
            self.0 .0.max(self.1 .0) + hw,
            self.0 .1.max(self.1 .1) + hw,
        )
    }
}
impl Shape for Crescent {
    fn contains(&self, x: f32, y: f32) -> bool {
        self.0.contains(x, y) && !self.1.contains(x, y)
    }
    fn bounds(&self) -> (f32, f32, f32, f32) {
        self.0.bounds()
    }
}

/// A float RGB canvas at `SS` times the output resolution.
struct Canvas {
    n: usize,
    px: Vec<Rgb>,
}

impl Canvas {
    fn new(n: usize) -> Self {
        Canvas {
            n,
            px: vec![[0.0; 3]; n * n],
        }
    }

    fn fill(&mut self, shape: &dyn Shape, c: Rgb) {
        let n = self.n as f32;
        let (x0, y0, x1, y1) = shape.bounds();
        let lo = |v: f32| ((v * n).floor().max(0.0) as usize).min(self.n);
        let hi = |v: f32| ((v * n).ceil().max(0.0) as usize).min(self.n);
        for py in lo(y0)..hi(y1) {
            for px in lo(x0)..hi(x1) {
                let (x, y) = ((px as f32 + 0.5) / n, (py as f32 + 0.5) / n);
                if shape.contains(x, y) {
                    self.px[py * self.n + px] = c;
                }
            }
        }
    }

    /// Box-filters down by `SS`.
    fn downsample(&self) -> (usize, Vec<Rgb>) {
        let m = self.n / SS;
        let mut out = vec![[0.0; 3]; m * m];
        for y in 0..m {
            for x in 0..m {
                let mut acc = [0.0; 3];
                for dy in 0..SS {
                    for dx in 0..SS {
                        let p = self.px[(y * SS + dy) * self.n + x * SS + dx];
                        (0..3).for_each(|k| acc[k] += p[k]);
                    }
                }
                out[y * m + x] = acc.map(|v| v / (SS * SS) as f32);
            }
        }
        (m, out)
    }
}

fn rgb(c: usize) -> Rgb {
    COLOURS[c].1.map(|v| v as f32)
}

/// Object scale as a fraction of the image side, per size class.
pub const SIZE_SCALE: [f32; 3] = [0.19, 0.25, 0.32];

fn draw_object(cv: &mut Canvas, o: &super::scene::Object) {
    let (cx, cy) = ((o.col() as f32 + 0.5) / 3.0, (o.row() as f32 + 0.5) / 3.0);
    let s = SIZE_SCALE[o.size];
    let col = rgb(o.colour);
    let p = |dx: f32, dy: f32| (cx + dx * s, cy + dy * s);
    match (KINDS[o.kind], o.detail) {
        ("sun", d) => {
            let r = 0.42 * s;
            if d == Detail::Rays(true) {
                for i in 0..8 {
                    let a = i as f32 * std::f32::consts::PI / 4.0;
                    let (c, sn) = (a.cos(), a.sin());
                    let seg = Segment(
                        (cx + c * r * 1.25, cy + sn * r * 1.25),
                        (cx + c * r * 1.75, cy + sn * r * 1.75),
                        0.035 * s,
                    );
                    cv.fill(&seg, col);
                }
            }
            cv.fill(&Disc(cx, cy, r), col);
        }
        ("moon", d) => {
            let r = 0.42 * s;
            if d == Detail::Crescent(true) {
                let cut = Disc(cx + 0.45 * r, cy - 0.2 * r, 0.85 * r);
                cv.fill(&Crescent(Disc(cx, cy, r), cut), col);
            } else {
                cv.fill(&Disc(cx, cy, r), col);
            }
        }
        ("cloud", _) => {
            cv.fill(
                &Ellipse(cx - 0.22 * s, cy + 0.05 * s, 0.28 * s, 0.18 * s),
                col,
            );
            cv.fill(
                &Ellipse(cx + 0.2 * s, cy + 0.05 * s, 0.28 * s, 0.2 * s),
                col,
            );
            cv.fill(&Ellipse(cx, cy - 0.08 * s, 0.26 * s, 0.24 * s), col);
        }
        ("bird", _) => {
            let w = 0.06 * s;
            cv.fill(&Segment(p(-0.45, -0.2), p(0.0, 0.1), w), col);
            cv.fill(&Segment(p(0.0, 0.1), p(0.45, -0.2), w), col);
        }
        ("tree", d) => {
            cv.fill(&Rect(cx - 0.06 * s, cy, cx + 0.06 * s, cy + 0.5 * s), TRUNK);
            if d == Detail::Pointed(true) {
                cv.fill(&Poly(vec![p(0.0, -0.5), p(-0.36, 0.2), p(0.36, 0.2)]), col);
            } else {
                cv.fill(&Disc(cx, cy - 0.1 * s, 0.34 * s), col);
            }
        }
        ("house", d) => {
            cv.fill(
                &Rect(cx - 0.35 * s, cy - 0.1 * s, cx + 0.35 * s, cy + 0.45 * s),
                col,
            );
            cv.fill(
                &Poly(vec![p(-0.45, -0.1), p(0.45, -0.1), p(0.0, -0.45)]),
                ROOF,
            );
            if let Detail::Door(c) = d {
                let door = Rect(cx - 0.09 * s, cy + 0.12 * s, cx + 0.09 * s, cy + 0.45 * s);
                cv.fill(&door, rgb(c));
            }
        }
        ("boat", d) => {
            let hull = Poly(vec![
                p(-0.45, 0.2),
                p(0.45, 0.2),
                p(0.3, 0.42),
                p(-0.3, 0.42),
            ]);
            cv.fill(&hull, col);
            cv.fill(&Segment(p(0.0, -0.45), p(0.0, 0.2), 0.025 * s), TRUNK);
            if let Detail::Sail(c) = d {
                let sail = Poly(vec![p(0.04, -0.42), p(0.04, 0.13), p(0.4, 0.13)]);
                cv.fill(&sail, rgb(c));
            }
        }
        ("mountain", d) => {
            cv.fill(
                &Poly(vec![p(0.0, -0.5), p(-0.55, 0.45), p(0.55, 0.45)]),
                col,
            );
            if d == Detail::SnowCap(true) {
                let cap = Poly(vec![p(0.0, -0.5), p(-0.17, -0.2), p(0.17, -0.2)]);
                cv.fill(&cap, [250., 250., 252.]);
            }
        }
        ("tower", d) => {
            cv.fill(
                &Rect(cx - 0.12 * s, cy - 0.28 * s, cx + 0.12 * s, cy + 0.5 * s),
                col,
            );
            cv.fill(
                &Poly(vec![p(-0.17, -0.28), p(0.17, -0.28), p(0.0, -0.5)]),
                ROOF,
            );
            if let Detail::Flag(c) = d {
                cv.fill(&Segment(p(0.0, -0.5), p(0.0, -0.72), 0.015 * s), TRUNK);
                cv.fill(
                    &Rect(cx, cy - 0.72 * s, cx + 0.24 * s, cy - 0.58 * s),
                    rgb(c),
                );
            }
        }
        ("flower", _) => {
            cv.fill(&Segment(p(0.0, 0.0), p(0.0, 0.45), 0.03 * s), STEM);
            for i in 0..5 {
                let a = i as f32 * std::f32::consts::TAU / 5.0;
                let (dx, dy) = (a.cos() * 0.17, a.sin() * 0.17 - 0.05);
                cv.fill(&Disc(cx + dx * s, cy + dy * s, 0.12 * s), col);
            }
            let centre = if COLOURS[o.colour].0 == "yellow" {
                rgb(1)
            } else {
                rgb(2)
            };
            cv.fill(&Disc(cx, cy - 0.05 * s, 0.08 * s), centre);
        }
        (k, _) => unreachable!("unknown kind {k}"),
    }
}

fn draw_background(cv: &mut Canvas, scene: &Scene, rng: &mut impl Rng) {
    let n = cv.n;
    let (top, horizon) = SKY_GRADIENTS[scene.sky];
    let ground = GROUND_COLOURS[scene.ground];
    let h = (HORIZON * n as f32) as usize;
    for y in 0..n {
        let c = if y < h {
            let t = y as f32 / h as f32;
            [0, 1, 2].map(|k| top[k] * (1.0 - t) + horizon[k] * t)
        } else {
            // The ground darkens slightly towards the viewer, which reads as depth.
            let t = (y - h) as f32 / (n - h) as f32;
            ground.map(|v| v * (1.0 - 0.18 * t))
        };
        cv.px[y * n..(y + 1) * n].fill(c);
    }
    if scene.sky == 3 {
        for _ in 0..(n * n / 400).max(6) {
            let (x, y) = (rng.gen::<f32>(), rng.gen::<f32>() * HORIZON * 0.95);
            cv.fill(&Disc(x, y, 0.6 / n as f32 * SS as f32), [230., 230., 200.]);
        }
    }
    if scene.ground == 0 {
        // Lighter wave lines on the sea.
        for i in 0..6 {
            let y = HORIZON + (i as f32 + 0.5) * (1.0 - HORIZON) / 6.0;
            let x = rng.gen::<f32>() * 0.6;
            cv.fill(
                &Segment((x, y), (x + 0.3, y), 0.5 / n as f32 * SS as f32),
                [90., 150., 210.],
            );
        }
    }
}

/// Deterministic value noise in [-1, 1] for an integer lattice point.
fn hash_noise(x: i64, y: i64, salt: u64) -> f32 {
    let mut h = (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (y as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ salt.wrapping_mul(0x1656_67B1_9E37_79F9);
    h ^= h >> 31;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 29;
    (h >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
}

/// Applies the style's texture to a flat rendering of side `m`.
fn apply_style(style: usize, m: usize, px: &mut [Rgb], salt: u64) {
    let unit = (m as f32 / 32.0).max(1.0); // texture scale grows with the image
    match style {
        // oil: short horizontal brush strokes of varying brightness
        0 => {
            let len = (3.0 * unit) as i64;
            for y in 0..m {
                for x in 0..m {
                    let k = 1.0
                        + 0.13 * hash_noise(x as i64 / len.max(1) + y as i64 * 7, y as i64, salt);
                    px[y * m + x] = px[y * m + x].map(|v| v * k);
                }
            }
        }
        // watercolour: soft edges, pigment lighter than the paper, fine paper grain
        1 => {
            let src = px.to_vec();
            for y in 0..m {
                for x in 0..m {
                    let mut acc = [0.0; 3];
                    let mut n = 0.0;
                    for (dx, dy) in [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)] {
                        let (xx, yy) = (x as i64 + dx, y as i64 + dy);
                        if xx >= 0 && yy >= 0 && (xx as usize) < m && (yy as usize) < m {
                            let p = src[yy as usize * m + xx as usize];
                            (0..3).for_each(|k| acc[k] += p[k]);
                            n += 1.0;
                        }
                    }
                    let grain = 1.0 + 0.05 * hash_noise(x as i64, y as i64, salt);
                    px[y * m + x] = acc.map(|v| (0.75 * v / n + 0.25 * 250.0) * grain);
                }
            }
        }
        // pointillist: the scene re-made of coloured dots on a pale canvas
        2 => {
            let src = px.to_vec();
            let step = ((1.5 * unit).round() as usize).max(2);
            px.fill([238., 232., 218.]);
            for gy in (0..m).step_by(step) {
                for gx in (0..m).step_by(step) {
                    let c = src[(gy + step / 2).min(m - 1) * m + (gx + step / 2).min(m - 1)];
                    for y in gy..(gy + step).min(m) {
                        for x in gx..(gx + step).min(m) {
                            // Round dots: the corner pixel of each cell stays canvas.
                            let corner = (x - gx == step - 1) && (y - gy == step - 1);
                            if !corner || step == 1 {
                                let k = 1.0 + 0.08 * hash_noise(gx as i64, gy as i64, salt);
                                px[y * m + x] = c.map(|v| v * k);
                            }
                        }
                    }
                }
            }
        }
        // mosaic: flat tiles with dark grout
        _ => {
            // Small tiles: at 64 px a 3-pixel tile still keeps a small object readable.
            let tile = ((1.5 * unit).round() as usize).max(2);
            for ty in (0..m).step_by(tile) {
                for tx in (0..m).step_by(tile) {
                    let mut acc = [0.0; 3];
                    let mut n = 0.0;
                    for y in ty..(ty + tile).min(m) {
                        for x in tx..(tx + tile).min(m) {
                            (0..3).for_each(|k| acc[k] += px[y * m + x][k]);
                            n += 1.0;
                        }
                    }
                    let c = acc.map(|v| v / n);
                    for y in ty..(ty + tile).min(m) {
                        for x in tx..(tx + tile).min(m) {
                            let grout = x == tx || y == ty;
                            px[y * m + x] = if grout { c.map(|v| v * 0.75) } else { c };
                        }
                    }
                }
            }
        }
    }
}

/// Paints `scene` as a `size`×`size` RGB image (row-major, 3 bytes a pixel).
/// `seed` fixes the texture and the stars, so the same scene and seed give the same bytes.
pub fn paint(scene: &Scene, size: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut cv = Canvas::new(size * SS);
    draw_background(&mut cv, scene, &mut rng);
    for o in &scene.objects {
        draw_object(&mut cv, o);
    }
    let (m, mut px) = cv.downsample();
    apply_style(scene.style, m, &mut px, seed);
    px.iter()
        .flat_map(|p| p.map(|v| v.round().clamp(0.0, 255.0) as u8))
        .collect()
}
