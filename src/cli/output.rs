//! Operator-facing output: plain text for people, `--json` for scripts, and progress
//! bars on long work only when stderr is a terminal.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// Where command output goes. Commands write results to stdout through this; logs and
/// progress go to stderr.
pub struct Output {
    _private: (),
}

impl Output {
    /// Output to the process's stdout.
    pub fn stdout() -> Output {
        Output { _private: () }
    }

    /// Prints one line of text.
    pub fn line(&self, text: impl AsRef<str>) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", text.as_ref());
    }

    /// Prints a value as pretty JSON.
    pub fn json<T: Serialize>(&self, value: &T) {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer_pretty(&mut out, value);
        let _ = writeln!(out);
    }

    /// A progress bar of `len` steps on a terminal; a hidden one otherwise.
    pub fn progress(&self, len: u64, what: &str) -> ProgressBar {
        if !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} ({eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        bar
    }
}
