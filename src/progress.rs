//! How long work shows progress: a spinner with the current step for
//! set-up (kernel download, image builds, boots), a bar with ETA and
//! outcome counts for a campaign's experiments. On a non-terminal stderr
//! each step is one plain line.

use std::collections::BTreeMap;
use std::time::Duration;

/// A spinner when `show`, nothing otherwise (JSON output keeps stderr quiet).
pub fn spinner(show: bool) -> Option<Progress> {
    show.then(Progress::new)
}

/// The step callback of an optional spinner.
pub fn stepper(spinner: &Option<Progress>) -> impl Fn(&str) + '_ {
    move |m: &str| {
        if let Some(s) = spinner {
            s.step(m)
        }
    }
}

/// One line of progress on stderr.
pub fn say(msg: &str) {
    eprintln!("kfi: {msg}");
}

/// Shows long set-up work (kernel download, image builds) as a spinner
/// with the current step and the elapsed time; on a non-terminal stderr
/// each step is one line.
pub struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    /// A spinner on a terminal, plain lines otherwise.
    pub fn new() -> Self {
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress { bar }
    }

    /// Shows the current step.
    pub fn step(&self, msg: &str) {
        if self.bar.is_hidden() {
            say(msg);
        } else {
            self.bar.set_message(msg.to_string());
        }
    }
}

impl Progress {
    /// Clears the spinner (before another progress bar takes the terminal).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// The campaign's progress bar: position, ETA and the outcome counts.
pub fn progress_bar(len: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}, ETA {eta}] {msg}")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}

/// Outcome counts in one line, e.g. `panic 3, benign 7`.
pub fn outcome_line(outcomes: &BTreeMap<String, u64>) -> String {
    outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
}

impl crate::campaign::ops::Steps for Progress {
    fn step(&self, msg: &str) {
        Progress::step(self, msg);
    }

    fn setup_done(&self) {
        self.finish();
    }
}
