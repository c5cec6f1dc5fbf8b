//! The general path's conditioning model, after AttnGAN's DAMSM (Xu et al., CVPR 2018):
//! an image encoder and a text encoder trained together on images and paragraphs alone.
//! Three contrastive terms shape them:
//!
//! - *sentence*: the paragraph's vector against the image's (symmetric InfoNCE, CLIP);
//! - *words*: each word attends to the image's regions and is matched to what it found
//!   (DAMSM's word-level score: attention γ1, word aggregation γ2, scale γ3);
//! - *places*: learned place queries read a coarse grid of place vectors off the
//!   paragraph ([`LayoutReader`]), each matched to the pooled image regions of its place
//!   against the other images' same place. This is the layout the generators paint from,
//!   learned from pixels instead of scene metadata.
//!
//! It is a conditioning model, not an evaluator: the captioner reads its frozen image
//! encoder and the generators its frozen text side, while the contrastive evaluator that
//! grades them is trained apart (TISE, Dinh et al. 2021).

use super::text_encoder::{Encoded, TextEncoder, TextEncoderConfig};
use crate::nn::conv::{default_stem, is_default_stem, total_stride, ConvEncoder};
use crate::nn::place_reader::LayoutReader;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlignConfig {
    pub image_size: i64,
    /// The image encoder's stages (the captioner's CNN: a captioner reading this encoder
    /// must name the same `channels`, `stem` and `image_size`).
    pub channels: Vec<i64>,
    #[serde(default = "default_stem", skip_serializing_if = "is_default_stem")]
    pub stem: i64,
    /// The text encoder; its `dim` is the width of every shared space.
    pub text: TextEncoderConfig,
    /// Side of the place grid (3: the left/centre/right × top/middle/bottom that
    /// captions name).
    #[serde(default = "d_places")]
    pub places: i64,
    /// Weights of the word and place terms (the sentence term weighs 1).
    #[serde(default = "d_one")]
    pub word_weight: f64,
    #[serde(default = "d_one")]
    pub place_weight: f64,
    /// Weight of the within-picture place term: each place of a caption against the
    /// other places of its own picture ([`Aligner::pair_losses`]); 0 leaves it out.
    #[serde(default, skip_serializing_if = "crate::config::is_default")]
    pub within_weight: f64,
    /// Hard negatives for the place term (Robinson et al., ICLR 2021): each negative
    /// weighs in proportion to exp(hardness × its logit), so the pictures whose place the
    /// caption's place cannot yet tell apart dominate the loss; 0 weighs them all alike.
    ///
    /// Why: against a random batch a place is matched most easily by its background (a
    /// top row's sky, a bottom row's ground), and the term stops there; the negatives it
    /// still confuses are the look-alikes. Measured on the embedded set, a VAE painting
    /// from the places finds its caption far more often, though the places hold less of
    /// each object, not more (docs/results.md, "Hard place negatives").
    #[serde(default, skip_serializing_if = "crate::config::is_default")]
    pub place_hardness: f64,
    /// Weight of the words-as-labels term ([`bag_targets`]); 0 leaves the head out.
    #[serde(default)]
    pub bag_weight: f64,
    /// Hash buckets for the word pairs of a sentence in that term.
    #[serde(default = "d_buckets")]
    pub pair_buckets: i64,
}
fn d_places() -> i64 {
    3
}
fn d_buckets() -> i64 {
    4096
}
fn d_one() -> f64 {
    1.0
}

/// DAMSM's smoothing factors (AttnGAN's γ1, γ2, γ3), for unit vectors: how sharply a
/// word attends to regions, how much the best-matched words dominate a caption's score,
/// and the score's scale before the softmax over the batch.
const ATTEND: f64 = 10.0;
const AGGREGATE: f64 = 5.0;
const SCALE: f64 = 10.0;

/// The image side: a CNN grid, then [`AlignImageHeads`] over it.
pub struct AlignImage {
    pub cnn: ConvEncoder,
    pub heads: AlignImageHeads,
}

