//! The shutdown signal: a future that completes on SIGINT or SIGTERM, for
//! `axum::serve(..).with_graceful_shutdown(..)`.

/// Completes when the process receives SIGINT (Ctrl-C) or SIGTERM (`docker stop`).
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No SIGINT handler could be installed: wait on SIGTERM alone.
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "shutting down"),
        () = terminate => tracing::info!(signal = "SIGTERM", "shutting down"),
    }
}
