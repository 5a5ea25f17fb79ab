//! Upstream pools: the instances of one service, whether each is healthy, and round-robin over
//! the healthy ones. The health state machine (`HealthState::record`) is pure; active probing
//! lives in `health_check`, passive ejection is called by `proxy` on connect errors.
//!
//! The gateway runs one single-threaded runtime per worker thread (see `app`); each instance
//! keeps its upstream connections per worker (`upstream::Connections`) so that a request reuses
//! connections driven by its own thread's runtime and never wakes another thread.
//!
//! A pool must never build requests or know about routes.

use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use http::HeaderValue;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::{HealthCheckConfig, PoolConfig, Upstream};
use crate::upstream::Connections;

/// Which service a pool fronts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Api,
    Inference,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Api => "api",
            Service::Inference => "inference",
        }
    }
}

/// The outcome of one health probe or one forwarded request's connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

/// Consecutive-outcome counting with hysteresis: `failures_to_eject` failures in a row eject,
/// `successes_to_return` successes in a row bring an instance back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthState {
    pub healthy: bool,
    failures: u32,
    successes: u32,
}

impl HealthState {
    pub const STARTING: HealthState = HealthState {
        healthy: true,
        failures: 0,
        successes: 0,
    };

    pub fn record(self, outcome: Outcome, rules: &HealthCheckConfig) -> HealthState {
        match outcome {
            Outcome::Success => {
                let successes = self.successes.saturating_add(1);
                HealthState {
                    healthy: self.healthy || successes >= rules.successes_to_return,
                    failures: 0,
                    successes,
                }
            }
            Outcome::Failure => {
                let failures = self.failures.saturating_add(1);
                HealthState {
                    healthy: self.healthy && failures < rules.failures_to_eject,
                    failures,
                    successes: 0,
                }
            }
        }
    }

    /// Passive ejection: a connect error takes the instance out at once.
    pub fn eject(self) -> HealthState {
        HealthState {
            healthy: false,
            failures: self.failures.saturating_add(1),
            successes: 0,
        }
    }
}

/// One upstream instance, its connections and its health.
pub struct Instance {
    pub upstream: Upstream,
    pub connections: Connections,
    /// Read on every request without a lock; written under `state`'s lock.
    healthy: AtomicBool,
    state: Mutex<HealthState>,
}

impl Instance {
    fn new(upstream: Upstream, connect_timeout: Duration, workers: usize) -> Self {
        Instance {
            connections: Connections::new(&upstream.authority, connect_timeout, workers),
            upstream,
            healthy: AtomicBool::new(true),
            state: Mutex::new(HealthState::STARTING),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Applies `change` to the state; returns `Some(healthy)` when health flipped.
    fn update(&self, change: impl FnOnce(HealthState) -> HealthState) -> Option<bool> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = state.healthy;
        *state = change(*state);
        self.healthy.store(state.healthy, Ordering::Relaxed);
        (before != state.healthy).then_some(state.healthy)
    }
}

/// One service's instances, the HTTP client that probes them, and its timeouts.
pub struct Pool {
    pub service: Service,
    pub instances: Vec<Instance>,
    /// The active health checks' client (requests use `Instance::connections`).
    probe_client: Client<HttpConnector, Body>,
    pub health_path: String,
    pub critical: bool,
    pub response_timeout: Duration,
    /// `Authorization: Bearer <key>` for every forwarded request (never for the probes: the
    /// health paths are open), when the pool has an upstream key.
    pub upstream_authorization: Option<HeaderValue>,
    rules: HealthCheckConfig,
    next: AtomicUsize,
}

impl Pool {
    pub fn new(
        service: Service,
        config: &PoolConfig,
        rules: HealthCheckConfig,
        workers: usize,
    ) -> Self {
        for upstream in &config.upstreams {
            metrics::gauge!("gateway_upstream_healthy", "service" => service.name(), "upstream" => upstream.url())
                .set(1.0);
        }
        Pool {
            service,
            instances: config
                .upstreams
                .iter()
                .cloned()
                .map(|upstream| Instance::new(upstream, config.connect_timeout, workers))
                .collect(),
            probe_client: upstream_client(config.connect_timeout),
            health_path: config.health_path.clone(),
            critical: config.critical,
            response_timeout: config.response_timeout,
            upstream_authorization: config
                .upstream_key
                .as_ref()
                .map(|key| key.authorization().clone()),
            rules,
            next: AtomicUsize::new(0),
        }
    }

