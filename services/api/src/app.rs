//! The application: [`AppState`] (what every handler may use) and [`router`], which maps each
//! route to its handler and wraps the limits and metrics around them. Handlers live in
//! [`crate::routes`]; this module decides nothing about a request itself.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::auth::password::Hashing;
use crate::auth::token::TokenKeys;
use crate::config::Config;
use crate::llm::LlmClient;
use crate::routes::health::ReadinessCache;
use crate::routes::{auth, chat, files, health, sessions};
use crate::storage::Store;
use crate::streams::StreamLimiter;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub pool: PgPool,
    pub tokens: TokenKeys,
    /// Password hashing, bounded in concurrency.
    pub hashing: Hashing,
    /// The last readiness answer, reused for `API_READY_CACHE_MS`.
    pub readiness: ReadinessCache,
    pub llm: LlmClient,
    pub store: Store,
    pub streams: StreamLimiter,
    pub metrics: PrometheusHandle,
    /// Cancelled at shutdown so open chat streams end (and store their partial reply).
    pub shutdown: CancellationToken,
}

pub fn router(state: AppState) -> Router {
    let json_limit = state.config.limits.json_body_bytes;
    let upload_limit = state.config.limits.upload_bytes;
    let uploads = Router::new()
        .route("/api/files", post(files::upload).get(files::list))
        .layer(DefaultBodyLimit::max(upload_limit));
    Router::new()
        .route("/api/health", get(health::live))
        .route("/api/health/ready", get(health::ready))
        .route("/metrics", get(crate::metrics::render))
        .route("/api/auth/register", post(auth::register))
        .route("/api/auth/login", post(auth::login))
        .route("/api/auth/me", get(auth::me))
        .route("/api/sessions", post(sessions::create).get(sessions::list))
        .route(
            "/api/sessions/{id}",
            get(sessions::get).delete(sessions::delete),
        )
        .route("/api/chat", post(chat::chat))
        .route(
            "/api/files/{id}",
            get(files::download).delete(files::delete),
        )
        .layer(DefaultBodyLimit::max(json_limit))
        .merge(uploads)
        .fallback(crate::routes::not_found)
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .with_state(state)
}
