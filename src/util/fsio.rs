//! Atomic writes (temporary file + rename, so a crash never leaves a half-written file)
//! and SHA-256 of files.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Fault injection for the reliability tests: with `EKPHRASIS_FAIL_WRITES_AFTER=N`, every
/// atomic write after the first N fails as a full disk would (ENOSPC).
fn injected_fault() -> std::io::Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static WRITES: AtomicUsize = AtomicUsize::new(0);
    let Some(limit) = std::env::var("EKPHRASIS_FAIL_WRITES_AFTER")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return Ok(());
    };
    if WRITES.fetch_add(1, Ordering::SeqCst) >= limit {
        return Err(std::io::Error::from_raw_os_error(28));
    }
    Ok(())
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Writes `bytes` to `path` atomically: to a temporary file beside it, synced, renamed.
/// In a data-parallel job only rank 0 writes (every file of a run goes through here);
/// the other ranks hold the same weights and read what rank 0 wrote.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    if !crate::distributed::is_writer() {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = temp_path(path);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        injected_fault()?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// Like [`atomic_write`], for a writer callback (used for files tch writes itself).
pub fn atomic_write_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if !crate::distributed::is_writer() {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = temp_path(path);
    if let Err(e) = write(&tmp).and_then(|()| Ok(injected_fault()?)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
}

pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    atomic_write(path, &serde_json::to_vec_pretty(value)?)
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Hex SHA-256 of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// Takes an exclusive lock on `dir` (its `.lock` file) for as long as the returned file
/// is held; fails at once, naming the folder, when another process holds it. The ranks
/// of one data-parallel job share rank 0's lock (None on the others).
pub fn lock_dir(dir: &Path) -> Result<Option<std::fs::File>> {
    if !crate::distributed::is_writer() {
        return Ok(None);
    }
    let path = dir.join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "{} is in use by another ekphrasis process (training the same --run twice at once would mix their checkpoints)",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// Moves the finished `partial` to `out`, replacing what was there through a rename, so
/// at every instant one whole dataset sits at `out` or beside it.
pub fn replace_dir(partial: &Path, out: &Path) -> Result<()> {
    let old = out.with_extension("replaced");
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    if out.exists() {
        std::fs::rename(out, &old)
            .with_context(|| format!("moving the old {} aside", out.display()))?;
    }
    std::fs::rename(partial, out)
        .with_context(|| format!("moving {} into place", out.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    Ok(())
}
