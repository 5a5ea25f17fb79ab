//! `/api/sessions`: create, list (paginated), get with one page of messages, delete. Only the
//! owner sees or deletes a session; someone else's is a 403, a missing one a 404.
//!
//! `GET /api/sessions/{id}?limit=&before=` answers the newest `limit` messages (default
//! [`DEFAULT_MESSAGES`], at most [`MAX_MESSAGES`]) older than message `before`, oldest first, with
//! `has_more` and `next_before` (the cursor for the page before, `null` on the first message).

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{JsonBody, PathId};
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::db::messages;
use crate::db::sessions::{self, ChatSession, Lookup};
use crate::error::ApiError;

const MAX_TITLE_CHARS: usize = 200;
const MAX_PAGE: i64 = 100;
/// Messages of a session answered when the client does not say how many.
const DEFAULT_MESSAGES: i64 = 50;
/// The most messages of a session answered at once.
const MAX_MESSAGES: i64 = 200;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    #[serde(default)]
    title: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Page {
    #[serde(default = "default_limit")]
    limit: i64,
    #[serde(default)]
    offset: i64,
}

fn default_limit() -> i64 {
    20
}

#[derive(Debug, Deserialize)]
pub struct MessagesPage {
    #[serde(default = "default_messages")]
    limit: i64,
    #[serde(default)]
    before: Option<Uuid>,
}

fn default_messages() -> i64 {
    DEFAULT_MESSAGES
}

/// The caller's session `id`, or why not.
pub async fn owned(state: &AppState, caller: AuthUser, id: Uuid) -> Result<ChatSession, ApiError> {
    match sessions::find(&state.pool, caller.id, id).await? {
        Lookup::Found(session) => Ok(session),
        Lookup::NotFound => Err(ApiError::NotFound(format!("session {id} not found"))),
        Lookup::OtherOwner => Err(ApiError::Forbidden(format!(
            "session {id} belongs to another user"
        ))),
    }
}

/// A title for a new session: the given one, or the start of the first message.
pub fn title_from(text: &str) -> String {
    let title: String = text.trim().chars().take(60).collect();
    if title.is_empty() {
        "New conversation".to_owned()
    } else {
        title
    }
}

pub async fn create(
    State(state): State<AppState>,
    caller: AuthUser,
    JsonBody(body): JsonBody<NewSession>,
) -> Result<(StatusCode, Json<ChatSession>), ApiError> {
    let title = body.title.unwrap_or_default();
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(ApiError::Unprocessable(format!(
            "title: longer than {MAX_TITLE_CHARS} characters"
        )));
    }
    let session = sessions::insert(&state.pool, caller.id, &title_from(&title)).await?;
    Ok((StatusCode::CREATED, Json(session)))
}

pub async fn list(
    State(state): State<AppState>,
    caller: AuthUser,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(page) = page?;
    if !(1..=MAX_PAGE).contains(&page.limit) || page.offset < 0 {
        return Err(ApiError::Unprocessable(format!(
            "limit must be 1 to {MAX_PAGE} and offset at least 0"
        )));
    }
    let (items, total) = sessions::list(&state.pool, caller.id, page.limit, page.offset).await?;
    Ok(Json(
        json!({ "sessions": items, "total": total, "limit": page.limit, "offset": page.offset }),
    ))
}

pub async fn get(
    State(state): State<AppState>,
    caller: AuthUser,
    PathId(id): PathId,
    page: Result<Query<MessagesPage>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(page) = page?;
    if !(1..=MAX_MESSAGES).contains(&page.limit) {
        return Err(ApiError::Unprocessable(format!(
            "limit must be 1 to {MAX_MESSAGES}"
        )));
    }
    let session = owned(&state, caller, id).await?;
    let found = messages::page(&state.pool, session.id, page.before, page.limit).await?;
    let Some(found) = found else {
        return Err(ApiError::Unprocessable(
            "before: not a message of this session".into(),
        ));
    };
    let next_before = found
        .has_more
        .then(|| found.messages.first().map(|m| m.id))
        .flatten();
    Ok(Json(json!({
        "session": session,
        "messages": found.messages,
        "has_more": found.has_more,
        "next_before": next_before,
    })))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: AuthUser,
    PathId(id): PathId,
) -> Result<StatusCode, ApiError> {
    let session = owned(&state, caller, id).await?;
    sessions::delete(&state.pool, session.id).await?;
    Ok(StatusCode::NO_CONTENT)
}
