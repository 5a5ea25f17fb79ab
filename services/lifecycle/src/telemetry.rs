//! Logging: JSON lines on stdout (one object per event, with the span fields such as the
//! request id), filtered by `RUST_LOG` with `info` as the default.

use tracing_subscriber::EnvFilter;

/// The log line format. JSON is the default for servers; `Pretty` is for a human at a terminal
/// (`LOG_FORMAT=pretty`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

impl LogFormat {
    /// Reads `LOG_FORMAT` (`json` or `pretty`); anything else, or nothing, is JSON.
    pub fn from_env() -> Self {
        match std::env::var("LOG_FORMAT").as_deref() {
            Ok("pretty") => LogFormat::Pretty,
            _ => LogFormat::Json,
        }
    }
}

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // `try_init` so that tests which start several servers in one process do not panic.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
