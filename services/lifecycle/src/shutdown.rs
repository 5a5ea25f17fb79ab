//! The shutdown signal: a future that completes on SIGINT or SIGTERM, for
//! `axum::serve(..).with_graceful_shutdown(..)` and the gateway's own drain.
//!
//! The handlers are installed when `signal()` is called, not when its future is first polled:
//! a service that starts serving before it polls the future (the gateway's workers answer
//! while its main thread is still setting up) would otherwise die of a SIGTERM's default
//! action in that window instead of draining.

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal as unix_signal};

/// Installs the SIGINT (Ctrl-C) and SIGTERM (`docker stop`) handlers now and returns a future
/// that completes when either arrives. Call it inside a tokio runtime (or after
/// `Runtime::enter`); a handler that cannot be installed is logged and waited on as never.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    let mut interrupt = install(SignalKind::interrupt(), "SIGINT");
    let mut terminate = install(SignalKind::terminate(), "SIGTERM");
    async move {
        let interrupted = async {
            match interrupt.as_mut() {
                Some(stream) => stream.recv().await,
                None => std::future::pending().await,
            }
        };
        let terminated = async {
            match terminate.as_mut() {
                Some(stream) => stream.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupted => tracing::info!(signal = "SIGINT", "shutting down"),
            _ = terminated => tracing::info!(signal = "SIGTERM", "shutting down"),
        }
    }
}

fn install(kind: SignalKind, name: &str) -> Option<tokio::signal::unix::Signal> {
    match unix_signal(kind) {
        Ok(stream) => Some(stream),
        Err(err) => {
            tracing::error!(signal = name, error = %err, "cannot install the signal handler");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[tokio::test]
    async fn a_sigterm_before_the_first_poll_is_caught_not_fatal() {
        let shutdown = super::signal();
        // Not polled yet: with handlers installed only on the first poll, this SIGTERM takes
        // its default action and kills the test process.
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM failed: {status}");
        tokio::time::timeout(Duration::from_secs(5), shutdown)
            .await
            .expect("the signal future completes for a SIGTERM sent before it was polled");
    }
}
