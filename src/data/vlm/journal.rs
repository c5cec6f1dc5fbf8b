//! `captions.jsonl`: the append-only record of every description answer, one JSON line
//! per image, flushed and synced as it arrives. The latest line for an id wins.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Within the word range.
    Ok,
    /// Still outside the word range after the re-asks; kept, flagged.
    Length,
    /// The model declined; not a caption.
    Refused,
    /// An empty answer; not a caption.
    Empty,
    /// No answer (network, server or file error); tried again on the next run.
    Failed,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Length => "length",
            Status::Refused => "refused",
            Status::Empty => "empty",
            Status::Failed => "failed",
        }
    }

    /// Whether the text may stand as the image's caption.
    pub fn is_caption(self) -> bool {
        matches!(self, Status::Ok | Status::Length)
    }

    /// Whether a rerun skips the image.
    pub fn is_final(self, retry_refused: bool) -> bool {
        match self {
            Status::Ok | Status::Length => true,
            Status::Refused | Status::Empty => !retry_refused,
            Status::Failed => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub status: Status,
    pub text: String,
    pub words: usize,
    /// Requests made for this image (re-asks for length included; retries not).
    pub asks: u32,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Record {
    pub fn new(id: &str, model: &str) -> Self {
        Record {
            id: id.to_string(),
            status: Status::Failed,
            text: String::new(),
            words: 0,
            asks: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            model: model.to_string(),
            error: None,
        }
    }
}

/// Reads the journal (missing file = empty). A torn last line, left by a crash during a
/// write, is cut off with a warning; a bad line elsewhere is an error naming it.
pub fn read(path: &Path) -> Result<BTreeMap<String, Record>> {
    let mut out = BTreeMap::new();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let text = String::from_utf8_lossy(&bytes);
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line) {
            Ok(r) => {
                out.insert(r.id.clone(), r);
            }
            Err(_) if i + 1 == lines.len() && !complete => {
                let keep = text.len() - line.len();
                eprintln!(
                    "warning: {}:{}: cutting off a half-written last line (a crash during a write); that image will be asked again",
                    path.display(),
                    i + 1
                );
                let f = std::fs::OpenOptions::new().write(true).open(path)?;
                f.set_len(keep as u64)?;
                f.sync_all()?;
            }
            Err(e) => bail!(
                "{}:{}: not a description record ({e}); fix or delete that line",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(out)
}

/// The open journal; each append is one line, flushed and synced before returning.
pub struct Journal {
    file: std::fs::File,
    path: PathBuf,
}

impl Journal {
    pub fn open_append(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {} for appending", path.display()))?;
        Ok(Journal {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn append(&mut self, r: &Record) -> Result<()> {
        let mut line = serde_json::to_vec(r)?;
        line.push(b'\n');
        (|| -> std::io::Result<()> {
            self.file.write_all(&line)?;
            self.file.flush()?;
            self.file.sync_data()
        })()
        .with_context(|| format!("appending to {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_last_line_is_cut_and_latest_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("captions.jsonl");
        let mut j = Journal::open_append(&p).unwrap();
        let mut r = Record::new("a", "m");
        j.append(&r).unwrap();
        r.status = Status::Ok;
        r.text = "A red house.".into();
        j.append(&r).unwrap();
        drop(j);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(br#"{"id":"b","stat"#).unwrap();
        drop(f);
        let got = read(&p).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got["a"].status, Status::Ok);
        assert!(std::fs::read_to_string(&p).unwrap().ends_with('\n'));
        // A bad line in the middle is an error that names the line.
        std::fs::write(&p, "garbage\n{}\n").unwrap();
        let err = read(&p).unwrap_err().to_string();
        assert!(err.contains("captions.jsonl:1"), "{err}");
    }
}