/// What the image side adds to its CNN: its regions projected to the shared width (with
/// their positions, so "top left" can match a place), a global vector, the pooled places
/// and, with `bag_weight`, the words-as-labels head. Its variables sit under `image.`,
/// beside the CNN's `image.cnn.`, so a captioner can load them without the CNN.
pub struct AlignImageHeads {
    regions: nn::Linear,
    region_pos: Tensor,
    global: nn::Linear,
    /// With `bag_weight`: each region's logits over the words-as-labels (an MLP).
    bag: Option<nn::Sequential>,
    grid: i64,
    places: i64,
}

pub struct ImageParts {
    /// `(B, R, D)` region vectors with their positions.
    pub regions: Tensor,
    /// `(B, D)`.
    pub global: Tensor,
    /// `(B, P², D)` region vectors pooled to the place grid, row-major from the top left.
    pub places: Tensor,
}

impl AlignImage {
    fn new(p: nn::Path, cfg: &AlignConfig) -> Result<Self> {
        let heads = AlignImageHeads::new(&p, cfg)?;
        Ok(AlignImage {
            cnn: ConvEncoder::with_stem(&p / "cnn", &cfg.channels, cfg.stem),
            heads,
        })
    }

    pub fn forward(&self, images: &Tensor, train: bool) -> ImageParts {
        self.heads.read(&self.cnn.forward(images, train))
    }
}

impl AlignImageHeads {
    /// The heads under `p` (the image side's path).
    pub fn new(p: &nn::Path, cfg: &AlignConfig) -> Result<Self> {
        let down = total_stride(cfg.channels.len(), cfg.stem);
        let Some(&c) = cfg.channels.last() else {
            bail!("model.channels is empty: the image encoder needs at least one stage");
        };
        if cfg.stem < 2 || cfg.image_size % down != 0 {
            bail!(
                "model.image_size {} must be divisible by {down} (a stem of at least 2, then 2 per further channel stage)",
                cfg.image_size
            );
        }
        let grid = cfg.image_size / down;
        if cfg.places < 1 || cfg.places > grid {
            bail!(
                "model.places {} must be between 1 and the image grid's side {grid}",
                cfg.places
            );
        }
        let d = cfg.text.dim;
        Ok(AlignImageHeads {
            regions: nn::linear(p / "regions", c, d, Default::default()),
            region_pos: p.var(
                "region_pos",
                &[grid * grid, d],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            ),
            global: nn::linear(p / "global", c * grid * grid, d, Default::default()),
            bag: (cfg.bag_weight > 0.0).then(|| {
                let labels = cfg.text.vocab_size + cfg.pair_buckets;
                nn::seq()
                    .add(nn::linear(p / "bag" / "fc1", d, 2 * d, Default::default()))
                    .add_fn(|x| x.gelu("tanh"))
                    .add(nn::linear(
                        p / "bag" / "fc2",
                        2 * d,
                        labels,
                        Default::default(),
                    ))
            }),
            grid,
            places: cfg.places,
        })
    }

    /// The parts read off a CNN grid `f` `(B, C, g, g)`.
    pub fn read(&self, f: &Tensor) -> ImageParts {
        let r = self.regions.forward(&f.flatten(2, -1).transpose(1, 2)); // (B, g², D)
        let (b, d) = (r.size()[0], r.size()[2]);
        let grid = r
            .transpose(1, 2)
            .reshape([b, d, self.grid, self.grid])
            .adaptive_avg_pool2d([self.places, self.places]);
        ImageParts {
            regions: &r + &self.region_pos,
            global: self.global.forward(&f.flatten(1, -1)),
            places: grid.flatten(2, -1).transpose(1, 2),
        }
    }

    /// The words-as-labels logits `(B, vocab + buckets)`: each label's best region (the
    /// multiple-instance reading of Fang et al., CVPR 2015: a word is about one place).
    /// `None` without the head.
    pub fn bag_logits(&self, parts: &ImageParts) -> Option<Tensor> {
        let bag = self.bag.as_ref()?;
        Some(parts.regions.apply(bag).amax([1], false))
    }
}

