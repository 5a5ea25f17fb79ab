//! The engine: owns the model on worker threads. Requests wait in a bounded admission queue
//! (a full queue refuses at once), each worker serves one request at a time with its own clone
//! of the model (clones share the weights, each has its own KV cache), and a request whose
//! client went away is dropped from the queue or stopped between two tokens.
//!
//! It speaks in token ids, text pieces and finish reasons; it must never know about HTTP or
//! OpenAI's JSON.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::qwen2::ModelForCausalLM;
use tokenizers::Tokenizer;
use tokio::sync::mpsc;

use crate::detokenize::IncrementalDecoder;
use crate::metrics;
use crate::openai::{FinishReason, Usage};
use crate::stop::{StopMatcher, StopOutcome};

/// What one request asks the model for, already validated against the model's limits.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    pub stops: Vec<String>,
    pub ignore_eos: bool,
}

/// What a worker tells the request's handler, in order: text pieces, then one `Finished` or
/// `Failed`.
#[derive(Debug, Clone)]
pub enum Event {
    Text(String),
    Finished { reason: FinishReason, usage: Usage },
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    QueueFull,
    Stopped,
}

/// Options fixed at start-up.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub workers: usize,
    pub max_queue: usize,
    /// Pieces of text buffered between a worker and a slow client before the worker waits.
    pub event_buffer: usize,
    /// How long a worker waits for a client that reads nothing before cancelling its request.
    pub stalled_stream_timeout: Duration,
}

struct Job {
    request: GenerationRequest,
    events: mpsc::Sender<Event>,
    arrived: Instant,
}

/// What every worker shares.
struct Shared {
    tokenizer: Arc<Tokenizer>,
    eos_ids: Vec<u32>,
    device: Device,
    jobs: Mutex<Receiver<Job>>,
    stalled_stream_timeout: Duration,
}

#[derive(Clone)]
pub struct Engine {
    jobs: SyncSender<Job>,
    event_buffer: usize,
}

