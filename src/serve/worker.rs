//! The inference worker of `ekphrasis serve`: one thread owns every loaded model and runs
//! one job at a time (libtorch already spreads one forward pass over all cores), fed by a
//! bounded queue, so a burst is answered "busy" at once instead of piling up.

use super::catalog::Catalog;
use crate::data::images::{decode_rgb, nchw_batch};
use crate::export::exported::{ExportedCaptioner, ExportedPainter};
use crate::models::captioner::decode::{DecodeOptions, Strategy};
use crate::stages::t2i::paint_tokens;
use crate::stages::unified::MultimodalGenerator;
use anyhow::{Context, Result};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::Instant;
use tch::{Device, Tensor};
use tokio::sync::oneshot;

/// What a client asked for.
pub enum Job {
    /// An uploaded image file → its paragraph, and the picture painted back from it.
    Caption {
        image: Vec<u8>,
        decode: DecodeChoice,
        reconstruct: bool,
        seed: i64,
    },
    /// A paragraph → `n` pictures from the seeds `seed`, `seed + 1`, ….
    Draw { text: String, n: i64, seed: i64 },
    /// One seed → an image and its paragraph (the unified generator).
    Generate { seed: u64 },
}

/// A client's decoding choices; what it leaves out is the export's own setting.
#[derive(Clone, Debug, Default)]
pub struct DecodeChoice {
    pub strategy: Option<Strategy>,
    pub beam: Option<usize>,
    pub no_repeat_ngram: Option<usize>,
}

impl DecodeChoice {
    fn over(&self, base: &DecodeOptions) -> DecodeOptions {
        DecodeOptions {
            strategy: self.strategy.unwrap_or(base.strategy),
            beam: self.beam.unwrap_or(base.beam),
            no_repeat_ngram: self.no_repeat_ngram.unwrap_or(base.no_repeat_ngram),
            ..base.clone()
        }
    }
}

/// PNG files and paragraphs, ready to send.
pub enum Answer {
    Caption {
        caption: String,
        tokens: usize,
        reconstruction: Option<Vec<u8>>,
    },
    Images(Vec<Vec<u8>>),
    Generated {
        image: Vec<u8>,
        caption: String,
    },
}

/// A finished job: its answer (or the error a client should see) and the time it spent
/// queued and running.
pub struct Done {
    pub answer: Result<Answer>,
    pub queued_ms: f64,
    pub run_ms: f64,
}

struct Request {
    job: Job,
    reply: oneshot::Sender<Done>,
    queued: Instant,
}

/// The queue was full: the client should come back later (HTTP 503).
#[derive(Debug)]
pub struct Busy;

/// The request threads' side of the worker.
#[derive(Clone)]
pub struct Handle {
    tx: SyncSender<Request>,
}

