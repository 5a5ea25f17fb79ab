//! What the gateway records about every request: the request id (accepted from `x-request-id`
//! when it is sane, generated otherwise; forwarded, echoed and in the log span), one JSON log
//! line, and the Prometheus metrics served at `/metrics`.
//!
//! It must never decide where a request goes or whether it is allowed.

use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_TYPE, HeaderValue};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::Instrument;

use crate::forwarding::REQUEST_ID;

/// The longest client-supplied request id the gateway keeps.
const MAX_REQUEST_ID: usize = 128;

/// The request's id, in its extensions for handlers.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

/// A sane client id is 1..=128 visible ASCII characters; anything else is replaced.
pub fn accept_or_generate(supplied: Option<&HeaderValue>) -> HeaderValue {
    supplied
        .filter(|v| {
            let bytes = v.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= MAX_REQUEST_ID
                && bytes.iter().all(u8::is_ascii_graphic)
        })
        .cloned()
        .unwrap_or_else(|| {
            let id = uuid::Uuid::new_v4();
            HeaderValue::from_str(&id.to_string()).unwrap_or(HeaderValue::from_static("invalid"))
        })
}

/// The route family a path belongs to, a low-cardinality metrics label.
pub fn route_label(path: &str) -> &'static str {
    match path {
        "/api/health" | "/api/health/all" => "health",
        "/metrics" => "metrics",
        _ if path == "/api" || path.starts_with("/api/") => "api",
        _ if path == "/v1" || path.starts_with("/v1/") => "inference",
        _ => "other",
    }
}

/// The middleware around every route.
pub async fn observe(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = accept_or_generate(request.headers().get(&REQUEST_ID));
    request.headers_mut().insert(REQUEST_ID, id.clone());
    request.extensions_mut().insert(RequestId(id.clone()));
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let span = tracing::info_span!("request", request_id = %String::from_utf8_lossy(id.as_bytes()));
    async move {
        let mut response = next.run(request).await;
        response.headers_mut().insert(REQUEST_ID, id);
        let status = response.status().as_u16();
        let elapsed = started.elapsed();
        record(route_label(&path), status, elapsed);
        tracing::info!(
            method = %method,
            path,
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
        response
    }
    .instrument(span)
    .await
}

const ROUTES: [&str; 5] = ["api", "inference", "health", "metrics", "other"];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Metric handles for every (route, status class), registered once: the hot path then only
/// touches atomics instead of hashing labels on every request.
struct Handles {
    requests: Vec<metrics::Counter>,
    durations: Vec<metrics::Histogram>,
}

fn handles() -> &'static Handles {
    static HANDLES: std::sync::OnceLock<Handles> = std::sync::OnceLock::new();
    HANDLES.get_or_init(|| Handles {
        requests: ROUTES
            .iter()
            .flat_map(|route| {
                STATUS_CLASSES.iter().map(move |status| {
                    metrics::counter!("gateway_requests_total", "route" => *route, "status" => *status)
                })
            })
            .collect(),
        durations: ROUTES
            .iter()
            .map(|route| metrics::histogram!("gateway_request_duration_seconds", "route" => *route))
            .collect(),
    })
}

fn record(route: &'static str, status: u16, elapsed: Duration) {
    let route_index = ROUTES
        .iter()
        .position(|r| *r == route)
        .unwrap_or(ROUTES.len() - 1);
    let status_index = STATUS_CLASSES
        .iter()
        .position(|s| *s == status_class(status))
        .unwrap_or(STATUS_CLASSES.len() - 1);
    let handles = handles();
    handles.requests[route_index * STATUS_CLASSES.len() + status_index].increment(1);
    handles.durations[route_index].record(elapsed.as_secs_f64());
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Installs the global Prometheus recorder; call once per process.
pub fn install_metrics() -> Result<PrometheusHandle, String> {
    let buckets = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    PrometheusBuilder::new()
        .set_buckets(&buckets)
        .map_err(|err| err.to_string())?
        .install_recorder()
        .map_err(|err| format!("installing the metrics recorder: {err}"))
}

/// `GET /metrics`.
pub async fn metrics_route(State(handle): State<PrometheusHandle>) -> Response {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_sane() {
        let good = HeaderValue::from_static("req-42.abc");
        assert_eq!(accept_or_generate(Some(&good)), good);
        let spaced = HeaderValue::from_static("has space");
        assert_ne!(accept_or_generate(Some(&spaced)), spaced);
        let long = HeaderValue::from_str(&"a".repeat(129)).expect("value");
        assert_eq!(accept_or_generate(Some(&long)).len(), 36);
        assert_ne!(accept_or_generate(None), accept_or_generate(None));
    }

    #[test]
    fn routes_are_labelled() {
        assert_eq!(route_label("/api/health/all"), "health");
        assert_eq!(route_label("/api/items/3"), "api");
        assert_eq!(route_label("/v1/chat/completions"), "inference");
        assert_eq!(route_label("/v1x"), "other");
    }
}
