//! Progress with one look across the tool (indicatif): a bar on a terminal, or plain
//! lines for logs and for stages run side by side (`--progress lines`).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long work shows its progress (`--progress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A bar on a terminal; nothing but the log lines otherwise.
    Auto,
    /// A line every 30 s (position, rate, ETA), and every log line, prefixed with the
    /// command's label: what `make demo` uses while two stages share the terminal.
    Lines,
    /// The log lines alone.
    Off,
}

/// How often `Mode::Lines` reports a bar's position.
const LINE_EVERY: Duration = Duration::from_secs(30);

static SETTINGS: OnceLock<(Mode, String)> = OnceLock::new();

/// Sets the mode and the label (`train align runs/align/demo`) once, at start-up; later
/// calls are ignored. Without it the mode is `Auto`.
pub fn configure(mode: Mode, label: String) {
    let _ = SETTINGS.set((mode, label));
}

fn mode() -> Mode {
    SETTINGS.get().map_or(Mode::Auto, |s| s.0)
}

/// The line as printed: prefixed with the label in `Mode::Lines`, so two stages' lines
/// on one terminal can be told apart.
fn labelled(line: &str) -> String {
    match SETTINGS.get() {
        Some((Mode::Lines, label)) if !label.is_empty() => format!("[{label}] {line}"),
        _ => line.to_string(),
    }
}

pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{prefix:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
    )
    .expect("static template")
    .progress_chars("=> ");
    pb.set_style(style);
    pb.set_prefix(what.to_string());
    let writer = crate::distributed::is_writer();
    if mode() != Mode::Auto || !std::io::stderr().is_terminal() || !writer {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    if mode() == Mode::Lines && writer {
        report_every(&pb, what.to_string(), LINE_EVERY);
    }
    pb
}

/// One line about a bar's position: `train 150/1500 (10 %), 5.2/s, eta 4m 20s`.
fn position_line(pb: &ProgressBar, what: &str) -> String {
    let len = pb.length().unwrap_or(0).max(1);
    let eta = pb.eta().as_secs();
    labelled(&format!(
        "{what} {}/{len} ({} %), {:.1}/s, eta {}m {:02}s",
        pb.position(),
        pb.position() * 100 / len,
        pb.per_sec(),
        eta / 60,
        eta % 60
    ))
}

/// Prints the bar's position every `every` from a thread that ends with the bar (it
/// holds only a weak reference, so a dropped bar stops it too).
fn report_every(pb: &ProgressBar, what: String, every: Duration) {
    let weak = pb.downgrade();
    std::thread::spawn(move || {
        let mut last = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(200).min(every));
            let Some(pb) = weak.upgrade() else { break };
            if pb.is_finished() {
                break;
            }
            if last.elapsed() >= every {
                eprintln!("{}", position_line(&pb, &what));
                last = Instant::now();
            }
        }
    });
}

/// Prints a line above the bar, or plainly when the bar is hidden (logs, CI). In a
/// data-parallel job only rank 0 speaks.
pub fn say(pb: &ProgressBar, line: impl AsRef<str>) {
    if !crate::distributed::is_writer() {
        return;
    }
    if pb.is_hidden() {
        eprintln!("{}", labelled(line.as_ref()));
    } else {
        pb.println(line.as_ref());
    }
}

/// A line for the log (stderr), printed by rank 0 alone in a data-parallel job.
pub fn note(line: impl AsRef<str>) {
    if crate::distributed::is_writer() {
        eprintln!("{}", labelled(line.as_ref()));
    }
}

/// A result line (stdout), printed by rank 0 alone in a data-parallel job.
pub fn note_out(line: impl AsRef<str>) {
    if crate::distributed::is_writer() {
        println!("{}", labelled(line.as_ref()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_line_names_the_work_its_share_and_its_eta() {
        let pb = ProgressBar::hidden();
        pb.set_length(200);
        pb.set_position(50);
        let line = position_line(&pb, "train");
        assert!(line.starts_with("train 50/200 (25 %), "), "{line}");
        assert!(line.contains(", eta "), "{line}");
    }

    #[test]
    fn the_reporting_thread_ends_with_its_bar() {
        let pb = ProgressBar::hidden();
        pb.set_length(10);
        report_every(&pb, "x".into(), Duration::from_millis(20));
        let weak = pb.downgrade();
        pb.finish_and_clear();
        drop(pb);
        // The thread held the bar only while reading it: once it has seen the end,
        // nothing keeps the bar alive.
        let deadline = Instant::now() + Duration::from_secs(5);
        while weak.upgrade().is_some() {
            assert!(
                Instant::now() < deadline,
                "the reporting thread kept its bar"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
