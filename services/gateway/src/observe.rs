//! What the gateway records about every request: the request id (accepted from `x-request-id`
//! when it is sane, generated otherwise; forwarded, echoed and in the log span), one JSON log
//! line, and the Prometheus metrics served at `/metrics`.
//!
//! It must never decide where a request goes or whether it is allowed.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::IntoResponse;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The longest client-supplied request id the gateway keeps.
const MAX_REQUEST_ID: usize = 128;

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
            let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
            uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
            // One allocation shared by every copy of the id (request, upstream, response).
            HeaderValue::from_maybe_shared(hyper::body::Bytes::from_owner(text))
                .unwrap_or(HeaderValue::from_static("invalid"))
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

/// What is kept of a request until its response is recorded: when it started, its route
/// label, and the method and path for the log line (only taken when info lines are on).
pub struct Observation {
    started: Instant,
    route: &'static str,
    logged: Option<(Method, String)>,
}

impl Observation {
    pub fn start<B>(request: &Request<B>) -> Self {
        let logged = tracing::enabled!(tracing::Level::INFO)
            .then(|| (request.method().clone(), request.uri().path().to_owned()));
        Observation {
            started: Instant::now(),
            route: route_label(request.uri().path()),
            logged,
        }
    }

    pub fn route(&self) -> &'static str {
        self.route
    }

    /// Counts the request, records its duration and writes its log line.
    pub fn finish<B>(self, response: &Response<B>) {
        let status = response.status().as_u16();
        let elapsed = self.started.elapsed();
        record(self.route, status, elapsed);
        if let Some((method, path)) = self.logged {
            tracing::info!(
                method = %method,
                path,
                status,
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                "request"
            );
        }
    }
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
pub async fn metrics_route(State(handle): State<PrometheusHandle>) -> axum::response::Response {
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
