//! `/api/sessions`: create, list (paginated), get with messages, delete. Only the owner sees
//! or deletes a session; someone else's is a 403, a missing one a 404.

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
) -> Result<Json<Value>, ApiError> {
    let session = owned(&state, caller, id).await?;
    let messages = messages::list(&state.pool, session.id).await?;
    Ok(Json(json!({ "session": session, "messages": messages })))
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
