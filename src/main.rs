//! The `ekphrasis` binary: parse the command line, run it, report errors without panics.

use clap::Parser;
use ekphrasis::util::memory;

fn main() {
    let cli = ekphrasis::cli::Cli::parse();
    ekphrasis::util::signals::install();
    memory::cap_at_machine_memory();
    memory::install_quiet_allocation_failures();
    match std::panic::catch_unwind(|| ekphrasis::app::run(cli)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        Err(payload) => match memory::allocation_failure(payload.as_ref()) {
            Some(message) => {
                eprintln!("error: {message}");
                std::process::exit(1);
            }
            // Any other panic is a bug; the hook has printed it.
            None => std::process::exit(101),
        },
    }
}
