//! The `chat_sessions` table. Ownership is part of every read: a caller learns whether a
//! session is missing or someone else's, never another user's data.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct ChatSession {
    pub id: Uuid,
    #[serde(skip)]
    pub user_id: Uuid,
    pub title: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a lookup by id found, from the asking user's point of view.
#[derive(Debug)]
pub enum Lookup<T> {
    Found(T),
    NotFound,
    OtherOwner,
}

macro_rules! columns {
    () => {
        "id, user_id, title, created_at, updated_at"
    };
}

pub async fn insert(pool: &PgPool, user_id: Uuid, title: &str) -> Result<ChatSession, sqlx::Error> {
    sqlx::query_as::<_, ChatSession>(concat!(
        "INSERT INTO chat_sessions (id, user_id, title) VALUES ($1, $2, $3) RETURNING ",
        columns!()
    ))
    .bind(Uuid::new_v4())
    .bind(user_id)
    .bind(title)
    .fetch_one(pool)
    .await
}

/// One page of the user's sessions, most recently active first.
pub async fn list(
    pool: &PgPool,
    user_id: Uuid,
    limit: i64,
    offset: i64,
) -> Result<(Vec<ChatSession>, i64), sqlx::Error> {
    let sessions = sqlx::query_as::<_, ChatSession>(concat!(
        "SELECT ",
        columns!(),
        " FROM chat_sessions WHERE user_id = $1 \
         ORDER BY updated_at DESC, id LIMIT $2 OFFSET $3"
    ))
    .bind(user_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM chat_sessions WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(pool)
        .await?;
    Ok((sessions, total))
}

pub async fn find(
    pool: &PgPool,
    user_id: Uuid,
    id: Uuid,
) -> Result<Lookup<ChatSession>, sqlx::Error> {
    let session = sqlx::query_as::<_, ChatSession>(concat!(
        "SELECT ",
        columns!(),
        " FROM chat_sessions WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(match session {
        None => Lookup::NotFound,
        Some(s) if s.user_id != user_id => Lookup::OtherOwner,
        Some(s) => Lookup::Found(s),
    })
}

pub async fn delete(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM chat_sessions WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map(|_| ())
}

pub async fn touch(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE chat_sessions SET updated_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map(|_| ())
}
