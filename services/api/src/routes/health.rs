//! `/api/health` (liveness: the process answers) and `/api/health/ready` (the database, the
//! object store and the LLM all answer within a short deadline).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::app::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Runs one check with the deadline and turns its outcome into `"ok"` or the reason.
async fn check<E: std::fmt::Display>(
    name: &str,
    probe: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(format!("{name}: {err}")),
        Err(_) => Err(format!("{name}: no answer within {CHECK_TIMEOUT:?}")),
    }
}

pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (database, storage, llm) = tokio::join!(
        check("database", crate::db::ping(&state.pool)),
        check("storage", crate::storage::ping(state.store.as_ref())),
        check("llm", state.llm.ping()),
    );
    let shown = |r: &Result<(), String>| match r {
        Ok(()) => Value::from("ok"),
        Err(reason) => Value::from(reason.as_str()),
    };
    let all_ok = database.is_ok() && storage.is_ok() && llm.is_ok();
    for failure in [&database, &storage, &llm]
        .into_iter()
        .filter_map(|r| r.as_ref().err())
    {
        tracing::warn!(%failure, "not ready");
    }
    let body = json!({
        "status": if all_ok { "ready" } else { "not_ready" },
        "checks": { "database": shown(&database), "storage": shown(&storage), "llm": shown(&llm) },
    });
    let status = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
