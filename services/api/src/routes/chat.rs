//! `POST /api/chat`: stores the user's message, streams the LLM's reply to the client as
//! server-sent events while it arrives, and stores the reply with its token usage at the end.
//!
//! The LLM is read by a task of its own ([`relay`]) that sends events to the response through a
//! channel. That task, not the response body, owns the reply: when the client disconnects (the
//! channel closes), the LLM fails or times out, or the server shuts down, it still stores what
//! it has, marked `partial`.
//!
//! Events: `session` (ids, first), `delta` (`{"content": ...}`, one per LLM delta), then either
//! `done` (`{"message_id", "finish_reason", "usage"}`) or `error` (the uniform error body plus
//! `message_id` of the partial reply, `null` when it could not be stored; a complete reply that
//! could not be stored ends in `error` too, never in a `done` without an id). Comment lines keep
//! idle connections alive. An LLM failure reaches the client as a code (`llm_unavailable`,
//! `llm_timeout`, …); what the LLM said and where it lives go to the log only.

use std::convert::Infallible;
use std::time::Instant;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::JsonBody;
use super::sessions::{owned, title_from};
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::db::messages::{self, ReplyStatus, Usage};
use crate::db::sessions;
use crate::error::ApiError;
use crate::llm::{LlmError, LlmEvent, LlmFailure, LlmStream, PromptMessage};
use crate::streams::StreamPermit;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    #[serde(default)]
    session_id: Option<Uuid>,
    message: String,
}

/// How the LLM part of a chat ended.
#[derive(Debug)]
enum Ending {
    Finished,
    ClientGone,
    ShuttingDown,
    Failed(ApiError),
}

/// The reply as it accumulates.
#[derive(Debug, Default)]
struct Reply {
    text: String,
    usage: Option<Usage>,
    finish_reason: Option<String>,
}

fn check_message(state: &AppState, message: &str) -> Result<(), ApiError> {
    let max = state.config.limits.message_chars;
    if message.trim().is_empty() {
        return Err(ApiError::Unprocessable("message: must not be empty".into()));
    }
    if message.chars().count() > max {
        return Err(ApiError::Unprocessable(format!(
            "message: longer than {max} characters"
        )));
    }
    Ok(())
}

pub async fn chat(
    State(state): State<AppState>,
    caller: AuthUser,
    JsonBody(request): JsonBody<ChatRequest>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    check_message(&state, &request.message)?;
    let session = match request.session_id {
        Some(id) => owned(&state, caller, id).await?,
        None => sessions::insert(&state.pool, caller.id, &title_from(&request.message)).await?,
    };
    let permit = state.streams.try_acquire(caller.id).ok_or_else(|| {
        ApiError::TooManyRequests(format!(
            "at most {} chat streams at once per user",
            state.config.limits.streams_per_user
        ))
    })?;
    let user_message =
        messages::insert_user_message(&state.pool, session.id, &request.message).await?;
    let budget = crate::prompt::Budget::of(&state.config);
    let history = messages::recent(&state.pool, session.id, budget.messages as i64).await?;
    let prompt = crate::prompt::build(&state.config.system_prompt, &history, &budget);
    let (tx, rx) = mpsc::channel::<Event>(64);
    let opening = json!({ "session_id": session.id, "user_message_id": user_message.id });
    // The channel is fresh and has room: this cannot block.
    let _ = tx.try_send(event("session", &opening));
    tokio::spawn(relay(state.clone(), caller, session.id, prompt, tx, permit));
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok(event), rx))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(state.config.keepalive)))
}