/// The paragraph's words as the image's labels (Joulin et al., ECCV 2016; Wu et al.,
/// CVPR 2016), with what binds them: row `(vocab + buckets)` of a multi-hot target per
/// caption, holding each token of the caption and, hashed into `buckets`, each pair of
/// distinct tokens that share a sentence ("pink" with "sun", "sun" with "right"). Tokens
/// in `ignore` (padding, start, end) are no label; a sentence ends at any of `ends`.
pub fn bag_targets(
    tokens: &Tensor,
    ignore: &[i64],
    ends: &[i64],
    vocab: i64,
    buckets: i64,
) -> Result<Tensor> {
    let (b, l) = (tokens.size()[0], tokens.size()[1]);
    let rows: Vec<i64> = Vec::<i64>::try_from(tokens.to_device(tch::Device::Cpu).flatten(0, -1))?;
    let width = (vocab + buckets) as usize;
    let mut out = vec![0f32; b as usize * width];
    for (r, row) in rows.chunks(l as usize).enumerate() {
        let labels = &mut out[r * width..(r + 1) * width];
        let mut sentence: Vec<i64> = vec![];
        let close = |sentence: &mut Vec<i64>, labels: &mut [f32]| {
            sentence.sort_unstable();
            sentence.dedup();
            for (i, &a) in sentence.iter().enumerate() {
                labels[a as usize] = 1.0;
                for &c in &sentence[i + 1..] {
                    labels[(vocab + pair_bucket(a, c, buckets)) as usize] = 1.0;
                }
            }
            sentence.clear();
        };
        for &t in row {
            if ends.contains(&t) {
                close(&mut sentence, labels);
            } else if !ignore.contains(&t) && (0..vocab).contains(&t) {
                sentence.push(t);
            }
        }
        close(&mut sentence, labels);
    }
    Ok(Tensor::from_slice(&out).view([b, vocab + buckets]))
}

/// The bucket of the token pair `a < c` (a SplitMix64 finaliser of both ids).
fn pair_bucket(a: i64, c: i64, buckets: i64) -> i64 {
    let mut z = (a as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (c as u64);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % buckets as u64) as i64
}

/// Binary cross-entropy of label logits against multi-hot targets, summed over labels
/// and divided by the batch's positives: about one unit per word the caption holds,
/// whatever the label space's size.
pub fn bag_loss(logits: &Tensor, targets: &Tensor) -> Tensor {
    let bce =
        logits.binary_cross_entropy_with_logits::<Tensor>(targets, None, None, tch::Reduction::Sum);
    bce / targets.sum(Kind::Float).clamp_min(1.0)
}

/// What the text side adds to its encoder: word and sentence projections and the place
/// reader. Its variables sit under `text.`, beside the encoder's, so a generator loads
/// the whole frozen text side with one prefix.
pub struct AlignTextHeads {
    words: nn::Linear,
    sentence: nn::Linear,
    reader: LayoutReader,
}

pub struct TextParts {
    /// `(B, L, D)` word vectors and their mask `(B, L)`.
    pub words: Tensor,
    pub mask: Tensor,
    /// `(B, D)`.
    pub sentence: Tensor,
    /// `(B, P², D)` place vectors, row-major from the top left.
    pub places: Tensor,
}

impl AlignTextHeads {
    /// The heads under `p` (the text side's path) for an encoder of width `dim`.
    pub fn new(p: &nn::Path, dim: i64, places: i64) -> Self {
        AlignTextHeads {
            words: nn::linear(p / "word_proj", dim, dim, Default::default()),
            sentence: nn::linear(p / "sentence_proj", dim, dim, Default::default()),
            reader: LayoutReader::new(p / "places", places, dim),
        }
    }

