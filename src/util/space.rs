//! Free disk space: checked before work that writes gigabytes, so a dataset or an export
//! that cannot fit is refused at the start, naming the folder and both sizes, rather
//! than failing half-way (or, for libtorch's own writer, aborting).

use anyhow::{bail, Result};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Bytes free to this user on the filesystem that holds `path` (its nearest existing
/// ancestor). `EKPHRASIS_FREE_BYTES=N` stands in for the answer (fault injection for
/// the reliability tests).
pub fn free_bytes(path: &Path) -> Option<u64> {
    if let Some(n) = std::env::var("EKPHRASIS_FREE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Some(n);
    }
    let mut at = path;
    while !at.exists() {
        at = at.parent()?;
    }
    let at = if at.as_os_str().is_empty() {
        Path::new(".")
    } else {
        at
    };
    let c = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs writes only into the zeroed struct it is given.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return None;
        }
        Some(s.f_bavail as u64 * s.f_frsize as u64)
    }
}

fn gb(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GB", b as f64 / 1e9)
    } else {
        format!("{:.1} MB", b as f64 / 1e6)
    }
}

/// Refuses when `dir`'s filesystem has less than `needed` bytes free (no answer from
/// the filesystem passes: the writes themselves still fail cleanly).
pub fn ensure_free(dir: &Path, needed: u64, what: &str) -> Result<()> {
    if let Some(free) = free_bytes(dir) {
        if free < needed {
            bail!(
                "{what} needs about {} and {} has {} free: free some space or write elsewhere",
                gb(needed),
                dir.display(),
                gb(free)
            );
        }
    }
    Ok(())
}

/// The space check of a set of files written one by one (in parallel): after the first
/// [`SpaceWatch::SAMPLE`] files it projects their mean size onto the whole set and
/// refuses, once, when the rest will not fit.
pub struct SpaceWatch<'a> {
    dir: &'a Path,
    total: usize,
    what: &'a str,
    seen: AtomicUsize,
    bytes: AtomicU64,
}

impl<'a> SpaceWatch<'a> {
    pub const SAMPLE: usize = 8;

    pub fn new(dir: &'a Path, total: usize, what: &'a str) -> Self {
        Self {
            dir,
            total,
            what,
            seen: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// Counts one written file of `bytes`; the error when the whole set will not fit.
    pub fn wrote(&self, bytes: u64) -> Result<()> {
        let total = self.bytes.fetch_add(bytes, Ordering::SeqCst) + bytes;
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if n != Self::SAMPLE.min(self.total) {
            return Ok(());
        }
        let left = self.total.saturating_sub(n) as u64;
        // 10 % for file-system overhead and sizes that vary from file to file.
        let needed = (total / n as u64) * left * 11 / 10;
        ensure_free(self.dir, needed, self.what)
    }
}
