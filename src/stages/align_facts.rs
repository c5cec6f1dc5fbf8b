//! `eval align`: how much of each place's scene facts a finished align run carries
//! (embedded set only). A small head is trained on the training split's frozen place
//! vectors to read their cell's kind, colour and size, and scored on the validation
//! split: a probe of what the conditioning holds, after the linear probes of Alain &
//! Bengio (2016). It grades the align run; nothing it trains conditions any model.
//!
//! Why: the general path's generators paint each place from the place vector the text
//! side reads off the caption. When they paint smudges, this says whether the object
//! was in that vector (the generator's fault) or not (the align run's).

use super::align::{load_aligner, AlignStageConfig, AlignedText};
use crate::data::layout::Split;
use crate::data::loader::{load_split, to_float};
use crate::models::align::Aligner;
use crate::nn::place_reader::LayoutReader;
use crate::scenes::heads::{CELL_HEADS, CELL_WIDTH};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{nn, nn::Module, nn::OptimizerConfig, Device, Kind, Tensor};

/// Which of the align run's vectors the head reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PlaceSide {
    /// The nine place vectors the text side reads off the caption: what the generators
    /// paint from.
    Text,
    /// The image side's regions pooled to the nine places of the true picture: what
    /// the text side's places are matched to.
    Image,
    /// The text side's word vectors, read by a fresh place reader trained with the head:
    /// whether the text encoder holds the facts at all (about 20× slower).
    Words,
}

impl PlaceSide {
    pub fn name(self) -> &'static str {
        match self {
            PlaceSide::Text => "text",
            PlaceSide::Image => "image",
            PlaceSide::Words => "words",
        }
    }
}

/// What the vectors are read with.
enum Reader {
    Text(AlignedText),
    /// The whole align model, its store held while it is used.
    Image {
        _store: nn::VarStore,
        model: Aligner,
    },
}

/// Batch of the head's training steps.
const BATCH: i64 = 256;

