//! HTTP: the axum router, its state and small handlers for `/health`, `/metrics`,
//! `GET /v1/models` and `POST /v1/chat/completions`, and the optional API key on `/v1`.
//!
//! Handlers parse, call `completion` and the engine, and answer; they must never sample,
//! tokenize beyond admission, or format errors themselves (`error` does).

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::completion::{self, CompletionId, ServedModel, StreamUsage};
use crate::engine::{Engine, SubmitError};
use crate::error::ApiError;
use crate::metrics;
use crate::openai::{ChatCompletionRequest, ModelCard, ModelList};

/// The loaded model and the engine serving it, set once loading finishes.
pub struct Ready {
    pub engine: Engine,
    pub model: ServedModel,
}

#[derive(Clone)]
pub struct AppState {
    pub ready: Arc<OnceLock<Ready>>,
    pub api_key: Option<Arc<str>>,
    pub metrics: PrometheusHandle,
    /// Becomes true on shutdown; open streams end so graceful shutdown can finish.
    pub shutdown: watch::Receiver<bool>,
}

impl AppState {
    fn ready(&self) -> Result<&Ready, ApiError> {
        self.ready.get().ok_or(ApiError::Loading)
    }
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(render_metrics))
        .merge(v1)
        .with_state(state)
}

async fn health(State(state): State<AppState>) -> Response {
    match state.ready() {
        Ok(_) => (StatusCode::OK, "ok").into_response(),
        Err(error) => error.into_response(),
    }
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn require_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(key) = &state.api_key {
        let given = bearer_token(request.headers()).unwrap_or_default();
        if !same_secret(given.as_bytes(), key.as_bytes()) {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(next.run(request).await)
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Compares without an early exit, so timing does not reveal how much of a key matched.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

async fn list_models(State(state): State<AppState>) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    let card = ModelCard {
        id: ready.model.name.clone(),
        object: "model",
        created: CompletionId::new(&ready.model.name).created,
        owned_by: "cairn",
        max_model_len: ready.model.max_model_len,
    };
    Ok(axum::Json(ModelList {
        object: "list",
        data: vec![card],
    })
    .into_response())
}

async fn chat_completions(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    let request: ChatCompletionRequest =
        serde_json::from_slice(&body).map_err(|err| ApiError::BadJson(err.to_string()))?;
    let (stream, stream_options) = (request.stream, request.stream_options.clone());
    // Rendering and tokenizing take milliseconds per 100 kB: off the async runtime.
    let cell = state.ready.clone();
    let generation = tokio::task::spawn_blocking(move || match cell.get() {
        Some(ready) => completion::admit(&request, &ready.model),
        None => Err(ApiError::Loading),
    })
    .await
    .map_err(|err| ApiError::Internal(format!("admission task: {err}")))??;
    let events = ready
        .engine
        .submit(generation)
        .map_err(|error| match error {
            SubmitError::QueueFull => {
                metrics::request_rejected("queue_full");
                ApiError::QueueFull
            }
            SubmitError::Stopped => ApiError::Internal("the engine stopped".into()),
        })?;
    let id = CompletionId::new(&ready.model.name);
    if !stream {
        let answer = completion::collect(events, id).await?;
        return Ok(axum::Json(answer).into_response());
    }
    let usage = match stream_options {
        Some(options) if options.include_usage => StreamUsage::Included,
        _ => StreamUsage::Omitted,
    };
    let mut shutdown = state.shutdown.clone();
    let stopping = async move {
        let _ = shutdown.wait_for(|stopping| *stopping).await;
    };
    let body = completion::stream(events, id, usage).take_until(stopping);
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
    }
}
