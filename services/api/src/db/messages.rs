//! The `messages` table: the turns of a chat session, in order.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Message {
    pub id: Uuid,
    pub role: String,
    pub content: String,
    pub status: String,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
    pub created_at: DateTime<Utc>,
}

/// How an assistant reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyStatus {
    Complete,
    /// The client disconnected or the LLM failed before the reply finished.
    Partial,
}

impl ReplyStatus {
    fn as_str(self) -> &'static str {
        match self {
            ReplyStatus::Complete => "complete",
            ReplyStatus::Partial => "partial",
        }
    }
}

/// Token counts the LLM reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
}

macro_rules! columns {
    () => {
        "id, role, content, status, prompt_tokens, completion_tokens, created_at"
    };
}

pub async fn insert_user_message(
    pool: &PgPool,
    session_id: Uuid,
    content: &str,
) -> Result<Message, sqlx::Error> {
    sqlx::query_as::<_, Message>(concat!(
        "INSERT INTO messages (id, session_id, role, content) VALUES ($1, $2, 'user', $3) \
         RETURNING ",
        columns!()
    ))
    .bind(Uuid::new_v4())
    .bind(session_id)
    .bind(content)
    .fetch_one(pool)
    .await
}

pub async fn insert_reply(
    pool: &PgPool,
    session_id: Uuid,
    content: &str,
    status: ReplyStatus,
    usage: Option<Usage>,
) -> Result<Message, sqlx::Error> {
    sqlx::query_as::<_, Message>(concat!("INSERT INTO messages (id, session_id, role, content, status, prompt_tokens, completion_tokens) \
         VALUES ($1, $2, 'assistant', $3, $4, $5, $6) RETURNING ", columns!()))
    .bind(Uuid::new_v4())
    .bind(session_id)
    .bind(content)
    .bind(status.as_str())
    .bind(usage.map(|u| u.prompt_tokens))
    .bind(usage.map(|u| u.completion_tokens))
    .fetch_one(pool)
    .await
}

/// One page of a session's messages, oldest first.
#[derive(Debug, Clone)]
pub struct MessagePage {
    pub messages: Vec<Message>,
    /// Whether the session has messages older than this page.
    pub has_more: bool,
}

/// The newest `limit` messages of a session older than the message `before` (the newest of all
/// without it), oldest first. `None` when `before` is not a message of this session.
pub async fn page(
    pool: &PgPool,
    session_id: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Option<MessagePage>, sqlx::Error> {
    let below = match before {
        None => i64::MAX,
        Some(id) => {
            let seq: Option<i64> =
                sqlx::query_scalar("SELECT seq FROM messages WHERE id = $1 AND session_id = $2")
                    .bind(id)
                    .bind(session_id)
                    .fetch_optional(pool)
                    .await?;
            match seq {
                Some(seq) => seq,
                None => return Ok(None),
            }
        }
    };
    // One more than asked tells whether older messages remain.
    let mut newest_first = sqlx::query_as::<_, Message>(concat!(
        "SELECT ",
        columns!(),
        " FROM messages WHERE session_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
    ))
    .bind(session_id)
    .bind(below)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let has_more = newest_first.len() as i64 > limit;
    newest_first.truncate(limit as usize);
    newest_first.reverse();
    Ok(Some(MessagePage {
        messages: newest_first,
        has_more,
    }))
}

/// The last `limit` messages of a session, oldest first (the prompt's history window).
pub async fn recent(
    pool: &PgPool,
    session_id: Uuid,
    limit: i64,
) -> Result<Vec<Message>, sqlx::Error> {
    let mut newest_first = sqlx::query_as::<_, Message>(concat!(
        "SELECT ",
        columns!(),
        " FROM messages WHERE session_id = $1 ORDER BY seq DESC LIMIT $2"
    ))
    .bind(session_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    newest_first.reverse();
    Ok(newest_first)
}
