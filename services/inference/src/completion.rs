//! One chat completion from request to answer: validating a request against the served model
//! and turning it into a [`GenerationRequest`] (pure decisions), then shaping the engine's
//! events into OpenAI's non-streaming object or its stream of chunks.
//!
//! It must never touch the model or sockets; the engine generates, the server routes.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use candle_transformers::generation::Sampling;
use futures_util::Stream;
use tokenizers::Tokenizer;
use tokio::sync::mpsc;

use crate::chat_template::{ChatTemplate, TemplateMessage};
use crate::checkpoint::SamplingDefaults;
use crate::engine::{Event, GenerationRequest};
use crate::error::ApiError;
use crate::openai::{
    AssistantMessage, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatMessage,
    Choice, ChunkChoice, Delta, FinishReason, MessageContent, StopField, Usage, UsageField,
};

/// What admission needs to know about the served model.
pub struct ServedModel {
    pub name: String,
    pub tokenizer: Arc<Tokenizer>,
    pub template: ChatTemplate,
    pub defaults: SamplingDefaults,
    pub max_model_len: usize,
}

/// Identity shared by every object of one completion.
#[derive(Debug, Clone)]
pub struct CompletionId {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl CompletionId {
    pub fn new(model: &str) -> CompletionId {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        CompletionId {
            id: format!("chatcmpl-{:032x}", rand::random::<u128>()),
            created,
            model: model.to_owned(),
        }
    }
}

/// Validates `request` and prepares its generation.
pub fn admit(
    request: &ChatCompletionRequest,
    model: &ServedModel,
) -> Result<GenerationRequest, ApiError> {
    if let Some(name) = &request.model
        && name != &model.name
    {
        return Err(ApiError::ModelNotFound(name.clone()));
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("only n=1 is supported", "n"));
    }
    let prompt = render_prompt(&request.messages, &model.template)?;
    let prompt_ids = model
        .tokenizer
        .encode(prompt, false)
        .map_err(|err| ApiError::Internal(format!("tokenizing the prompt: {err}")))?
        .get_ids()
        .to_vec();
    let max_tokens = max_tokens(request, prompt_ids.len(), model.max_model_len)?;
    Ok(GenerationRequest {
        prompt_ids,
        max_tokens,
        sampling: sampling(request, model.defaults)?,
        seed: request.seed.map_or_else(rand::random, |seed| seed as u64),
        stops: request
            .stop
            .clone()
            .map(StopField::into_vec)
            .unwrap_or_default(),
        ignore_eos: request.ignore_eos,
    })
}

fn render_prompt(messages: &[ChatMessage], template: &ChatTemplate) -> Result<String, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages must not be empty", "messages"));
    }
    let messages = messages
        .iter()
        .map(template_message)
        .collect::<Result<Vec<_>, _>>()?;
    template
        .render(&messages)
        .map_err(|err| ApiError::invalid(format!("chat template: {err}"), "messages"))
}

fn template_message(message: &ChatMessage) -> Result<TemplateMessage, ApiError> {
    if let Some(MessageContent::Parts(parts)) = &message.content
        && let Some(part) = parts.iter().find(|part| part.kind != "text")
    {
        return Err(ApiError::invalid(
            format!("content parts of type {:?} are not supported", part.kind),
            "messages",
        ));
    }
    Ok(TemplateMessage {
        role: message.role.clone(),
        content: message
            .content
            .as_ref()
            .map(MessageContent::text)
            .unwrap_or_default(),
    })
}

/// The completion budget: what the request asks for, or all the context left; 400 like vLLM
/// when prompt plus completion exceed the context.
fn max_tokens(
    request: &ChatCompletionRequest,
    prompt: usize,
    max_model_len: usize,
) -> Result<usize, ApiError> {
    let asked = request.max_completion_tokens.or(request.max_tokens);
    if asked == Some(0) {
        return Err(ApiError::invalid(
            "max_tokens must be at least 1",
            "max_tokens",
        ));
    }
    let completion = asked.map_or(max_model_len.saturating_sub(prompt), |n| n as usize);
    if prompt >= max_model_len || prompt + completion > max_model_len {
        return Err(ApiError::ContextTooLong {
            max_model_len,
            requested: prompt + completion,
            prompt,
            completion,
        });
    }
    Ok(completion)
}

fn sampling(
    request: &ChatCompletionRequest,
    defaults: SamplingDefaults,
) -> Result<Sampling, ApiError> {
    let temperature = request.temperature.or(defaults.temperature).unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature must be between 0 and 2",
            "temperature",
        ));
    }
    let top_p = request.top_p.or(defaults.top_p).unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p must be in (0, 1]", "top_p"));
    }
    let top_k = match request.top_k {
        Some(k) if k < -1 => return Err(ApiError::invalid("top_k must be -1 or >= 0", "top_k")),
        Some(k) if k > 0 => Some(k as usize),
        Some(_) => None,
        None => defaults.top_k.filter(|&k| k > 0),
    };
    if temperature < 1e-5 {
        return Ok(Sampling::ArgMax);
    }
    Ok(match (top_k, top_p < 1.0) {
        (None, false) => Sampling::All { temperature },
        (Some(k), false) => Sampling::TopK { k, temperature },
        (None, true) => Sampling::TopP {
            p: top_p,
            temperature,
        },
        (Some(k), true) => Sampling::TopKThenTopP {
            k,
            p: top_p,
            temperature,
        },
    })
}

