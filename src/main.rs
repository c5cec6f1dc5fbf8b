//! The `ekphrasis` binary: parse the command line, run it, report errors without panics.

use clap::Parser;

fn main() {
    let cli = ekphrasis::cli::Cli::parse();
    ekphrasis::util::signals::install();
    if let Err(e) = ekphrasis::app::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