    pub fn read(&self, e: &Encoded) -> TextParts {
        let words = self.words.forward(&e.seq);
        let places = self.reader.forward(&words, &e.mask);
        TextParts {
            sentence: self.sentence.forward(&e.pooled),
            places,
            words,
            mask: e.mask.shallow_clone(),
        }
    }
}

pub struct Aligner {
    pub cfg: AlignConfig,
    pub image: AlignImage,
    pub text: TextEncoder,
    pub heads: AlignTextHeads,
    logit_scale: Tensor,
}

/// The terms of one batch, for the training log.
pub struct AlignLosses {
    pub sentence: Tensor,
    pub words: Tensor,
    pub places: Tensor,
    pub within: Tensor,
    pub bag: Tensor,
}

impl AlignLosses {
    pub fn total(&self, cfg: &AlignConfig) -> Tensor {
        &self.sentence
            + &self.words * cfg.word_weight
            + &self.places * cfg.place_weight
            + &self.within * cfg.within_weight
            + &self.bag * cfg.bag_weight
    }
}

fn unit(x: &Tensor) -> Tensor {
    super::clip::l2_normalise(x)
}

/// Symmetric cross-entropy of square `logits` `(…, N, N)` whose diagonal holds the pairs.
fn symmetric_ce(logits: &Tensor) -> Tensor {
    (ce_by_rows(logits) + ce_by_rows(&logits.transpose(-1, -2))) / 2.0
}

/// [`symmetric_ce`] with hard negatives: each direction's negatives reweighted by
/// exp(`hardness` × logit), normalised to keep their total weight (N − 1). The weights are
/// constants (detached), added to the logits as their logarithm; `hardness` 0 is
/// [`symmetric_ce`].
fn hard_symmetric_ce(logits: &Tensor, hardness: f64) -> Tensor {
    let n = logits.size()[logits.dim() - 1];
    if hardness == 0.0 || n < 2 {
        return symmetric_ce(logits);
    }
    let pair = Tensor::eye(n, (Kind::Bool, logits.device()));
    let reweighted = |l: &Tensor| {
        // The diagonal (the pair) is left out of the normaliser and keeps weight 1; masked
        // fills, not products with a mask, so no ∞ × 0 in any precision.
        let scaled = (l.detach() * hardness).masked_fill(&pair, f64::NEG_INFINITY);
        let log_w = (&scaled - scaled.logsumexp([-1], true) + ((n - 1) as f64).ln())
            .masked_fill(&pair, 0.0);
        l + log_w
    };
    let rows = reweighted(logits);
    let cols = reweighted(&logits.transpose(-1, -2));
    (ce_by_rows(&rows) + ce_by_rows(&cols)) / 2.0
}

/// Cross-entropy of square `logits` `(…, N, N)` read row by row, the pair on the diagonal.
fn ce_by_rows(logits: &Tensor) -> Tensor {
    let n = logits.size()[logits.dim() - 1];
    let rows = logits.reshape([-1, n]);
    let k = rows.size()[0] / n;
    let target = Tensor::arange(n, (Kind::Int64, logits.device())).repeat([k]);
    rows.cross_entropy_for_logits(&target)
}

/// DAMSM's word-level matching score of every caption against every image: `(T, I)`.
/// `words` `(T, L, D)` and `regions` `(I, R, D)` are unit vectors; `mask` `(T, L)` is 1
/// for real tokens. Each word's context is its attention-weighted sum of regions; the
/// score is the soft maximum over words of the cosine between a word and its context.
/// The context is never built: ctx·w = Σ attn·sim, and |ctx|² = attnᵀ G attn with G the
/// regions' Gram matrix, so the cost is (T, I, L, R) rather than (T, I, L, D).
pub fn word_scores(words: &Tensor, mask: &Tensor, regions: &Tensor) -> Tensor {
    let sim = words
        .unsqueeze(1)
        .matmul(&regions.transpose(1, 2).unsqueeze(0)); // (T, I, L, R)
    let attn = (&sim * ATTEND).softmax(-1, Kind::Float);
    let dot = (&attn * &sim).sum_dim_intlist(-1, false, Kind::Float); // (T, I, L)
    let gram = regions.matmul(&regions.transpose(1, 2)).unsqueeze(0); // (1, I, R, R)
    let norm_sq = (attn.matmul(&gram) * &attn).sum_dim_intlist(-1, false, Kind::Float);
    let cosine = dot / norm_sq.clamp_min(1e-12).sqrt();
    let pad = (mask.unsqueeze(1) - 1.0) * 1e4; // 0 for words, -1e4 for padding
    (cosine * AGGREGATE + pad).logsumexp([-1], false) / AGGREGATE
}

