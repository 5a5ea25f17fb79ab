//! The gateway's own health routes. `/api/health` says the gateway process answers.
//! `/api/health/all` probes every instance of every service concurrently with a short timeout
//! and reports ok/degraded/down per service, up/down and latency per instance; it answers 200
//! when every critical service has at least one instance up, 503 otherwise.
//! `summarize` is the pure decision; the handler only gathers probe reports.
//!
//! The details (instance URLs, probe errors) are for internal callers only ([`is_internal`]);
//! everyone else gets `{"status": …}` with the same HTTP status, and draws from the general
//! rate limit. One round of probes is reused for `GATEWAY_HEALTH_ALL_CACHE_MS` and callers
//! arriving while it runs wait for it, so no number of callers multiplies the probes.
//!
//! It must never change pool health: a dashboard looking must not eject anyone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::{HeaderMap, StatusCode};
use ipnet::IpNet;
use serde::Serialize;

use crate::app::AppState;
use crate::error::GatewayError;
use crate::forwarding::{self, Peer};
use crate::health_check::{ProbeReport, probe};
use crate::pool::Instance;
use crate::rate_limit::RateKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Degraded,
    Down,
}

#[derive(Debug, Serialize)]
pub struct InstanceHealth {
    pub url: String,
    /// `up` or `down`.
    pub status: &'static str,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the gateway is routing to it right now (active + passive health).
    pub in_rotation: bool,
}

#[derive(Debug, Serialize)]
pub struct ServiceHealth {
    pub name: &'static str,
    pub status: Status,
    pub critical: bool,
    pub instances: Vec<InstanceHealth>,
}

#[derive(Debug, Serialize)]
pub struct HealthReport {
    pub status: Status,
    pub services: Vec<ServiceHealth>,
}

/// ok when all instances are up, degraded when some are, down when none is.
pub fn service_status(up: usize, total: usize) -> Status {
    match up {
        0 => Status::Down,
        n if n == total => Status::Ok,
        _ => Status::Degraded,
    }
}

/// The overall verdict and its HTTP status: down (503) when a critical service is down.
pub fn summarize(services: &[ServiceHealth]) -> (Status, StatusCode) {
    if services
        .iter()
        .any(|s| s.critical && s.status == Status::Down)
    {
        (Status::Down, StatusCode::SERVICE_UNAVAILABLE)
    } else if services.iter().all(|s| s.status == Status::Ok) {
        (Status::Ok, StatusCode::OK)
    } else {
        (Status::Degraded, StatusCode::OK)
    }
}

