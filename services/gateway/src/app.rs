//! Wiring: the shared state, the router of the gateway's own routes (`dispatch` sends
//! everything else to the proxy), the background tasks (active health checks, rate-limit
//! housekeeping, metrics upkeep), and serving with a bounded drain on shutdown.
//!
//! Threads: like nginx's workers, `GATEWAY_WORKERS` threads each run a single-threaded runtime
//! that accepts on its own `SO_REUSEPORT` socket of the listening port and serves its connections start to end, with
//! its own upstream connections (`upstream::Connections`). Measured on 2 cores this beat tokio's work-stealing
//! runtime by a wide margin: a proxied request wakes two tasks per hop, and cross-thread wake-ups
//! dominated. The main thread runs the signal handler and the background tasks.
//!
//! It must never contain request logic of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use ipnet::IpNet;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::config::{Config, ConnectionLimits};
use crate::connection_cap::ConnectionCap;
use crate::dispatch::Gateway;
use crate::edge_auth::Verifier;
use crate::health::HealthCache;
use crate::pool::{Pool, Service};
use crate::rate_limit::RateLimits;
use crate::server::stopped;
use crate::stream_limit::StreamLimits;
use crate::{health, health_check, observe, server};

/// What every handler shares.
pub struct AppState {
    pub api: Arc<Pool>,
    pub inference: Arc<Pool>,
    pub rate_limits: RateLimits,
    pub verifier: Verifier,
    pub trusted_proxies: Vec<IpNet>,
    pub health_detail_networks: Vec<IpNet>,
    pub health_cache: HealthCache,
    pub streams: StreamLimits,
    pub connection_limits: ConnectionLimits,
    pub connection_cap: ConnectionCap,
    pub max_body_bytes: u64,
    pub health_all_timeout: Duration,
}

impl AppState {
    pub fn new(config: &Config) -> Self {
        let pool = |service, pool_config| {
            Arc::new(Pool::new(
                service,
                pool_config,
                config.health_check,
                config.workers,
            ))
        };
        AppState {
            api: pool(Service::Api, &config.api),
            inference: pool(Service::Inference, &config.inference),
            rate_limits: RateLimits::new(&config.rate_limits),
            verifier: Verifier::new(&config.edge_auth),
            trusted_proxies: config.trusted_proxies.clone(),
            health_detail_networks: config.health_detail_networks.clone(),
            health_cache: HealthCache::new(config.health_all_cache),
            streams: StreamLimits::new(config.v1_streams_per_caller),
            connection_limits: config.connection_limits,
            connection_cap: ConnectionCap::new(config.connection_limits.max_per_ip),
            max_body_bytes: config.max_body_bytes,
            health_all_timeout: config.health_all_timeout,
        }
    }

    pub fn pool(&self, service: Service) -> &Pool {
        match service {
            Service::Api => &self.api,
            Service::Inference => &self.inference,
        }
    }
}

/// The gateway's own routes; `dispatch` sends only these paths here.
pub fn own_routes(state: Arc<AppState>, metrics: PrometheusHandle) -> Router {
    let metrics_routes = Router::new()
        .route("/metrics", get(observe::metrics_route))
        .with_state(metrics);
    Router::new()
        .route("/api/health", get(health::gateway_health))
        .route("/api/health/all", get(health::all_health))
        .with_state(state)
        .merge(metrics_routes)
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

/// Binds, starts the workers and the background tasks, and serves until SIGTERM/SIGINT; then
/// lets open requests and streams finish for up to `config.drain_timeout`.
pub fn serve(config: Config, metrics: PrometheusHandle) -> Result<(), ServeError> {
    let address = config.listen;
    let bind_error = |source| ServeError::Bind { address, source };
    // A plain bind first: it fails when anyone holds the port, even with SO_REUSEPORT.
    drop(std::net::TcpListener::bind(address).map_err(bind_error)?);
    let state = Arc::new(AppState::new(&config));
    let gateway = Arc::new(Gateway {
        state: Arc::clone(&state),
        own_routes: own_routes(Arc::clone(&state), metrics.clone()),
    });
    let runtime =
        single_threaded_runtime().map_err(|source| ServeError::Serve { address, source })?;
    // The workers answer as soon as they start: SIGTERM must be caught from then on, not from
    // when this thread first polls the signal (its default action would cut open streams).
    let shutdown = {
        let _runtime = runtime.enter();
        lifecycle::shutdown::signal()
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    for index in 0..config.workers {
        let listener = reuseport_listener(address).map_err(bind_error)?;
        let (gateway, stop, drain) = (Arc::clone(&gateway), stop_rx.clone(), config.drain_timeout);
        let worker = std::thread::Builder::new()
            .name(format!("gateway-worker-{index}"))
            .spawn(move || run_worker(index, listener, gateway, stop, drain))
            .map_err(|source| ServeError::Serve { address, source })?;
        workers.push(worker);
    }
    runtime.block_on(async move {
        spawn_background(&state, &config, metrics);
        let inference_upstream_key = state.inference.upstream_authorization.is_some();
        tracing::info!(%address, workers = config.workers, api = ?urls(&state.api), inference = ?urls(&state.inference), inference_upstream_key, "gateway listening");
        tokio::select! {
            () = shutdown => {}
            () = all_finished(&workers) => tracing::error!("every worker stopped"),
        }
        let _ = stop_tx.send(true);
        let results = tokio::task::spawn_blocking(move || {
            workers.into_iter().map(|worker| worker.join()).collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for result in results {
            match result {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Err(err),
                Err(_) => tracing::error!("a worker thread panicked"),
            }
        }
        tracing::info!("gateway stopped");
        Ok(())
    })
}

async fn all_finished(workers: &[std::thread::JoinHandle<Result<(), ServeError>>]) {
    while !workers.iter().all(|w| w.is_finished()) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One listening socket per worker on the same port: the kernel spreads new connections over
/// them evenly (nginx's `reuseport`), where one shared socket lets the first awake worker take a
/// whole burst.
fn reuseport_listener(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn single_threaded_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// One worker: accepts on its own socket and serves its connections on its own runtime.
fn run_worker(
    index: usize,
    listener: std::net::TcpListener,
    gateway: Arc<Gateway>,
    stop: tokio::sync::watch::Receiver<bool>,
    drain: Duration,
) -> Result<(), ServeError> {
    crate::pool::set_worker_index(index);
    let address = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let serve_error = |source| ServeError::Serve { address, source };
    let runtime = single_threaded_runtime().map_err(serve_error)?;
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener).map_err(serve_error)?;
        let deadline = async {
            stopped(stop.clone()).await;
            tokio::time::sleep(drain).await;
        };
        tokio::select! {
            () = server::serve(listener, gateway, stop.clone()) => {}
            () = deadline => tracing::warn!(?drain, worker = index, "drain deadline passed; closing the streams still open"),
        }
        Ok(())
    })
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
