//! An OpenAI-compatible chat completions endpoint started by the test: `GET /v1/models` and
//! `POST /v1/chat/completions` with `stream: true`, answering in OpenAI's exact wire format
//! (`data: {chat.completion.chunk}` lines, a first chunk with `role`, a finishing chunk with an
//! empty delta and `finish_reason`, a usage chunk with `choices: []`, then `data: [DONE]`).
//!
//! What it does depends on a marker in the last user message, so each test can drive it:
//! `[slow]` streams a delta every 50 ms for 30 s, `[wait]` waits 700 ms before the first chunk,
//! `[break]` drops the connection after two deltas, `[hang]` goes silent after one delta,
//! `[fail]` answers 500 with [`SECRET_BODY`], `[garbage]` sends a chunk that is not JSON (holding
//! [`SECRET_BODY`] too). Otherwise it answers `Echo: <message>`, one word per delta.
//!
//! Like vLLM it refuses (400) a prompt that does not fit its context of [`CONTEXT_TOKENS`] tokens,
//! counting a token per 4 bytes of content (about what a real tokenizer does for English) plus
//! the request's `max_tokens`. It records every request body, the `X-Cairn-End-User` header of
//! every completion request and how often `/v1/models` was asked.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// What the scripted LLM says when it fails: a stand-in for an upstream's internal details
/// (paths, keys) that must never reach the api's clients.
pub const SECRET_BODY: &str = "Traceback at /srv/llm/internal.py line 42: key sk-upstream-SECRET";

/// The scripted LLM's context window (its MAX_MODEL_LEN), in its own tokens.
pub const CONTEXT_TOKENS: usize = 16_384;

/// Everything the scripted LLM was asked.
#[derive(Default)]
struct Recorded {
    requests: Mutex<Vec<Value>>,
    end_users: Mutex<Vec<Option<String>>>,
    models_calls: AtomicUsize,
}

pub struct FakeLlm {
    /// Base URL including `/v1`.
    pub base: String,
    recorded: Arc<Recorded>,
}

type Chunk = Result<Bytes, std::io::Error>;

fn chunk(delta: Value, finish_reason: Option<&str>) -> Bytes {
    let body = json!({
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "test-model",
        "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason }],
    });
    Bytes::from(format!("data: {body}\n\n"))
}

fn usage_chunk(prompt_tokens: usize, completion_tokens: usize) -> Bytes {
    let body = json!({
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "test-model",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    });
    Bytes::from(format!("data: {body}\n\n"))
}

async fn models(State(recorded): State<Arc<Recorded>>) -> Json<Value> {
    recorded.models_calls.fetch_add(1, Ordering::SeqCst);
    Json(
        json!({ "object": "list", "data": [{ "id": "test-model", "object": "model", "owned_by": "cairn" }] }),
    )
}

/// The scripted LLM's token count of a prompt: a token per 4 bytes of content.
fn prompt_tokens(messages: &[Value]) -> usize {
    messages
        .iter()
        .map(|m| m["content"].as_str().unwrap_or("").len().div_ceil(4) + 4)
        .sum()
}

async fn completions(
    State(recorded): State<Arc<Recorded>>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> Response {
    recorded
        .requests
        .lock()
        .expect("lock")
        .push(request.clone());
    recorded.end_users.lock().expect("lock").push(
        headers
            .get("x-cairn-end-user")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    );
    if request["stream"] != json!(true) {
        return (StatusCode::BAD_REQUEST, "this endpoint only streams").into_response();
    }
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let wanted = prompt_tokens(&messages) + request["max_tokens"].as_u64().unwrap_or(0) as usize;
    if wanted > CONTEXT_TOKENS {
        let refusal = json!({ "object": "error", "type": "BadRequestError", "code": 400,
            "message": format!("This model's maximum context length is {CONTEXT_TOKENS} tokens. \
                However, you requested {wanted} tokens. {SECRET_BODY}") });
        return (StatusCode::BAD_REQUEST, Json(refusal)).into_response();
    }
    if last_user.contains("[fail]") {
        return (StatusCode::INTERNAL_SERVER_ERROR, SECRET_BODY).into_response();
    }
    let prompt_tokens = messages
        .iter()
        .map(|m| {
            m["content"]
                .as_str()
                .unwrap_or("")
                .split_whitespace()
                .count()
        })
        .sum();
    let (tx, rx) = mpsc::channel::<Chunk>(16);
    tokio::spawn(produce(tx, last_user, prompt_tokens));
    let body =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .expect("response")
}

async fn produce(tx: mpsc::Sender<Chunk>, message: String, prompt_tokens: usize) {
    if message.contains("[wait]") {
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let _ = tx
        .send(Ok(chunk(
            json!({ "role": "assistant", "content": "" }),
            None,
        )))
        .await;
    if message.contains("[slow]") {
        for i in 0..600 {
            if tx
                .send(Ok(chunk(json!({ "content": format!("tick{i} ") }), None)))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if message.contains("[break]") {
        let _ = tx
            .send(Ok(chunk(json!({ "content": "half " }), None)))
            .await;
        let _ = tx
            .send(Ok(chunk(json!({ "content": "an answer" }), None)))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = tx
            .send(Err(std::io::Error::other("inference crashed")))
            .await;
        return;
    }
    if message.contains("[garbage]") {
        let _ = tx
            .send(Ok(Bytes::from(format!(
                "data: {{not json {SECRET_BODY}\n\n"
            ))))
            .await;
        return;
    }
    if message.contains("[hang]") {
        let _ = tx
            .send(Ok(chunk(json!({ "content": "and then" }), None)))
            .await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        return;
    }
    let answer = format!("Echo: {message}");
    let words: Vec<&str> = answer.split_inclusive(' ').collect();
    for word in &words {
        if tx
            .send(Ok(chunk(json!({ "content": word }), None)))
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = tx.send(Ok(chunk(json!({}), Some("stop")))).await;
    let _ = tx.send(Ok(usage_chunk(prompt_tokens, words.len()))).await;
    let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
}

impl FakeLlm {
    /// Serves on a free port on the current runtime (use a multi-thread test runtime).
    pub async fn start() -> FakeLlm {
        let recorded = Arc::new(Recorded::default());
        let app = Router::new()
            .route("/v1/models", get(models))
            .route("/v1/chat/completions", post(completions))
            .with_state(Arc::clone(&recorded));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeLlm {
            base: format!("http://{address}/v1"),
            recorded,
        }
    }

    /// Every completion request body, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.recorded.requests.lock().expect("lock").clone()
    }

    /// The `X-Cairn-End-User` header of every completion request, in order.
    pub fn end_users(&self) -> Vec<Option<String>> {
        self.recorded.end_users.lock().expect("lock").clone()
    }

    /// How many times `GET /v1/models` was asked.
    pub fn models_calls(&self) -> usize {
        self.recorded.models_calls.load(Ordering::SeqCst)
    }
}