/// Waits for every event and builds the non-streaming answer.
pub async fn collect(
    mut events: mpsc::Receiver<Event>,
    id: CompletionId,
) -> Result<ChatCompletion, ApiError> {
    let mut content = String::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(text) => content.push_str(&text),
            Event::Finished { reason, usage } => {
                return Ok(ChatCompletion {
                    id: id.id,
                    object: "chat.completion",
                    created: id.created,
                    model: id.model,
                    choices: vec![Choice {
                        index: 0,
                        message: AssistantMessage {
                            role: "assistant",
                            content,
                            refusal: None,
                        },
                        logprobs: None,
                        finish_reason: reason,
                    }],
                    usage,
                    system_fingerprint: None,
                });
            }
            Event::Failed(message) => return Err(ApiError::Internal(message)),
        }
    }
    Err(ApiError::Internal("the engine stopped".into()))
}

/// How a stream reports usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamUsage {
    Omitted,
    /// `stream_options.include_usage`: `usage: null` on every chunk, then a usage chunk.
    Included,
}

enum StreamPhase {
    Start,
    Running,
    Done,
}

struct StreamState {
    events: mpsc::Receiver<Event>,
    id: CompletionId,
    usage: StreamUsage,
    phase: StreamPhase,
}

impl StreamState {
    fn chunk(&self, delta: Delta, finish_reason: Option<FinishReason>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.id.clone(),
            object: "chat.completion.chunk",
            created: self.id.created,
            model: self.id.model.clone(),
            system_fingerprint: None,
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }],
            usage: self.usage_field(),
        }
    }

    fn usage_field(&self) -> UsageField {
        match self.usage {
            StreamUsage::Omitted => UsageField::Absent,
            StreamUsage::Included => UsageField::Null,
        }
    }

    /// The finish chunk, the usage chunk when asked for, and `[DONE]`.
    fn ending(&self, reason: FinishReason, usage: Usage) -> String {
        let mut text = sse(&self.chunk(Delta::default(), Some(reason)));
        if self.usage == StreamUsage::Included {
            let mut last = self.chunk(Delta::default(), None);
            last.choices.clear();
            last.usage = UsageField::Set(usage);
            text.push_str(&sse(&last));
        }
        text.push_str("data: [DONE]\n\n");
        text
    }

    async fn next_bytes(&mut self) -> Option<String> {
        match self.phase {
            StreamPhase::Start => {
                self.phase = StreamPhase::Running;
                let delta = Delta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                };
                Some(sse(&self.chunk(delta, None)))
            }
            StreamPhase::Running => {
                let event = self.events.recv().await;
                Some(match event {
                    Some(Event::Text(text)) => {
                        let delta = Delta {
                            role: None,
                            content: Some(text),
                        };
                        sse(&self.chunk(delta, None))
                    }
                    Some(Event::Finished { reason, usage }) => {
                        self.phase = StreamPhase::Done;
                        self.ending(reason, usage)
                    }
                    Some(Event::Failed(message)) => {
                        self.phase = StreamPhase::Done;
                        failure(ApiError::Internal(message))
                    }
                    None => {
                        self.phase = StreamPhase::Done;
                        failure(ApiError::Internal("the engine stopped".into()))
                    }
                })
            }
            StreamPhase::Done => None,
        }
    }
}

fn sse<T: serde::Serialize>(value: &T) -> String {
    let json = serde_json::to_string(value).unwrap_or_else(|_| "{}".into());
    format!("data: {json}\n\n")
}

fn failure(error: ApiError) -> String {
    format!("{}data: [DONE]\n\n", sse(&error.body()))
}

/// The body of a streaming answer. Dropping it (the client went away) drops the receiver,
/// which cancels the generation.
pub fn stream(
    events: mpsc::Receiver<Event>,
    id: CompletionId,
    usage: StreamUsage,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let state = StreamState {
        events,
        id,
        usage,
        phase: StreamPhase::Start,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        let text = state.next_bytes().await?;
        Some((Ok(Bytes::from(text)), state))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> ChatCompletionRequest {
        serde_json::from_str(json).expect("request parses")
    }

    #[test]
    fn context_limit_counts_prompt_and_completion() {
        let asks = |n: u64| request(&format!(r#"{{"messages":[],"max_tokens":{n}}}"#));
        assert_eq!(max_tokens(&asks(10), 90, 100).expect("fits"), 10);
        let error = max_tokens(&asks(11), 90, 100).expect_err("too long");
        assert!(
            error.to_string().contains("you requested 101 tokens"),
            "{error}"
        );
        let unbounded = request(r#"{"messages":[]}"#);
        assert_eq!(max_tokens(&unbounded, 90, 100).expect("rest"), 10);
        assert!(max_tokens(&unbounded, 100, 100).is_err());
    }

    #[test]
    fn sampling_follows_temperature_top_k_and_top_p() {
        let none = SamplingDefaults::default();
        let pick = |json: &str| format!("{:?}", sampling(&request(json), none).expect("valid"));
        assert_eq!(pick(r#"{"messages":[],"temperature":0}"#), "ArgMax");
        assert!(pick(r#"{"messages":[],"top_k":5}"#).starts_with("TopK "));
        assert!(pick(r#"{"messages":[],"top_p":0.5,"top_k":5}"#).starts_with("TopKThenTopP"));
        assert!(sampling(&request(r#"{"messages":[],"temperature":3}"#), none).is_err());
    }
}