/// `GET /api/health`.
pub async fn gateway_health() -> Response {
    Json(serde_json::json!({
        "status": "ok",
        "service": "gateway",
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

/// An internal caller sees the details: its TCP peer is in `GATEWAY_HEALTH_DETAIL_NETWORKS`
/// (default loopback) and it came straight, not through a proxy: no `X-Forwarded-For` and no
/// `Forwarded` header (nginx always sets `X-Forwarded-For`).
pub fn is_internal(peer: &Peer, headers: &HeaderMap, detail_networks: &[IpNet]) -> bool {
    !headers.contains_key("x-forwarded-for")
        && !headers.contains_key(http::header::FORWARDED)
        && detail_networks
            .iter()
            .any(|net| net.contains(&peer.address))
}

/// One round of probes, kept for a short while.
pub struct Probed {
    pub code: StatusCode,
    pub report: HealthReport,
}

/// The latest round of probes and when it was taken; the lock is held while a round runs, so
/// callers arriving meanwhile wait for that round instead of starting their own.
pub struct HealthCache {
    ttl: Duration,
    latest: tokio::sync::Mutex<Option<(Instant, Arc<Probed>)>>,
}

impl HealthCache {
    pub fn new(ttl: Duration) -> Self {
        HealthCache {
            ttl,
            latest: tokio::sync::Mutex::new(None),
        }
    }

    async fn get(&self, state: &Arc<AppState>) -> Arc<Probed> {
        let mut latest = self.latest.lock().await;
        if let Some((taken, probed)) = latest.as_ref()
            && taken.elapsed() < self.ttl
        {
            return Arc::clone(probed);
        }
        let probed = Arc::new(probe_all(state).await);
        *latest = Some((Instant::now(), Arc::clone(&probed)));
        probed
    }
}

/// `GET /api/health/all`.
pub async fn all_health(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    let internal = is_internal(&peer, &headers, &state.health_detail_networks);
    if !internal {
        let client = forwarding::client_ip(&peer, &headers, &state.trusted_proxies);
        if let Err(refusal) = state
            .rate_limits
            .check(&RateKey::address(client), "/api/health/all")
        {
            return GatewayError::RateLimited {
                bucket: refusal.bucket.name(),
                retry_after: refusal.retry_after,
            }
            .into_response();
        }
    }
    let probed = state.health_cache.get(&state).await;
    if internal {
        (probed.code, Json(&probed.report)).into_response()
    } else {
        let bare = serde_json::json!({ "status": probed.report.status });
        (probed.code, Json(bare)).into_response()
    }
}

async fn probe_all(state: &AppState) -> Probed {
    let pools = [Arc::clone(&state.api), Arc::clone(&state.inference)];
    // Every instance of every service at once: the slowest probe bounds the whole answer.
    let mut probes = tokio::task::JoinSet::new();
    for (p, pool) in pools.iter().enumerate() {
        for i in 0..pool.instances.len() {
            let pool = Arc::clone(pool);
            // The pool's probe client: the one the active health checks use.
            let client = pool.client().clone();
            let timeout = state.health_all_timeout;
            probes.spawn(async move {
                let instance = &pool.instances[i];
                let report = probe(&client, &instance.upstream, &pool.health_path, timeout).await;
                (p, i, instance_health(instance, report))
            });
        }
    }
    let mut found: Vec<Vec<Option<InstanceHealth>>> = pools
        .iter()
        .map(|pool| pool.instances.iter().map(|_| None).collect())
        .collect();
    while let Some(joined) = probes.join_next().await {
        if let Ok((p, i, health)) = joined {
            found[p][i] = Some(health);
        }
    }
    let services: Vec<ServiceHealth> = pools
        .iter()
        .zip(found)
        .map(|(pool, instances)| {
            let instances: Vec<InstanceHealth> = instances.into_iter().flatten().collect();
            let up = instances.iter().filter(|i| i.status == "up").count();
            ServiceHealth {
                name: pool.service.name(),
                status: service_status(up, pool.instances.len()),
                critical: pool.critical,
                instances,
            }
        })
        .collect();
    let (status, code) = summarize(&services);
    Probed {
        code,
        report: HealthReport { status, services },
    }
}

fn instance_health(instance: &Instance, report: ProbeReport) -> InstanceHealth {
    InstanceHealth {
        url: instance.upstream.url(),
        status: if report.is_up() { "up" } else { "down" },
        latency_ms: (report.latency.as_secs_f64() * 1e4).round() / 10.0,
        http_status: report.status,
        error: report.error,
        in_rotation: instance.is_healthy(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(status: Status, critical: bool) -> ServiceHealth {
        ServiceHealth {
            name: "s",
            status,
            critical,
            instances: Vec::new(),
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(service_status(2, 2), Status::Ok);
        assert_eq!(service_status(1, 2), Status::Degraded);
        assert_eq!(service_status(0, 2), Status::Down);
        use Status::*;
        let ok = [service(Ok, true), service(Ok, false)];
        assert_eq!(summarize(&ok), (Ok, StatusCode::OK));
        let optional_down = [service(Ok, true), service(Down, false)];
        assert_eq!(summarize(&optional_down), (Degraded, StatusCode::OK));
        let degraded = [service(Degraded, true)];
        assert_eq!(summarize(&degraded), (Degraded, StatusCode::OK));
        let down = [service(Down, true), service(Ok, true)];
        assert_eq!(summarize(&down), (Down, StatusCode::SERVICE_UNAVAILABLE));
    }

    #[test]
    fn only_direct_callers_from_the_detail_networks_are_internal() {
        let loopback: Vec<IpNet> = vec!["127.0.0.0/8".parse().expect("net")];
        let local = Peer::new([127, 0, 0, 1].into(), &loopback);
        let outside = Peer::new([192, 0, 2, 9].into(), &loopback);
        let mut proxied = HeaderMap::new();
        proxied.insert("x-forwarded-for", "203.0.113.5".parse().expect("value"));
        assert!(is_internal(&local, &HeaderMap::new(), &loopback));
        assert!(
            !is_internal(&local, &proxied, &loopback),
            "came through nginx"
        );
        assert!(!is_internal(&outside, &HeaderMap::new(), &loopback));
    }
}