impl Aligner {
    pub fn new(p: &nn::Path, cfg: &AlignConfig) -> Result<Self> {
        if cfg.text.vocab_size <= 0 {
            bail!("align: vocab_size is not set (it comes from the tokenizer)");
        }
        // The encoder's variables directly under `text.`, as a generator's own text
        // encoder has them, so a generator loads this text side in place of its own.
        Ok(Aligner {
            cfg: cfg.clone(),
            image: AlignImage::new(p / "image", cfg)?,
            text: TextEncoder::new(p / "text", &cfg.text),
            heads: AlignTextHeads::new(&(p / "text"), cfg.text.dim, cfg.places),
            logit_scale: p.var("logit_scale", &[], nn::Init::Const((1.0f64 / 0.07).ln())),
        })
    }

    pub fn logit_scale(&self) -> Tensor {
        self.logit_scale.clamp_max(100f64.ln()).exp()
    }

    pub fn read_text(&self, tokens: &Tensor, pad: i64, train: bool) -> TextParts {
        self.heads.read(&self.text.forward(tokens, pad, train))
    }

    /// The terms for a batch of images in [-1, 1], their caption tokens and (with
    /// `bag_weight`) their [`bag_targets`]. In a data-parallel job every rank's pairs are
    /// negatives (the global batch).
    pub fn losses(
        &self,
        images: &Tensor,
        tokens: &Tensor,
        bag: Option<&Tensor>,
        pad: i64,
        train: bool,
    ) -> AlignLosses {
        let img = self.image.forward(images, train);
        let txt = self.read_text(tokens, pad, train);
        self.pair_losses(
            &img,
            &txt.sentence,
            &txt.places,
            Some((&txt.words, &txt.mask)),
            bag,
        )
    }

