//! Ctrl-C / SIGTERM: the first asks the training loop to checkpoint and stop after the
//! current step; a second one exits at once.

use std::sync::atomic::Ordering;

pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if crate::train::runner::INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted twice: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt: finishing this step and writing a checkpoint (Ctrl-C again to quit now)"
        );
    });
}
