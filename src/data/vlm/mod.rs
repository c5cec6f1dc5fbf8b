//! `data describe`: long descriptions for a prepared dataset's images from a
//! vision-language model behind an OpenAI-compatible API. Results go to an
//! append-only journal (`captions.jsonl`, one flushed line per image) so a crash loses at
//! most the requests in flight; `captions.json` is rebuilt from it.

pub mod client;
pub mod journal;
pub mod prompt;

use crate::data::layout::{Dataset, MetadataRow};
use crate::util::fsio::{read_json, write_json};
use crate::util::progress::{bar, say};
use crate::util::signals::INTERRUPTED;
use anyhow::{bail, Context, Result};
use client::{CallError, ChatClient, ClientOptions};
use journal::{Journal, Record, Status};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

#[derive(Clone, Debug)]
pub struct DescribeOptions {
    pub data: PathBuf,
    pub model: String,
    pub client: ClientOptions,
    /// Requests in flight at once.
    pub concurrency: usize,
    pub min_words: usize,
    pub max_words: usize,
    /// Requests per image for the length check (the first + re-asks).
    pub max_asks: u32,
    pub max_tokens: u32,
    /// Describe at most this many (not yet described) images.
    pub limit: Option<usize>,
    pub dry_run: bool,
    /// Ask again for images whose earlier answer was a refusal or empty.
    pub retry_refused: bool,
    /// US dollars per million prompt / completion tokens, for the running cost.
    pub price_in: f64,
    pub price_out: f64,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct DescribeSummary {
    pub images: usize,
    pub already_done: usize,
    pub attempted: usize,
    pub counts: BTreeMap<String, usize>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub interrupted: bool,
    /// Captions in the rebuilt captions.json that came from the model.
    pub described_captions: usize,
}

/// The metadata row of a caption id; pair ids (`<id>_<n>`) share their image's row.
fn row_for<'a>(rows: &'a HashMap<String, MetadataRow>, id: &str) -> Option<&'a MetadataRow> {
    rows.get(id).or_else(|| {
        let (base, n) = id.rsplit_once('_')?;
        n.parse::<usize>().ok()?;
        rows.get(base)
    })
}

fn original_captions(ds: &Dataset) -> Result<BTreeMap<String, String>> {
    // The captions prepare wrote (from metadata) are kept once, so a rebuild can always
    // fall back to them for images the model has not described.
    let orig = ds.root.join("captions.orig.json");
    if !orig.exists() {
        let current: BTreeMap<String, String> = ds.captions()?;
        write_json(&orig, &current)?;
    }
    read_json(&orig)
}

/// `captions.json` = the original captions, with every accepted description in place of
/// its image's caption. Returns how many came from the model.
pub fn rebuild_captions(ds: &Dataset, journal: &BTreeMap<String, Record>) -> Result<usize> {
    let mut captions = original_captions(ds)?;
    let mut described = 0;
    for (id, text) in captions.iter_mut() {
        if let Some(r) = journal.get(id).filter(|r| r.status.is_caption()) {
            *text = r.text.clone();
            described += 1;
        }
    }
    write_json(&ds.captions_path(), &captions)?;
    Ok(described)
}

enum Event {
    Note(String),
    Done(Box<Record>),
}

/// Asks for one image's description, asking again (bounded) when the length is off.
fn describe_one(
    client: &ChatClient,
    o: &DescribeOptions,
    id: &str,
    row: &MetadataRow,
    image: &Path,
    note: &mut dyn FnMut(String),
) -> (Record, Option<String>) {
    let mut rec = Record::new(id, &o.model);
    let bytes = match std::fs::read(image) {
        Ok(b) => b,
        Err(e) => {
            rec.status = Status::Failed;
            rec.error = Some(format!("reading {}: {e}", image.display()));
            return (rec, None);
        }
    };
    let first = prompt::request(
        &o.model,
        &prompt::instruction(row, o.min_words, o.max_words),
        &prompt::data_url(&bytes),
        o.max_tokens,
    );
    let mut req = first.clone();
    loop {
        rec.asks += 1;
        let answer = client.complete(&req, |m| note(format!("{id}: {m}")));
        let c = match answer {
            Ok(c) => c,
            Err(e) => {
                rec.status = Status::Failed;
                rec.error = Some(e.to_string());
                let fatal = matches!(e, CallError::Fatal(_)).then(|| e.to_string());
                return (rec, fatal);
            }
        };
        rec.prompt_tokens += c.prompt_tokens;
        rec.completion_tokens += c.completion_tokens;
        let text = c.text.trim().to_string();
        rec.words = prompt::word_count(&text);
        rec.text = text;
        rec.status = if rec.text.is_empty() {
            Status::Empty
        } else if prompt::is_refusal(&rec.text) {
            Status::Refused
        } else if (o.min_words..=o.max_words).contains(&rec.words) {
            Status::Ok
        } else if rec.asks >= o.max_asks {
            Status::Length
        } else {
            req = prompt::ask_again(&first, &rec.text, rec.words, o.min_words, o.max_words);
            continue;
        };
        return (rec, None);
    }
}