impl Engine {
    /// Starts `options.workers` threads, each with a clone of `model`.
    pub fn start(
        model: ModelForCausalLM,
        tokenizer: Arc<Tokenizer>,
        eos_ids: Vec<u32>,
        device: Device,
        options: &EngineOptions,
    ) -> Result<Engine, std::io::Error> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(options.max_queue);
        let shared = Arc::new(Shared {
            tokenizer,
            eos_ids,
            device,
            jobs: Mutex::new(receiver),
            stalled_stream_timeout: options.stalled_stream_timeout,
        });
        for index in 0..options.workers.max(1) {
            let shared = shared.clone();
            let model = model.clone();
            std::thread::Builder::new()
                .name(format!("inference-worker-{index}"))
                .spawn(move || work(&shared, model))?;
        }
        Ok(Engine {
            jobs: sender,
            event_buffer: options.event_buffer.max(1),
        })
    }

    /// Queues a request; the receiver yields its events. Dropping the receiver cancels it.
    pub fn submit(&self, request: GenerationRequest) -> Result<mpsc::Receiver<Event>, SubmitError> {
        let (events, receiver) = mpsc::channel(self.event_buffer);
        let job = Job {
            request,
            events,
            arrived: Instant::now(),
        };
        metrics::request_waiting(1.0);
        match self.jobs.try_send(job) {
            Ok(()) => Ok(receiver),
            Err(error) => {
                metrics::request_waiting(-1.0);
                Err(match error {
                    TrySendError::Full(_) => SubmitError::QueueFull,
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }
}

/// A worker's loop: take the next job, serve it, repeat until the engine is dropped.
fn work(shared: &Shared, mut model: ModelForCausalLM) {
    loop {
        let job = {
            let Ok(jobs) = shared.jobs.lock() else { return };
            match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        metrics::request_waiting(-1.0);
        if job.events.is_closed() {
            metrics::request_finished("abort");
            continue;
        }
        metrics::request_running(1.0);
        serve(shared, &mut model, &job);
        metrics::request_running(-1.0);
    }
}

fn serve(shared: &Shared, model: &mut ModelForCausalLM, job: &Job) {
    let prompt_tokens = job.request.prompt_ids.len();
    metrics::prompt_tokens(prompt_tokens);
    match generate(shared, model, job) {
        Ok(Outcome::Finished { reason, generated }) => {
            let usage = Usage::new(prompt_tokens as u64, generated as u64);
            metrics::request_finished(reason_label(reason));
            metrics::e2e_latency(job.arrived.elapsed());
            deliver(
                &job.events,
                Event::Finished { reason, usage },
                shared.stalled_stream_timeout,
            );
        }
        Ok(Outcome::Cancelled) => {
            metrics::request_finished("abort");
            tracing::info!("request cancelled: client went away");
        }
        Err(error) => {
            tracing::error!(%error, "generation failed");
            metrics::request_finished("error");
            deliver(
                &job.events,
                Event::Failed(error.to_string()),
                shared.stalled_stream_timeout,
            );
        }
    }
}

fn reason_label(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

enum Outcome {
    Finished {
        reason: FinishReason,
        generated: usize,
    },
    Cancelled,
}

#[derive(Debug, thiserror::Error)]
enum GenerateError {
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
    #[error("detokenizing: {0}")]
    Decode(#[from] tokenizers::Error),
}

/// The text a request has produced so far, between the decoder and the stop matcher.
struct TextSink<'a> {
    decoder: IncrementalDecoder,
    stops: StopMatcher,
    events: &'a mpsc::Sender<Event>,
    stalled_stream_timeout: Duration,
}

/// What the sink decided about a token.
enum SinkOutcome {
    Continue,
    Stopped,
    Cancelled,
}

impl TextSink<'_> {
    fn take(&mut self, token: u32) -> Result<SinkOutcome, GenerateError> {
        let text = self.decoder.push(token)?;
        match self.stops.push(&text) {
            StopOutcome::Continue { emit } => Ok(self.send(emit)),
            StopOutcome::Stopped { emit } => Ok(match self.send(emit) {
                SinkOutcome::Cancelled => SinkOutcome::Cancelled,
                _ => SinkOutcome::Stopped,
            }),
        }
    }

    /// Releases the text held back for an unfinished character or a possible stop string.
    fn flush(&mut self) -> Result<SinkOutcome, GenerateError> {
        let tail = self.decoder.flush()?;
        let outcome = self.stops.push(&tail);
        let emit = match outcome {
            StopOutcome::Continue { mut emit } => {
                emit.push_str(&self.stops.flush());
                emit
            }
            StopOutcome::Stopped { emit } => emit,
        };
        Ok(self.send(emit))
    }

    fn send(&self, text: String) -> SinkOutcome {
        if text.is_empty() {
            return SinkOutcome::Continue;
        }
        if deliver(self.events, Event::Text(text), self.stalled_stream_timeout) {
            SinkOutcome::Continue
        } else {
            SinkOutcome::Cancelled
        }
    }
}

/// Sends `event` into the request's bounded buffer, waiting at most `timeout` for room: a client
/// that reads nothing for that long loses its request (false), so it cannot hold the worker.
fn deliver(events: &mpsc::Sender<Event>, event: Event, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut event = event;
    loop {
        match events.try_send(event) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(back)) => {
                if Instant::now() >= deadline {
                    tracing::info!("the client read nothing for {timeout:?}; cancelling");
                    return false;
                }
                event = back;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

fn generate(
    shared: &Shared,
    model: &mut ModelForCausalLM,
    job: &Job,
) -> Result<Outcome, GenerateError> {
    let request = &job.request;
    model.clear_kv_cache();
    let mut sampler = LogitsProcessor::from_sampling(request.seed, request.sampling.clone());
    let mut sink = TextSink {
        decoder: IncrementalDecoder::new(shared.tokenizer.clone()),
        stops: StopMatcher::new(request.stops.clone()),
        events: &job.events,
        stalled_stream_timeout: shared.stalled_stream_timeout,
    };
    let mut input = request.prompt_ids.clone();
    let mut position = 0;
    let mut generated = 0;
    let mut last_token_at = Instant::now();
    while generated < request.max_tokens {
        if job.events.is_closed() {
            return Ok(Outcome::Cancelled);
        }
        let token = next_token(model, &shared.device, &input, position, &mut sampler)?;
        position += input.len();
        generated += 1;
        metrics::generation_token();
        if generated == 1 {
            metrics::time_to_first_token(job.arrived.elapsed());
        } else {
            metrics::time_per_output_token(last_token_at.elapsed());
        }
        last_token_at = Instant::now();
        if !request.ignore_eos && shared.eos_ids.contains(&token) {
            return finish(&mut sink, FinishReason::Stop, generated);
        }
        match sink.take(token)? {
            SinkOutcome::Continue => {}
            SinkOutcome::Stopped => {
                return Ok(Outcome::Finished {
                    reason: FinishReason::Stop,
                    generated,
                });
            }
            SinkOutcome::Cancelled => return Ok(Outcome::Cancelled),
        }
        input = vec![token];
    }
    finish(&mut sink, FinishReason::Length, generated)
}

fn finish(
    sink: &mut TextSink<'_>,
    reason: FinishReason,
    generated: usize,
) -> Result<Outcome, GenerateError> {
    match sink.flush()? {
        SinkOutcome::Cancelled => Ok(Outcome::Cancelled),
        _ => Ok(Outcome::Finished { reason, generated }),
    }
}

/// One forward pass over `input` (the prompt, then one token at a time) and one sample.
fn next_token(
    model: &mut ModelForCausalLM,
    device: &Device,
    input: &[u32],
    position: usize,
    sampler: &mut LogitsProcessor,
) -> Result<u32, candle_core::Error> {
    let input = Tensor::new(input, device)?.unsqueeze(0)?;
    let logits = model.forward(&input, position)?.squeeze(0)?.squeeze(0)?;
    sampler.sample(&logits)
}