fn event(name: &str, data: &serde_json::Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

/// Reads the LLM, forwards deltas, then stores the reply however the stream ended.
async fn relay(
    state: AppState,
    caller: AuthUser,
    session_id: Uuid,
    prompt: Vec<PromptMessage>,
    tx: mpsc::Sender<Event>,
    permit: StreamPermit,
) {
    let mut reply = Reply::default();
    let ending = pump(&state, caller, &prompt, &tx, &mut reply).await;
    // The LLM stream is over: free the user's slot before the reply becomes visible, so a
    // client that sees the stored reply can always start the next stream.
    drop(permit);
    let status = match ending {
        Ending::Finished => ReplyStatus::Complete,
        _ => ReplyStatus::Partial,
    };
    let outcome = match &ending {
        Ending::Finished => "complete",
        Ending::ClientGone => "client_gone",
        Ending::ShuttingDown => "shutdown",
        Ending::Failed(_) => "llm_failed",
    };
    metrics::counter!("api_chat_streams_total", "outcome" => outcome).increment(1);
    let stored =
        messages::insert_reply(&state.pool, session_id, &reply.text, status, reply.usage).await;
    let _ = sessions::touch(&state.pool, session_id).await;
    let message_id = match stored {
        Ok(message) => Some(message.id),
        Err(err) => {
            tracing::error!(%session_id, error = %err, "storing the assistant reply failed");
            None
        }
    };
    tracing::info!(%session_id, outcome, chars = reply.text.len(), "chat stream ended");
    let last = match ending {
        Ending::Finished if message_id.is_none() => error_event(
            &ApiError::Internal("the reply could not be stored".into()),
            None,
        ),
        Ending::Finished => event(
            "done",
            &json!({ "message_id": message_id, "finish_reason": reply.finish_reason, "usage": reply.usage }),
        ),
        Ending::Failed(err) => error_event(&err, message_id),
        Ending::ShuttingDown => error_event(
            &ApiError::Unavailable("the server is shutting down".into()),
            message_id,
        ),
        Ending::ClientGone => return,
    };
    let _ = tx.send(last).await;
}

/// Logs what the LLM said; the client gets only the failure's code.
fn llm_failed(err: &LlmError) -> Ending {
    tracing::warn!(error = %err, "the LLM request failed");
    Ending::Failed(ApiError::Llm(err.failure()))
}

fn timed_out(what: std::fmt::Arguments<'_>) -> Ending {
    tracing::warn!("{what}");
    Ending::Failed(ApiError::Llm(LlmFailure::Timeout))
}

fn error_event(err: &ApiError, message_id: Option<Uuid>) -> Event {
    let mut body = err.body();
    body["message_id"] = json!(message_id);
    event("error", &body)
}

/// Forwards LLM deltas into `tx` until the stream ends, fails, times out, the client leaves or
/// the server shuts down. The reply accumulates in `reply` whatever happens.
async fn pump(
    state: &AppState,
    caller: AuthUser,
    prompt: &[PromptMessage],
    tx: &mpsc::Sender<Event>,
    reply: &mut Reply,
) -> Ending {
    let limits = &state.config.llm;
    let started = Instant::now();
    let first_deadline = tokio::time::Instant::now() + limits.first_token_timeout;
    let mut stream: LlmStream = tokio::select! {
        opened = tokio::time::timeout_at(first_deadline, state.llm.stream(prompt, caller.id)) => match opened {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => return llm_failed(&err),
            Err(_) => return timed_out(format_args!(
                "the LLM did not answer within {:?}", limits.first_token_timeout)),
        },
        () = tx.closed() => return Ending::ClientGone,
        () = state.shutdown.cancelled() => return Ending::ShuttingDown,
    };
    let mut first_token_seen = false;
    loop {
        let deadline = if first_token_seen {
            tokio::time::Instant::now() + limits.idle_timeout
        } else {
            first_deadline
        };
        let next = tokio::select! {
            next = tokio::time::timeout_at(deadline, stream.next()) => next,
            () = tx.closed() => return Ending::ClientGone,
            () = state.shutdown.cancelled() => return Ending::ShuttingDown,
        };
        let llm_event = match next {
            Err(_) if first_token_seen => {
                return timed_out(format_args!(
                    "the LLM sent nothing for {:?}",
                    limits.idle_timeout
                ));
            }
            Err(_) => {
                return timed_out(format_args!(
                    "no first token from the LLM within {:?}",
                    limits.first_token_timeout
                ));
            }
            Ok(None) if reply.finish_reason.is_some() => return Ending::Finished,
            Ok(None) => {
                tracing::warn!("the LLM stream ended before a finish reason");
                return Ending::Failed(ApiError::Llm(LlmFailure::Broken));
            }
            Ok(Some(Err(err))) => return llm_failed(&err),
            Ok(Some(Ok(llm_event))) => llm_event,
        };
        match llm_event {
            LlmEvent::Delta(text) => {
                if !first_token_seen {
                    first_token_seen = true;
                    metrics::histogram!("api_chat_first_token_seconds")
                        .record(started.elapsed().as_secs_f64());
                }
                reply.text.push_str(&text);
                if tx
                    .send(event("delta", &json!({ "content": text })))
                    .await
                    .is_err()
                {
                    return Ending::ClientGone;
                }
            }
            LlmEvent::Finished { reason } => reply.finish_reason = Some(reason),
            LlmEvent::Usage(usage) => reply.usage = Some(usage),
            LlmEvent::Done => return Ending::Finished,
        }
    }
}
