//! Ctrl-C / SIGTERM: the first asks long work to stop cleanly (training checkpoints after
//! the current step; `data describe` journals the requests in flight); a second exits at once.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the first Ctrl-C / SIGTERM.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether the first Ctrl-C / SIGTERM has come: long loops stop cleanly when it has.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted twice: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt: finishing the work in hand (a training step and its checkpoint, or the requests in flight), then stopping; Ctrl-C again to quit now"
        );
    });
}