impl Handle {
    /// Queues `job`; `Err(Busy)` when `queue` jobs are already waiting.
    pub fn submit(&self, job: Job) -> Result<oneshot::Receiver<Done>, Busy> {
        let (reply, rx) = oneshot::channel();
        let req = Request {
            job,
            reply,
            queued: Instant::now(),
        };
        match self.tx.try_send(req) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
}

/// The loaded models, owned by the worker thread.
struct Models {
    captioner: Option<ExportedCaptioner>,
    painter: Option<ExportedPainter>,
    unified: Option<MultimodalGenerator>,
    /// Whether captioner and painter share a tokenizer (the live cycle needs it).
    cycle: bool,
    device: Device,
}

/// Starts the worker thread, which loads every model of `catalog` once; returns when
/// they are loaded (or the first load failed), with `queue` places in the queue.
pub fn spawn(catalog: &Catalog, device: Device, queue: usize) -> Result<Handle> {
    let (tx, rx) = sync_channel::<Request>(queue);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let catalog = catalog.clone();
    std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || match load(&catalog, device) {
            Ok(models) => {
                let _ = ready_tx.send(Ok(()));
                serve_jobs(&models, rx);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })
        .context("starting the inference thread")?;
    ready_rx
        .recv()
        .context("the inference thread stopped while loading")??;
    Ok(Handle { tx })
}

fn load(c: &Catalog, device: Device) -> Result<Models> {
    let captioner = c
        .captioner
        .as_ref()
        .map(|d| ExportedCaptioner::load(d, device))
        .transpose()?;
    let painter = c
        .generator
        .as_ref()
        .map(|d| ExportedPainter::load(d, device))
        .transpose()?;
    let unified = c
        .unified
        .as_ref()
        .map(|d| MultimodalGenerator::load(d, device))
        .transpose()?;
    Ok(Models {
        captioner,
        painter,
        unified,
        cycle: c.cycle,
        device,
    })
}

fn serve_jobs(m: &Models, rx: Receiver<Request>) {
    // Ends when every Handle is dropped (the server has shut down).
    for req in rx {
        let queued_ms = req.queued.elapsed().as_secs_f64() * 1e3;
        let t0 = Instant::now();
        // A client that gave up (timeout, closed tab) is not worth the compute.
        if req.reply.is_closed() {
            continue;
        }
        let answer = run(m, req.job);
        let _ = req.reply.send(Done {
            answer,
            queued_ms,
            run_ms: t0.elapsed().as_secs_f64() * 1e3,
        });
    }
}

fn run(m: &Models, job: Job) -> Result<Answer> {
    match job {
        Job::Caption {
            image,
            decode,
            reconstruct,
            seed,
        } => {
            let cap = m.captioner.as_ref().context("no captioner is loaded")?;
            let side = cap.manifest.image_size as u32;
            let rgb = decode_rgb(&image, "the uploaded image", side)?;
            let batch = nchw_batch(&rgb, 1, side);
            let ids = &cap.generate(
                &crate::data::loader::to_float(&batch, m.device),
                &decode.over(&cap.decode),
            )?[0];
            let caption = cap.tok.decode(ids);
            let reconstruction = match (&m.painter, reconstruct && m.cycle) {
                (Some(p), true) => Some(draw(p, &caption, 1, seed, m.device)?.remove(0)),
                _ => None,
            };
            Ok(Answer::Caption {
                caption,
                tokens: ids.len().saturating_sub(1),
                reconstruction,
            })
        }
        Job::Draw { text, n, seed } => {
            let p = m.painter.as_ref().context("no generator is loaded")?;
            Ok(Answer::Images(draw(p, &text, n, seed, m.device)?))
        }
        Job::Generate { seed } => {
            let u = m
                .unified
                .as_ref()
                .context("no unified generator is loaded")?;
            let s = u.generate(seed);
            Ok(Answer::Generated {
                image: png_of(&s.image)?,
                caption: s.caption,
            })
        }
    }
}

/// `n` pictures of `text` in one batch, the noise seeded by `seed` (the same text, `n`
/// and seed give the same pictures), as PNG files.
fn draw(
    p: &ExportedPainter,
    text: &str,
    n: i64,
    seed: i64,
    device: Device,
) -> Result<Vec<Vec<u8>>> {
    let tokens = p.tokens(&[text.to_string()])?;
    let images = paint_tokens(p, &tokens, p.tok.pad, n, seed, device)?;
    (0..n).map(|i| png_of(&images.get(i))).collect()
}

/// A uint8 image `(3, H, W)` as a PNG file.
fn png_of(image: &Tensor) -> Result<Vec<u8>> {
    let (_, h, w) = image.size3().context("an image is (3, H, W)")?;
    let rgb: Vec<u8> = Vec::try_from(
        image
            .to_device(Device::Cpu)
            .to_kind(tch::Kind::Uint8)
            .permute([1, 2, 0])
            .contiguous()
            .view([-1]),
    )?;
    crate::report::grid::png(&rgb, w as u32, h as u32)
}
