//! Progress bars with one look across the tool (indicatif), hidden when not on a terminal
//! so logs and CI output stay readable.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{prefix:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
    )
    .expect("static template")
    .progress_chars("=> ");
    pb.set_style(style);
    pb.set_prefix(what.to_string());
    if !std::io::stderr().is_terminal() || !crate::distributed::is_writer() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb
}

/// Prints a line above the bar, or plainly when the bar is hidden (logs, CI). In a
/// data-parallel job only rank 0 speaks.
pub fn say(pb: &ProgressBar, line: impl AsRef<str>) {
    if !crate::distributed::is_writer() {
        return;
    }
    if pb.is_hidden() {
        eprintln!("{}", line.as_ref());
    } else {
        pb.println(line.as_ref());
    }
}

/// A line for the log (stderr), printed by rank 0 alone in a data-parallel job.
pub fn note(line: impl AsRef<str>) {
    if crate::distributed::is_writer() {
        eprintln!("{}", line.as_ref());
    }
}

/// A result line (stdout), printed by rank 0 alone in a data-parallel job.
pub fn note_out(line: impl AsRef<str>) {
    if crate::distributed::is_writer() {
        println!("{}", line.as_ref());
    }
}
