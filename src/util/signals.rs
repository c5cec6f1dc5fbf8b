//! Ctrl-C / SIGTERM: the first asks long work to stop cleanly (training checkpoints after
//! the current step; `data describe` journals the requests in flight); a second exits at once.

use std::sync::atomic::Ordering;

pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if crate::train::runner::INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted twice: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt: finishing the work in hand (a training step and its checkpoint, or the requests in flight), then stopping; Ctrl-C again to quit now"
        );
    });
}
