//! Wiring: the shared state, the router (the gateway's own routes, then the proxy as the
//! fallback, all behind the request observer), the background tasks (active health checks,
//! rate-limit housekeeping, metrics upkeep), and serving with a bounded drain on shutdown.
//!
//! It must never contain request logic of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use ipnet::IpNet;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::edge_auth::Verifier;
use crate::pool::{Pool, Service, upstream_client};
use crate::rate_limit::RateLimits;
use crate::{health, health_check, observe, proxy};

/// What every handler shares.
pub struct AppState {
    pub api: Arc<Pool>,
    pub inference: Arc<Pool>,
    pub rate_limits: RateLimits,
    pub verifier: Verifier,
    pub trusted_proxies: Vec<IpNet>,
    pub max_body_bytes: u64,
    pub health_all_timeout: Duration,
    pub probe_client: Client<HttpConnector, Body>,
}

impl AppState {
    pub fn new(config: &Config) -> Self {
        AppState {
            api: Arc::new(Pool::new(Service::Api, &config.api, config.health_check)),
            inference: Arc::new(Pool::new(
                Service::Inference,
                &config.inference,
                config.health_check,
            )),
            rate_limits: RateLimits::new(&config.rate_limits),
            verifier: Verifier::new(&config.edge_auth),
            trusted_proxies: config.trusted_proxies.clone(),
            max_body_bytes: config.max_body_bytes,
            health_all_timeout: config.health_all_timeout,
            probe_client: upstream_client(config.health_all_timeout),
        }
    }

    pub fn pool(&self, service: Service) -> &Pool {
        match service {
            Service::Api => &self.api,
            Service::Inference => &self.inference,
        }
    }
}

pub fn router(state: Arc<AppState>, metrics: PrometheusHandle) -> Router {
    let metrics_routes = Router::new()
        .route("/metrics", get(observe::metrics_route))
        .with_state(metrics);
    Router::new()
        .route("/api/health", get(health::gateway_health))
        .route("/api/health/all", get(health::all_health))
        .fallback(proxy::forward)
        .with_state(state)
        .merge(metrics_routes)
        .layer(axum::middleware::from_fn(observe::observe))
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {address} (GATEWAY_LISTEN): {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving on {address}: {source}")]
    Serve {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds, starts the background tasks and serves until SIGTERM/SIGINT, then lets open requests
/// and streams finish for up to `config.drain_timeout`.
pub async fn serve(config: Config, metrics: PrometheusHandle) -> Result<(), ServeError> {
    let address = config.listen;
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Bind { address, source })?;
    let state = Arc::new(AppState::new(&config));
    spawn_background(&state, &config, metrics.clone());
    tracing::info!(%address, api = ?urls(&state.api), inference = ?urls(&state.inference), "gateway listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        lifecycle::shutdown::signal().await;
        let _ = stop_tx.send(true);
    });
    let app = router(state, metrics).into_make_service_with_connect_info::<SocketAddr>();
    let server = axum::serve(listener, app).with_graceful_shutdown(stopped(stop_rx.clone()));
    let drain = config.drain_timeout;
    let deadline = async move {
        stopped(stop_rx).await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        result = server.into_future() => result.map_err(|source| ServeError::Serve { address, source })?,
        () = deadline => tracing::warn!(?drain, "drain deadline passed; closing the streams still open"),
    }
    tracing::info!("gateway stopped");
    Ok(())
}

async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

fn urls(pool: &Pool) -> Vec<String> {
    pool.instances.iter().map(|i| i.upstream.url()).collect()
}

fn spawn_background(state: &Arc<AppState>, config: &Config, metrics: PrometheusHandle) {
    let rules = config.health_check;
    for pool in [&state.api, &state.inference] {
        tokio::spawn(health_check::run(
            Arc::clone(pool),
            rules.interval,
            rules.timeout,
        ));
    }
    let housekeeping = Arc::clone(state);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(10));
        loop {
            ticker.tick().await;
            housekeeping.rate_limits.forget_idle_clients();
            metrics.run_upkeep();
        }
    });
}
