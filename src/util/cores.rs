//! Sharing the CPU cores among ekphrasis processes run side by side (`--share-cores DIR`,
//! what `make demo` runs its stages with, two at a time): each process registers a file
//! in DIR and runs libtorch on cores ÷ (processes registered) threads, counted again
//! every few seconds while it trains, so the one left running takes the freed cores.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a training loop counts the processes again.
const RECOUNT_EVERY: Duration = Duration::from_secs(3);

struct Share {
    dir: PathBuf,
    cores: usize,
    threads: usize,
    counted: Instant,
}

static SHARE: Mutex<Option<Share>> = Mutex::new(None);

/// This process's place in DIR; dropping it leaves (a killed process's file is passed
/// over once its pid is gone).
pub struct Registration {
    file: PathBuf,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
        *SHARE.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Registers this process in `dir` (created when missing) and sets its thread count.
pub fn join(dir: &Path) -> Result<Registration> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--share-cores {}: cannot create the folder", dir.display()))?;
    let file = dir.join(format!("{}.pid", std::process::id()));
    std::fs::write(&file, b"")
        .with_context(|| format!("--share-cores: cannot write {}", file.display()))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    *SHARE.lock().unwrap_or_else(|e| e.into_inner()) = Some(Share {
        dir: dir.to_path_buf(),
        cores,
        threads: 0,
        counted: Instant::now(),
    });
    recount(true);
    Ok(Registration { file })
}

/// Counts the processes again (at most every few seconds) and sets this one's threads
/// to its share. Call it from the thread that runs the model: libtorch's OpenMP thread
/// count belongs to the calling thread. Does nothing without `--share-cores`.
pub fn rebalance() {
    recount(false);
}

fn recount(now: bool) {
    let mut guard = SHARE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(share) = guard.as_mut() else { return };
    if !now && share.counted.elapsed() < RECOUNT_EVERY {
        return;
    }
    share.counted = Instant::now();
    let threads = threads_for(share.cores, live_registrations(&share.dir));
    if threads != share.threads {
        share.threads = threads;
        tch::set_num_threads(threads as i32);
    }
}

/// The registrations in `dir` whose process still runs (every one where there is no
/// `/proc` to ask); this process's own counts even if its file went missing.
fn live_registrations(dir: &Path) -> usize {
    let proc = Path::new("/proc");
    let me = std::process::id().to_string();
    let others = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".pid").map(str::to_string)
                })
                .filter(|pid| *pid != me && (!proc.is_dir() || proc.join(pid).exists()))
                .count()
        })
        .unwrap_or(0);
    others + 1
}

/// Each of `processes` gets an equal share of `cores`, at least one.
fn threads_for(cores: usize, processes: usize) -> usize {
    (cores / processes.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cores_are_split_evenly_and_never_below_one() {
        assert_eq!(threads_for(2, 1), 2);
        assert_eq!(threads_for(2, 2), 1);
        assert_eq!(threads_for(16, 3), 5);
        assert_eq!(threads_for(2, 5), 1);
        assert_eq!(threads_for(4, 0), 4);
    }

    #[test]
    fn a_dead_process_is_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(live_registrations(dir.path()), 1, "this process alone");
        // pid 1 always runs; a pid above the kernel's maximum never does.
        std::fs::write(dir.path().join("1.pid"), b"").unwrap();
        std::fs::write(dir.path().join("4294967.pid"), b"").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"").unwrap();
        let expected = if Path::new("/proc").is_dir() { 2 } else { 3 };
        assert_eq!(live_registrations(dir.path()), expected);
        std::fs::write(dir.path().join(format!("{}.pid", std::process::id())), b"").unwrap();
        assert_eq!(live_registrations(dir.path()), expected, "itself once");
    }
}
