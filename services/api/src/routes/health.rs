//! `/api/health` (liveness: the process answers) and `/api/health/ready` (the database, the
//! object store and the LLM all answer within a short deadline).
//!
//! Readiness is public, so it must be cheap and must not amplify: the checks run at most once
//! per `API_READY_CACHE_MS`, one run at a time ([`ReadinessCache`]); every request in between
//! gets the cached answer. A failed check shows as a code (`database_unavailable`,
//! `storage_bucket_missing`, …); its cause, which may name hosts and URLs, is logged only, in
//! one line per round.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::app::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The outcome of one round of checks: each dependency's `"ok"` or failure code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub database: &'static str,
    pub storage: &'static str,
    pub llm: &'static str,
}

impl Readiness {
    fn is_ready(&self) -> bool {
        [self.database, self.storage, self.llm] == ["ok"; 3]
    }
}

/// The last readiness answer and when it was taken; the mutex makes one round run at a time.
#[derive(Debug, Clone)]
pub struct ReadinessCache {
    ttl: Duration,
    last: Arc<Mutex<Option<(Instant, Readiness)>>>,
}

impl ReadinessCache {
    pub fn new(ttl: Duration) -> ReadinessCache {
        ReadinessCache {
            ttl,
            last: Arc::default(),
        }
    }

    /// The cached answer while it is fresh, else a new round (callers arriving meanwhile wait
    /// for it and share it).
    async fn get(&self, state: &AppState) -> Readiness {
        let mut last = self.last.lock().await;
        if let Some((taken, readiness)) = last.as_ref()
            && taken.elapsed() < self.ttl
        {
            return readiness.clone();
        }
        let readiness = check_all(state).await;
        *last = Some((Instant::now(), readiness.clone()));
        readiness
    }
}

/// Runs one check with the deadline: `"ok"`, or the failure's code (`code_of`; a timeout is
/// `unavailable`) with its cause logged in one line.
async fn check<E: std::fmt::Display>(
    name: &'static str,
    unavailable: &'static str,
    code_of: impl Fn(&E) -> &'static str,
    probe: impl std::future::Future<Output = Result<(), E>>,
) -> &'static str {
    match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => "ok",
        Ok(Err(err)) => {
            let code = code_of(&err);
            tracing::warn!(check = name, code, error = %err, "not ready");
            code
        }
        Err(_) => {
            tracing::warn!(
                check = name,
                code = unavailable,
                "not ready: no answer within {CHECK_TIMEOUT:?}"
            );
            unavailable
        }
    }
}

async fn check_all(state: &AppState) -> Readiness {
    const DATABASE: &str = "database_unavailable";
    const STORAGE: &str = "storage_unavailable";
    const LLM: &str = "llm_unavailable";
    let (database, storage, llm) = tokio::join!(
        check(
            "database",
            DATABASE,
            |_| DATABASE,
            crate::db::ping(&state.pool)
        ),
        check(
            "storage",
            STORAGE,
            crate::storage::ProbeError::code,
            crate::storage::ping(state.store.as_ref(), &state.config.storage),
        ),
        check("llm", LLM, |_| LLM, state.llm.ping()),
    );
    Readiness {
        database,
        storage,
        llm,
    }
}

pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let readiness = state.readiness.get(&state).await;
    let ready = readiness.is_ready();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {
            "database": readiness.database,
            "storage": readiness.storage,
            "llm": readiness.llm,
        },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