/// Per cell fact (kind, colour, size) the validation accuracy of a head trained for
/// `steps` on the training split's `side` vectors of the align run `run`; the kind of
/// held cells alone (`kind_held`, chance 0.1) besides the kind-or-empty of every cell.
/// A colour or size counts only in cells that hold an object. Writes
/// `<run>/eval_places_<side>/metrics.json`, and returns the scores with that path.
pub fn place_fact_accuracy(
    run: &Path,
    side: PlaceSide,
    steps: u64,
    device: Device,
) -> Result<(BTreeMap<String, f64>, PathBuf)> {
    let cfg: AlignStageConfig = super::run_config(run, "align")?;
    if cfg.model.places != 3 {
        bail!(
            "eval align reads the 3×3 cells of the embedded set's scenes; model.places is {} in {}",
            cfg.model.places,
            run.display()
        );
    }
    let (ds, tok) = super::open_training_data(&cfg.data, &["eval align"])?;
    // Only the side that is read is loaded: the image side comes with the whole model.
    let reader = match side {
        PlaceSide::Image => {
            let (_store, model) = load_aligner(run, &tok, device)?;
            Reader::Image { _store, model }
        }
        PlaceSide::Text | PlaceSide::Words => Reader::Text(AlignedText::load(run, &tok, device)?),
    };
    let size = cfg.model.image_size as u32;
    // Per caption the vectors `(N, places or tokens, D)` (word vectors carry their mask
    // as one more channel) and its cells' (kind, colour, size, detail) `(N, 9, 4)`.
    let vectors = |split| -> Result<(Tensor, Tensor)> {
        let s = load_split(&ds, split, size, None)?;
        let tokens = s.tokens.as_ref().context("tokenized captions")?;
        let width = tokens.size()[1];
        let cpu = Device::Cpu;
        let v = match (&reader, side) {
            (Reader::Image { model, .. }, _) => {
                let n = s.images.size()[0];
                let parts: Vec<Tensor> = (0..n)
                    .step_by(128)
                    .map(|start| {
                        let x = to_float(&s.images.narrow(0, start, 128.min(n - start)), device);
                        tch::no_grad(|| model.image.forward(&x, false).places.to_device(cpu))
                    })
                    .collect();
                Tensor::cat(&parts, 0)
            }
            (Reader::Text(text), PlaceSide::Words) => text.read_all(tokens, tok.pad, |t| {
                let mask = t.mask.to_kind(Kind::Float).unsqueeze(-1);
                let w = Tensor::cat(&[t.words, mask], 2);
                // Every chunk padded to the split's width, so the chunks concatenate.
                let short = width - w.size()[1];
                w.constant_pad_nd([0, 0, 0, short]).to_device(cpu)
            }),
            (Reader::Text(text), _) => text.read_all(tokens, tok.pad, |t| t.places.to_device(cpu)),
        };
        let facts = super::evaluators::cell_target_tensor(&ds, &s.ids)?;
        Ok((v, facts.narrow(1, 3, 36).view([-1, 9, 4])))
    };
    let (train_v, train_t) = vectors(Split::Train)?;
    let (val_v, val_t) = vectors(Split::Val)?;
    let dim = cfg.model.text.dim;

    tch::manual_seed(cfg.seed as i64);
    let vs = nn::VarStore::new(device);
    let root = vs.root();
    let reader = (side == PlaceSide::Words).then(|| LayoutReader::new(&root / "reader", 3, dim));
    let head = nn::seq()
        .add(nn::layer_norm(&root / "ln", vec![dim], Default::default()))
        .add(nn::linear(&root / "fc", dim, 2 * dim, Default::default()))
        .add_fn(|x| x.gelu("tanh"))
        .add(nn::linear(
            &root / "out",
            2 * dim,
            CELL_WIDTH,
            Default::default(),
        ));
    let logits = |v: &Tensor| -> Tensor {
        let places = match &reader {
            Some(r) => r.forward(&v.narrow(2, 0, dim), &v.narrow(2, dim, 1).squeeze_dim(2)),
            None => v.shallow_clone(),
        };
        head.forward(&places)
    };
    let mut opt = nn::AdamW::default().build(&vs, 2e-3)?;
    let n = train_v.size()[0];
    let pb = crate::util::progress::bar(steps, "place facts");
    for _ in 0..steps {
        let idx = Tensor::randint(n, [BATCH], (Kind::Int64, Device::Cpu));
        let out = logits(&train_v.index_select(0, &idx).to_device(device));
        let t = train_t.index_select(0, &idx).to_device(device);
        let mut loss = Tensor::zeros([], (Kind::Float, device));
        for (j, (off, w)) in CELL_HEADS.iter().enumerate().take(3) {
            let l = out.narrow(2, *off, *w).reshape([-1, *w]);
            let tj = t.select(2, j as i64).reshape([-1]);
            loss += l.cross_entropy_loss::<Tensor>(&tj, None, tch::Reduction::Mean, -1, 0.0);
        }
        opt.backward_step(&loss);
        pb.inc(1);
    }
    pb.finish_and_clear();

    let val = tch::no_grad(|| logits(&val_v.to_device(device))).to_device(Device::Cpu);
    let share = |right: &Tensor, of: &Tensor| {
        right.logical_and(of).sum(Kind::Float).double_value(&[])
            / of.sum(Kind::Float).double_value(&[]).max(1.0)
    };
    let mut m = BTreeMap::from([("captions".to_string(), val_t.size()[0] as f64)]);
    for (j, name) in ["kind", "colour", "size"].into_iter().enumerate() {
        let (off, w) = CELL_HEADS[j];
        let right = val
            .narrow(2, off, w)
            .argmax(-1, false)
            .eq_tensor(&val_t.select(2, j as i64));
        let t = val_t.select(2, j as i64);
        m.insert(name.to_string(), share(&right, &t.ge(0)));
        if j == 0 {
            // The last kind class is "empty".
            m.insert("kind_held".to_string(), share(&right, &t.lt(w - 1)));
        }
    }
    let out = run.join(format!("eval_places_{}", side.name()));
    let out = out.join("metrics.json");
    crate::util::fsio::write_json(&out, &m)?;
    Ok((m, out))
}