    /// The terms of image parts against text parts read before: the sentence vectors
    /// `(B, D)`, the place vectors `(B, P², D)` and, for the word term, the word vectors
    /// with their mask (`None` leaves the word term out).
    pub fn pair_losses(
        &self,
        img: &ImageParts,
        sentence: &Tensor,
        places: &Tensor,
        words: Option<(&Tensor, &Tensor)>,
        bag: Option<&Tensor>,
    ) -> AlignLosses {
        let gather = crate::distributed::gather_batch;
        let scale = self.logit_scale();
        let (gi, gt) = (gather(&unit(&img.global)), gather(&unit(sentence)));
        let sentence = symmetric_ce(&(gt.matmul(&gi.tr()) * &scale));
        let zero = || sentence.zeros_like();
        let words = match words {
            Some((words, mask)) if self.cfg.word_weight > 0.0 => {
                let mask = gather(&mask.to_kind(Kind::Float));
                let scores =
                    word_scores(&gather(&unit(words)), &mask, &gather(&unit(&img.regions)));
                symmetric_ce(&(scores * SCALE))
            }
            _ => zero(),
        };
        // (P², B, B): each place's captions against the same place of every image.
        let (pi, pt) = (
            gather(&unit(&img.places)).transpose(0, 1),
            gather(&unit(places)).transpose(0, 1),
        );
        let places = if self.cfg.place_weight > 0.0 {
            hard_symmetric_ce(
                &(pt.matmul(&pi.transpose(1, 2)) * &scale),
                self.cfg.place_hardness,
            )
        } else {
            zero()
        };
        // (B, P², P²): each caption's places against its own picture's places. Why:
        // against the other pictures' same place, a place is matched most easily by
        // its background (the sky of a top row, the ground of a bottom one), which the
        // sentence vector already carries; within one picture the background is
        // shared, so only what stands in the place tells it from its neighbours.
        let within = if self.cfg.within_weight > 0.0 {
            let (pi, pt) = (pi.transpose(0, 1), pt.transpose(0, 1));
            symmetric_ce(&(pt.matmul(&pi.transpose(1, 2)) * &scale))
        } else {
            zero()
        };
        let bag = match (self.image.heads.bag_logits(img), bag) {
            (Some(logits), Some(targets)) => bag_loss(&logits, targets),
            _ => zero(),
        };
        AlignLosses {
            sentence,
            words,
            places,
            within,
            bag,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::OptimizerConfig;
    use tch::Device;

    fn tiny_config() -> AlignConfig {
        AlignConfig {
            image_size: 16,
            channels: vec![8, 16],
            stem: 2,
            places: 2,
            text: TextEncoderConfig {
                dim: 16,
                layers: 1,
                heads: 2,
                mlp: 32,
                max_len: 8,
                dropout: 0.0,
                vocab_size: 12,
                local_layers: 1,
                sentence_ends: vec![9],
            },
            word_weight: 1.0,
            place_weight: 1.0,
            within_weight: 1.0,
            place_hardness: 0.0,
            bag_weight: 1.0,
            pair_buckets: 16,
        }
    }

    /// Eight pictures: a bright square in one of four quadrants, red or blue, with the
    /// caption "<colour> <quadrant> ." (tokens 1–2, 3–6, 9), padded with 0.
    fn tiny_pairs() -> (Tensor, Tensor) {
        let mut images = vec![];
        let mut tokens = vec![];
        for colour in 0..2i64 {
            for quadrant in 0..4i64 {
                let img = Tensor::full([3, 16, 16], -1.0, (Kind::Float, Device::Cpu));
                let (y, x) = (8 * (quadrant / 2), 8 * (quadrant % 2));
                let _ = img
                    .narrow(0, 2 * colour, 1)
                    .narrow(1, y, 8)
                    .narrow(2, x, 8)
                    .fill_(1.0);
                images.push(img);
                tokens.extend([1 + colour, 3 + quadrant, 9, 0]);
            }
        }
        (
            Tensor::stack(&images, 0),
            Tensor::from_slice(&tokens).view([8, 4]),
        )
    }

    #[test]
    fn every_term_falls_on_a_tiny_set() {
        tch::manual_seed(0);
        let cfg = tiny_config();
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Aligner::new(&vs.root(), &cfg).unwrap();
        let (images, tokens) = tiny_pairs();
        let bag = bag_targets(&tokens, &[0], &[9], 12, 16).unwrap();
        let mut opt = nn::Adam::default().build(&vs, 3e-3).unwrap();
        let terms = |l: &AlignLosses| {
            [&l.sentence, &l.words, &l.places, &l.within, &l.bag].map(|t| t.double_value(&[]))
        };
        let first = terms(&model.losses(&images, &tokens, Some(&bag), 0, true));
        for _ in 0..80 {
            let l = model.losses(&images, &tokens, Some(&bag), 0, true);
            opt.backward_step(&l.total(&cfg));
        }
        let last = terms(&model.losses(&images, &tokens, Some(&bag), 0, true));
        // ln 8 ≈ 2.08 is chance for each contrastive term.
        let shares = [
            ("sentence", 0.5),
            ("words", 0.5),
            ("places", 0.8),
            ("within", 0.8),
            ("bag", 0.5),
        ];
        for (i, (name, share)) in shares.into_iter().enumerate() {
            assert!(
                last[i] < share * first[i],
                "{name}: {} → {}",
                first[i],
                last[i]
            );
        }
    }

    #[test]
    fn hard_negatives_weigh_the_confused_pictures_and_leave_a_flat_batch_alone() {
        let opts = (Kind::Float, Device::Cpu);
        // Every negative alike: the weights are all 1, the plain loss.
        let flat = Tensor::from_slice(&[4f32, 1., 1., 1., 4., 1., 1., 1., 4.]).view([3, 3]);
        let (plain, hard) = (symmetric_ce(&flat), hard_symmetric_ce(&flat, 1.0));
        assert!((plain.double_value(&[]) - hard.double_value(&[])).abs() < 1e-5);
        // Caption 0 nearly matches picture 1 and not picture 2: with hardness the
        // gradient leans on the confusable pair against the easy one.
        let lean = |hardness: f64| {
            let l = Tensor::from_slice(&[5f32, 4., 0., 0., 5., 0., 0., 0., 5.])
                .view([3, 3])
                .set_requires_grad(true);
            hard_symmetric_ce(&l, hardness).backward();
            let g = l.grad();
            g.double_value(&[0, 1]) / g.double_value(&[0, 2])
        };
        let (hard, plain) = (lean(1.0), lean(0.0));
        assert!(hard > 2.0 * plain, "{hard} vs {plain}");
        // Zero hardness is the plain loss, on any logits.
        let any = Tensor::randn([2, 4, 4], opts);
        let diff = symmetric_ce(&any) - hard_symmetric_ce(&any, 0.0);
        assert!(diff.abs().double_value(&[]) < 1e-6);
    }

    #[test]
    fn the_place_term_falls_with_hard_negatives() {
        tch::manual_seed(0);
        let cfg = AlignConfig {
            place_hardness: 1.0,
            ..tiny_config()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Aligner::new(&vs.root(), &cfg).unwrap();
        let (images, tokens) = tiny_pairs();
        let mut opt = nn::Adam::default().build(&vs, 3e-3).unwrap();
        let places = || model.losses(&images, &tokens, None, 0, true).places;
        let first = places().double_value(&[]);
        for _ in 0..80 {
            opt.backward_step(&model.losses(&images, &tokens, None, 0, true).total(&cfg));
        }
        let last = places().double_value(&[]);
        assert!(last < 0.8 * first, "places: {first} → {last}");
    }

    #[test]
    fn a_caption_made_of_an_images_regions_scores_that_image_highest() {
        tch::manual_seed(1);
        let regions = unit(&Tensor::randn([3, 5, 8], (Kind::Float, Device::Cpu)));
        // Caption i's words are image i's first three regions; one padded word after.
        let words = Tensor::cat(
            &[
                regions.narrow(1, 0, 3),
                Tensor::zeros([3, 1, 8], (Kind::Float, Device::Cpu)),
            ],
            1,
        );
        let mask = Tensor::from_slice(&[1f32, 1., 1., 0.])
            .view([1, 4])
            .repeat([3, 1]);
        let s = word_scores(&words, &mask, &regions);
        assert_eq!(s.size(), [3, 3]);
        for i in 0..3 {
            let own = s.double_value(&[i, i]);
            assert!(own > 0.9, "a word that is a region matches it: {own}");
            for j in (0..3).filter(|&j| j != i) {
                assert!(own > s.double_value(&[i, j]) + 0.2, "{s}");
            }
        }
    }

    #[test]
    fn the_labels_hold_each_word_and_the_pairs_of_its_sentence() {
        // Two sentences "3 4 ." and "5 3 .", then padding; 1 starts the row.
        let tokens = Tensor::from_slice(&[1i64, 3, 4, 9, 5, 3, 9, 0]).view([1, 8]);
        let t = bag_targets(&tokens, &[0, 1], &[9], 12, 1000).unwrap();
        let on: Vec<i64> = Vec::try_from(t.get(0).nonzero().flatten(0, -1)).unwrap();
        let pair = |a, c| 12 + pair_bucket(a, c, 1000);
        let mut want = vec![3, 4, 5, pair(3, 4), pair(3, 5)];
        want.sort();
        want.dedup();
        assert_eq!(
            on, want,
            "no label for 1, 9 or 0, and no pair (4, 5) across sentences"
        );
    }
}