pub fn describe(o: &DescribeOptions) -> Result<DescribeSummary> {
    crate::util::signals::stop_gracefully();
    if o.min_words == 0 || o.min_words > o.max_words {
        bail!(
            "--min-words {} / --max-words {}: need 0 < min ≤ max",
            o.min_words,
            o.max_words
        );
    }
    let ds = Dataset::open(&o.data)?;
    let originals = original_captions(&ds)?;
    let rows: HashMap<String, MetadataRow> = ds
        .metadata()?
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    let journal_path = ds.root.join("captions.jsonl");
    let done = journal::read(&journal_path)?;
    let finished = |id: &str| {
        done.get(id)
            .is_some_and(|r| r.status.is_final(o.retry_refused))
    };
    let mut summary = DescribeSummary {
        images: originals.len(),
        ..Default::default()
    };
    let mut todo: Vec<String> = vec![];
    for id in originals.keys() {
        if finished(id) {
            summary.already_done += 1;
        } else {
            todo.push(id.clone());
        }
    }
    if let Some(n) = o.limit {
        todo.truncate(n);
    }
    let empty_row = MetadataRow::default();
    let row = |id: &str| row_for(&rows, id).unwrap_or(&empty_row);

    if o.dry_run {
        let Some(id) = todo.first() else {
            println!(
                "nothing to describe: all {} images are done",
                summary.images
            );
            return Ok(summary);
        };
        let image = ds.image_path(id)?;
        let bytes =
            std::fs::read(&image).with_context(|| format!("reading {}", image.display()))?;
        let req = prompt::request(
            &o.model,
            &prompt::instruction(row(id), o.min_words, o.max_words),
            &prompt::data_url(&bytes),
            o.max_tokens,
        );
        println!("POST {}", ChatClient::new(o.client.clone()).url());
        println!("Content-Type: application/json");
        if o.client.api_key.is_some() {
            println!("Authorization: Bearer ***");
        }
        println!(
            "\n{}",
            serde_json::to_string_pretty(&prompt::redacted(&req))?
        );
        println!(
            "\n(dry run for image {id}: nothing was sent; {} images to describe)",
            todo.len()
        );
        return Ok(summary);
    }

    let client = ChatClient::new(o.client.clone());
    let mut journal = Journal::open_append(&journal_path)?;
    let pb = bar(todo.len() as u64, "describe");
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let mut fatal: Option<String> = None;
    std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = mpsc::channel::<Event>();
        for _ in 0..o.concurrency.max(1) {
            let tx = tx.clone();
            let (todo, next, stop, client, ds) = (&todo, &next, &stop, &client, &ds);
            let row = &row;
            s.spawn(move || loop {
                // A Ctrl-C or a fatal error stops new requests; those in flight finish
                // and are journaled.
                if INTERRUPTED.load(Ordering::SeqCst) || stop.load(Ordering::SeqCst) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(id) = todo.get(i) else { return };
                let image = match ds.image_path(id) {
                    Ok(p) => p,
                    Err(e) => {
                        let mut rec = Record::new(id, &o.model);
                        rec.status = Status::Failed;
                        rec.error = Some(e.to_string());
                        let _ = tx.send(Event::Done(Box::new(rec)));
                        continue;
                    }
                };
                let mut note = |m: String| {
                    let _ = tx.send(Event::Note(m));
                };
                let (rec, fatal) = describe_one(client, o, id, row(id), &image, &mut note);
                if let Some(f) = fatal {
                    stop.store(true, Ordering::SeqCst);
                    let _ = tx.send(Event::Note(format!("stopping: {f}")));
                }
                let _ = tx.send(Event::Done(Box::new(rec)));
            });
        }
        drop(tx);
        for ev in rx {
            match ev {
                Event::Note(m) => {
                    if m.starts_with("stopping: ") && fatal.is_none() {
                        fatal = Some(m["stopping: ".len()..].to_string());
                    }
                    say(&pb, m);
                }
                Event::Done(rec) => {
                    journal.append(&rec)?;
                    summary.attempted += 1;
                    *summary.counts.entry(rec.status.name().into()).or_default() += 1;
                    summary.prompt_tokens += rec.prompt_tokens;
                    summary.completion_tokens += rec.completion_tokens;
                    summary.cost_usd = (summary.prompt_tokens as f64 * o.price_in
                        + summary.completion_tokens as f64 * o.price_out)
                        / 1e6;
                    if rec.status != Status::Ok {
                        let why = rec.error.as_deref().unwrap_or_default();
                        say(
                            &pb,
                            format!(
                                "{}: {} ({} words) {why}",
                                rec.id,
                                rec.status.name(),
                                rec.words
                            ),
                        );
                    }
                    pb.set_message(format!(
                        "tokens {} in / {} out, ${:.4}",
                        summary.prompt_tokens, summary.completion_tokens, summary.cost_usd
                    ));
                    pb.inc(1);
                }
            }
        }
        Ok(())
    })?;
    pb.finish_and_clear();
    summary.interrupted = INTERRUPTED.load(Ordering::SeqCst);
    summary.described_captions = rebuild_captions(&ds, &journal::read(&journal_path)?)?;
    write_json(&ds.root.join("describe_report.json"), &summary)?;
    if let Some(f) = fatal {
        bail!(
            "stopped on an error retrying cannot fix: {f}\n{} answers so far are kept in {}",
            summary.attempted,
            journal_path.display()
        );
    }
    let failed = summary
        .counts
        .get(Status::Failed.name())
        .copied()
        .unwrap_or(0);
    if !summary.interrupted && summary.attempted > 0 && failed == summary.attempted {
        bail!(
            "every one of the {failed} requests failed (see {}); is the server at the endpoint up?",
            journal_path.display()
        );
    }
    Ok(summary)
}
