//! What a push shows while it runs: one progress bar per blob on a terminal (indicatif), one
//! plain line per finished blob elsewhere (CI logs), nothing in quiet mode. Everything goes to
//! stderr so that `--json` output on stdout stays machine-readable.
//!
//! It owns presentation only and must never decide anything about the push.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    Bars,
    Lines,
    Quiet,
}

impl ProgressMode {
    /// Bars on an interactive terminal outside CI, plain lines otherwise.
    pub fn detect() -> ProgressMode {
        use std::io::IsTerminal as _;
        if std::io::stderr().is_terminal() && !testkit::in_ci() {
            ProgressMode::Bars
        } else {
            ProgressMode::Lines
        }
    }
}

/// The progress display of one push.
#[derive(Debug)]
pub struct Progress {
    mode: ProgressMode,
    bars: MultiProgress,
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Progress {
        let target = match mode {
            ProgressMode::Bars => ProgressDrawTarget::stderr(),
            ProgressMode::Lines | ProgressMode::Quiet => ProgressDrawTarget::hidden(),
        };
        Progress {
            mode,
            bars: MultiProgress::with_draw_target(target),
        }
    }

    /// Starts showing one blob's upload into `repository`.
    pub fn blob(&self, repository: &str, digest: &str, size: u64) -> BlobProgress {
        let label = format!("{repository} {}", short_digest(digest));
        let bar = (self.mode == ProgressMode::Bars).then(|| {
            let bar = self.bars.add(ProgressBar::new(size));
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:40} {bar:30} {bytes:>10}/{total_bytes:<10} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message(label.clone());
            bar
        });
        BlobProgress {
            mode: self.mode,
            label,
            size,
            bar,
        }
    }

    /// A line about the push as a whole (an image done, a tag set).
    pub fn line(&self, text: &str) {
        match self.mode {
            ProgressMode::Bars => {
                let _ = self.bars.println(text);
            }
            ProgressMode::Lines => eprintln!("{text}"),
            ProgressMode::Quiet => {}
        }
    }
}

/// The display of one blob.
#[derive(Debug)]
pub struct BlobProgress {
    mode: ProgressMode,
    label: String,
    size: u64,
    bar: Option<ProgressBar>,
}

impl BlobProgress {
    pub fn set_position(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
        }
    }

    /// Something worth knowing mid-upload (a resume after a dropped connection).
    pub fn note(&self, text: &str) {
        match (&self.bar, self.mode) {
            (Some(bar), _) => bar.println(format!("{}: {text}", self.label)),
            (None, ProgressMode::Lines) => eprintln!("{}: {text}", self.label),
            _ => {}
        }
    }

    /// The blob is done; `outcome` says how ("uploaded", "mounted from X", "already there").
    pub fn finish(&self, outcome: &str) {
        match (&self.bar, self.mode) {
            (Some(bar), _) => {
                bar.set_position(self.size);
                bar.finish_with_message(format!("{} {outcome}", self.label));
            }
            (None, ProgressMode::Lines) => {
                eprintln!("{} ({}) {outcome}", self.label, human_size(self.size));
            }
            _ => {}
        }
    }
}

/// `sha256:0123456789ab` (12 hex digits), as docker prints blob ids.
pub fn short_digest(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

pub fn human_size(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}
