//! Ctrl-C / SIGTERM. Work that can stop part-way and keep what it did (training
//! checkpoints after the current step; `data describe` journals the requests in flight;
//! `data prepare`/`synth` drop their unfinished copy; `serve` drains) declares so with
//! [`stop_gracefully`], and the first signal asks it to stop. Everything else (captioning,
//! drawing, evaluation: commands whose files are written whole at the end) exits at the
//! first signal, leaving earlier files as they were. A second signal always exits at once.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the first Ctrl-C / SIGTERM.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Set by work that polls [`interrupted`] and stops cleanly.
static GRACEFUL: AtomicBool = AtomicBool::new(false);

/// Whether the first Ctrl-C / SIGTERM has come: long loops stop cleanly when it has.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Declares that the running work polls [`interrupted`]: from now on the first signal
/// asks it to stop instead of exiting.
pub fn stop_gracefully() {
    GRACEFUL.store(true, Ordering::SeqCst);
}

pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if !GRACEFUL.load(Ordering::SeqCst) {
            eprintln!("\ninterrupted: stopped before finishing (every file is written whole, so those already written are intact)");
            exit_now();
        }
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted twice: exiting without a checkpoint");
            exit_now();
        }
        eprintln!(
            "\ninterrupt: finishing the work in hand (a training step and its checkpoint, or the requests in flight), then stopping; Ctrl-C again to quit now"
        );
    });
}

/// Exits with 130 at once, skipping the C library's exit handlers: they tear down
/// libtorch's thread pool while the main thread may still be computing on it, which
/// can crash the process on its way out (a signal death instead of 130). No file is
/// left half-written by skipping them: every file is written whole and renamed.
fn exit_now() -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: _exit only ends the process; it touches no Rust state.
    unsafe { libc::_exit(130) }
}