    /// The client of the active health checks.
    pub fn client(&self) -> &Client<HttpConnector, Body> {
        &self.probe_client
    }

    /// The next healthy instance in round-robin order, or `None` when nobody is healthy.
    pub fn pick(&self) -> Option<&Instance> {
        let count = self.instances.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .map(|offset| &self.instances[(start + offset) % count])
            .find(|instance| instance.is_healthy())
    }

    /// Records an active probe's outcome.
    pub fn record(&self, instance: &Instance, outcome: Outcome) {
        let rules = self.rules;
        if let Some(healthy) = instance.update(|state| state.record(outcome, &rules)) {
            self.log_flip(instance, healthy, "health check");
        }
    }

    /// Takes an instance out after a connect error; active checks bring it back.
    pub fn eject(&self, instance: &Instance) {
        if let Some(healthy) = instance.update(HealthState::eject) {
            self.log_flip(instance, healthy, "connect error");
        }
    }

    fn log_flip(&self, instance: &Instance, healthy: bool, cause: &str) {
        let service = self.service.name();
        let upstream = instance.upstream.url();
        metrics::gauge!("gateway_upstream_healthy", "service" => service, "upstream" => upstream.clone())
            .set(if healthy { 1.0 } else { 0.0 });
        if healthy {
            tracing::info!(service, upstream, cause, "upstream returned to the pool");
        } else {
            tracing::warn!(service, upstream, cause, "upstream ejected from the pool");
        }
    }
}

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Marks the calling thread as worker `index`; call first thing on each worker thread.
pub fn set_worker_index(index: usize) {
    WORKER.with(|worker| worker.set(index));
}

/// The calling thread's worker index, or `usize::MAX` off the workers.
pub fn worker_slot() -> usize {
    WORKER.with(Cell::get)
}

/// A keep-alive HTTP/1 client with the pool's connect timeout.
pub fn upstream_client(connect_timeout: Duration) -> Client<HttpConnector, Body> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_upstream;

    const RULES: HealthCheckConfig = HealthCheckConfig {
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        failures_to_eject: 2,
        successes_to_return: 3,
    };

    #[test]
    fn hysteresis_ejects_and_returns() {
        use Outcome::*;
        let mut state = HealthState::STARTING;
        state = state.record(Failure, &RULES);
        assert!(state.healthy, "one failure is not enough");
        state = state.record(Success, &RULES).record(Failure, &RULES);
        assert!(state.healthy, "a success resets the count");
        state = state.record(Failure, &RULES);
        assert!(!state.healthy);
        state = state.record(Success, &RULES).record(Success, &RULES);
        assert!(!state.healthy, "two of three successes");
        state = state.record(Success, &RULES);
        assert!(state.healthy);
        assert!(!state.eject().healthy);
    }

    #[tokio::test]
    async fn round_robin_skips_the_unhealthy() {
        let config = PoolConfig {
            upstreams: ["http://a:1", "http://b:2", "http://c:3"]
                .into_iter()
                .map(|u| parse_upstream(u).expect("valid"))
                .collect(),
            health_path: "/health".into(),
            critical: true,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            upstream_key: None,
        };
        let pool = Pool::new(Service::Api, &config, RULES, 2);
        let picks: Vec<String> = (0..3)
            .map(|_| pool.pick().expect("healthy").upstream.url())
            .collect();
        assert_eq!(picks, ["http://a:1", "http://b:2", "http://c:3"]);
        pool.eject(&pool.instances[1]);
        let picks: Vec<String> = (0..4)
            .map(|_| pool.pick().expect("healthy").upstream.url())
            .collect();
        assert!(!picks.contains(&"http://b:2".to_owned()), "{picks:?}");
        pool.eject(&pool.instances[0]);
        pool.eject(&pool.instances[2]);
        assert!(pool.pick().is_none());
    }
}
