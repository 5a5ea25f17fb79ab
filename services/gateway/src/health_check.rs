//! Active health checks: one task per pool probes every instance's health path at the
//! configured interval and feeds the outcomes to the pool's state machine. `probe` is also what
//! `/api/health/all` uses, so both see an instance the same way. Probes carry no upstream key:
//! the health paths are open (inference's `/health`, the api's `/api/health`), and the key goes
//! only with the requests that need it.
//!
//! It must never route traffic or decide health thresholds (that is `pool`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::config::Upstream;
use crate::pool::{Outcome, Pool};

/// What one probe saw.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    pub latency: Duration,
    /// The HTTP status, when an answer came.
    pub status: Option<u16>,
    /// Why the probe failed, when it did.
    pub error: Option<String>,
}

impl ProbeReport {
    pub fn is_up(&self) -> bool {
        self.error.is_none()
    }
}

/// GETs `upstream` + `path` once; up means a 2xx answer within `timeout`.
pub async fn probe(
    client: &Client<HttpConnector, Body>,
    upstream: &Upstream,
    path: &str,
    timeout: Duration,
) -> ProbeReport {
    let started = Instant::now();
    let request = http::Request::get(format!("{}{path}", upstream.url()))
        .header(http::header::USER_AGENT, "cairn-gateway-health")
        .body(Body::empty());
    let request = match request {
        Ok(request) => request,
        Err(err) => return failed(started, None, err.to_string()),
    };
    match tokio::time::timeout(timeout, client.request(request)).await {
        Err(_) => failed(started, None, format!("no answer within {timeout:?}")),
        Ok(Err(err)) => failed(started, None, crate::error::describe(&err)),
        Ok(Ok(response)) => {
            let status = response.status();
            // Drain the small body so the connection goes back to the pool.
            let _ = tokio::time::timeout(
                timeout,
                http_body_util::BodyExt::collect(response.into_body()),
            )
            .await;
            if status.is_success() {
                ProbeReport {
                    latency: started.elapsed(),
                    status: Some(status.as_u16()),
                    error: None,
                }
            } else {
                failed(started, Some(status.as_u16()), format!("answered {status}"))
            }
        }
    }
}

fn failed(started: Instant, status: Option<u16>, error: String) -> ProbeReport {
    ProbeReport {
        latency: started.elapsed(),
        status,
        error: Some(error),
    }
}

/// Probes every instance of `pool` forever, every `interval`.
pub async fn run(pool: Arc<Pool>, interval: Duration, timeout: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut probes = tokio::task::JoinSet::new();
        for index in 0..pool.instances.len() {
            let pool = Arc::clone(&pool);
            probes.spawn(async move {
                let instance = &pool.instances[index];
                let report = probe(
                    pool.client(),
                    &instance.upstream,
                    &pool.health_path,
                    timeout,
                )
                .await;
                let outcome = if report.is_up() {
                    Outcome::Success
                } else {
                    tracing::debug!(
                        service = pool.service.name(),
                        upstream = instance.upstream.url(),
                        error = report.error,
                        "health probe failed"
                    );
                    Outcome::Failure
                };
                pool.record(instance, outcome);
            });
        }
        while probes.join_next().await.is_some() {}
    }
}
