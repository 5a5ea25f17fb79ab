//! The client of the OpenAI-compatible chat endpoint (`POST {LLM_BASE_URL}/chat/completions`
//! with `stream: true`). It turns the server-sent chunks into [`LlmEvent`]s and knows nothing of
//! sessions, users or HTTP routes. Parsing a chunk is pure ([`parse_chunk`]); the time limits
//! between events are applied by the caller, which knows whether a first token has arrived.
//!
//! Every completion request names the user it is made for in [`END_USER_HEADER`]: the api calls
//! the gateway with one API key for all users, and the gateway keys its per-user limits on this
//! header (it honours it only from API-key callers). An [`LlmError`] holds what the LLM said, for
//! the log; clients only ever see its [`LlmFailure`].

use std::pin::Pin;

use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::LlmConfig;
use crate::db::messages::Usage;

/// One message of the prompt, in OpenAI's shape.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PromptMessage {
    pub role: String,
    pub content: String,
}

/// What one chunk of the stream said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlmEvent {
    Delta(String),
    Finished { reason: String },
    Usage(Usage),
    Done,
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("cannot reach the LLM at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the LLM answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the LLM stream broke: {0}")]
    Stream(String),
    #[error("the LLM sent a chunk that is not a chat.completion.chunk: {0}")]
    BadChunk(String),
}

/// The header naming the end user of a completion request (agreed with the gateway).
pub const END_USER_HEADER: &str = "x-cairn-end-user";

/// What a client may learn of an LLM failure: a code and a fixed sentence, never the LLM's URL,
/// status body or stream contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LlmFailure {
    #[error("the language model is unavailable; try again shortly")]
    Unavailable,
    #[error("the language model refused the request")]
    Rejected,
    #[error("the language model sent nothing in time")]
    Timeout,
    #[error("the language model's answer broke off")]
    Broken,
    #[error("the language model sent an answer that could not be read")]
    BadResponse,
}

impl LlmFailure {
    /// The error code clients see.
    pub fn code(self) -> &'static str {
        match self {
            LlmFailure::Unavailable => "llm_unavailable",
            LlmFailure::Rejected => "llm_rejected",
            LlmFailure::Timeout => "llm_timeout",
            LlmFailure::Broken => "llm_stream_broken",
            LlmFailure::BadResponse => "llm_bad_response",
        }
    }
}

impl LlmError {
    /// The public side of this error.
    pub fn failure(&self) -> LlmFailure {
        match self {
            LlmError::Connect { .. } => LlmFailure::Unavailable,
            LlmError::Status { status, .. } if *status == 429 || *status >= 500 => {
                LlmFailure::Unavailable
            }
            LlmError::Status { .. } => LlmFailure::Rejected,
            LlmError::Stream(_) => LlmFailure::Broken,
            LlmError::BadChunk(_) => LlmFailure::BadResponse,
        }
    }
}

pub type LlmStream = Pin<Box<dyn Stream<Item = Result<LlmEvent, LlmError>> + Send>>;

#[derive(Clone)]
pub struct LlmClient {
    http: reqwest::Client,
    config: LlmConfig,
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: &'a [PromptMessage],
    stream: bool,
    stream_options: StreamOptions,
    max_tokens: u32,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<ChunkUsage>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Delta,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct Delta {
    content: Option<String>,
}

#[derive(Deserialize)]
struct ChunkUsage {
    prompt_tokens: i32,
    completion_tokens: i32,
}

/// Parses the `data:` of one server-sent event of an OpenAI chat stream.
pub fn parse_chunk(data: &str) -> Result<Vec<LlmEvent>, LlmError> {
    if data.trim() == "[DONE]" {
        return Ok(vec![LlmEvent::Done]);
    }
    let chunk: Chunk = serde_json::from_str(data)
        .map_err(|err| LlmError::BadChunk(format!("{err} in {:.200}", data)))?;
    let mut events = Vec::new();
    for choice in chunk.choices {
        // PostgreSQL text cannot hold NUL: a model that emits one (a random or broken model
        // can) would make the whole reply unstorable, so it is dropped before it is forwarded
        // or stored.
        let content = choice.delta.content.map(|c| c.replace('\0', ""));
        if let Some(content) = content.filter(|c| !c.is_empty()) {
            events.push(LlmEvent::Delta(content));
        }
        if let Some(reason) = choice.finish_reason {
            events.push(LlmEvent::Finished { reason });
        }
    }
    if let Some(usage) = chunk.usage {
        events.push(LlmEvent::Usage(Usage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        }));
    }
    Ok(events)
}

impl LlmClient {
    pub fn new(config: LlmConfig) -> Result<LlmClient, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .build()?;
        Ok(LlmClient { http, config })
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.config.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// Starts a streamed completion for `end_user`. Resolves once the response headers arrived
    /// (bounded by the first-token timeout in the caller).
    pub async fn stream(
        &self,
        messages: &[PromptMessage],
        end_user: Uuid,
    ) -> Result<LlmStream, LlmError> {
        let url = format!("{}/chat/completions", self.config.base_url);
        let body = ChatRequest {
            model: &self.config.model,
            messages,
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
            max_tokens: self.config.max_tokens,
        };
        let body = serde_json::to_vec(&body).map_err(|err| LlmError::BadChunk(err.to_string()))?;
        let response = self
            .authorized(self.http.post(&url))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .header(END_USER_HEADER, end_user.to_string())
            .body(body)
            .send()
            .await
            .map_err(|err| LlmError::Connect {
                url: url.clone(),
                reason: error_chain(&err),
            })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(LlmError::Status {
                status: status.as_u16(),
                body: body.chars().take(300).collect(),
            });
        }
        let events = response.bytes_stream().eventsource().flat_map(|event| {
            let parsed = match event {
                Ok(event) => {
                    parse_chunk(&event.data).map(|events| events.into_iter().map(Ok).collect())
                }
                Err(err) => Err(LlmError::Stream(err.to_string())),
            };
            futures_util::stream::iter(parsed.unwrap_or_else(|err| vec![Err(err)]))
        });
        Ok(Box::pin(events))
    }

    /// Readiness: `GET {base}/models` answers 2xx.
    pub async fn ping(&self) -> Result<(), LlmError> {
        let url = format!("{}/models", self.config.base_url);
        let response = self
            .authorized(self.http.get(&url))
            .send()
            .await
            .map_err(|err| LlmError::Connect {
                url: url.clone(),
                reason: error_chain(&err),
            })?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(LlmError::Status {
                status: response.status().as_u16(),
                body: String::new(),
            })
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openai_chunks() {
        let first = r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#;
        assert_eq!(parse_chunk(first).expect("parse"), vec![]);
        let delta = r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#;
        assert_eq!(
            parse_chunk(delta).expect("parse"),
            vec![LlmEvent::Delta("Hel".into())]
        );
        let finish = r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
        assert_eq!(
            parse_chunk(finish).expect("parse"),
            vec![LlmEvent::Finished {
                reason: "stop".into()
            }]
        );
        let usage = r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#;
        assert_eq!(
            parse_chunk(usage).expect("parse"),
            vec![LlmEvent::Usage(Usage {
                prompt_tokens: 7,
                completion_tokens: 3
            })]
        );
        assert_eq!(parse_chunk("[DONE]").expect("parse"), vec![LlmEvent::Done]);
    }

    #[test]
    fn nul_characters_are_dropped_from_deltas() {
        let chunk =
            r#"{"choices":[{"index":0,"delta":{"content":"a\u0000b"},"finish_reason":null}]}"#;
        assert_eq!(
            parse_chunk(chunk).expect("parse"),
            vec![LlmEvent::Delta("ab".into())]
        );
        let only_nul =
            r#"{"choices":[{"index":0,"delta":{"content":"\u0000"},"finish_reason":null}]}"#;
        assert_eq!(parse_chunk(only_nul).expect("parse"), vec![]);
    }

    #[test]
    fn failures_show_a_code_and_never_what_the_llm_said() {
        let secret = "http://10.0.0.7:8001/v1 said sk-secret";
        for (err, code) in [
            (
                LlmError::Connect {
                    url: secret.into(),
                    reason: secret.into(),
                },
                "llm_unavailable",
            ),
            (
                LlmError::Status {
                    status: 503,
                    body: secret.into(),
                },
                "llm_unavailable",
            ),
            (
                LlmError::Status {
                    status: 400,
                    body: secret.into(),
                },
                "llm_rejected",
            ),
            (LlmError::Stream(secret.into()), "llm_stream_broken"),
            (LlmError::BadChunk(secret.into()), "llm_bad_response"),
        ] {
            let failure = err.failure();
            assert_eq!(failure.code(), code);
            assert!(!failure.to_string().contains("secret"), "{failure}");
        }
    }

    #[test]
    fn garbage_is_a_bad_chunk() {
        assert!(matches!(
            parse_chunk("{not json"),
            Err(LlmError::BadChunk(_))
        ));
    }
}
