//! The engine: continuous batching on one thread that owns the model and the KV cache. Requests
//! wait in a bounded queue (a full queue refuses at once); every step the scheduler picks the
//! running sequences' next tokens (one each while decoding, a chunk while prefilling) and admits
//! waiting requests while slots (`max_num_seqs`), the step's token budget
//! (`max_num_batched_tokens`) and free KV blocks allow; the model runs them all in one forward
//! pass; each sequence samples with its own settings and leaves as soon as it is finished,
//! cancelled or stalled.
//!
//! A sequence's text goes to its client through a bounded channel. A sequence whose channel is
//! full is paused (it keeps its blocks, the others go on) and is cancelled once its client has
//! read nothing for `stalled_stream_timeout`. When a running sequence needs a block and none is
//! free, the newest running sequence is preempted: its blocks are freed and it waits again, to
//! be recomputed from its tokens, as vLLM does.
//!
//! It speaks in token ids, text pieces and finish reasons; it must never know about HTTP or
//! OpenAI's JSON.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use candle_transformers::generation::{LogitsProcessor, Sampling};
use tokenizers::Tokenizer;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::detokenize::IncrementalDecoder;
use crate::kv_cache::{self, BlockAllocator, KvCache};
use crate::metrics;
use crate::model::{Qwen2, StepSequence};
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

/// What the engine tells the request's handler, in order: text pieces, then one `Finished` or
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
    /// Sequences decoded together (vLLM's `--max-num-seqs`).
    pub max_num_seqs: usize,
    /// Tokens one step may feed the model, prompt chunks included (`--max-num-batched-tokens`).
    pub max_num_batched_tokens: usize,
    /// Requests that may wait to start; one more is refused.
    pub max_queue: usize,
    /// Text pieces buffered between the engine and a slow client.
    pub event_buffer: usize,
    /// How long a client may read nothing, its buffer full, before its request is cancelled.
    pub stalled_stream_timeout: Duration,
    /// KV cache blocks and tokens per block.
    pub num_blocks: usize,
    pub block_size: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("allocating the KV cache ({blocks} blocks of {block_size} tokens): {source}")]
    Cache {
        blocks: usize,
        block_size: usize,
        source: candle_core::Error,
    },
    #[error("starting the engine thread: {0}")]
    Thread(#[from] std::io::Error),
}

struct Job {
    request: GenerationRequest,
    events: mpsc::Sender<Event>,
    arrived: Instant,
}

#[derive(Clone)]
pub struct Engine {
    jobs: Sender<Job>,
    /// Requests submitted and not yet running: the admission queue's length.
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    event_buffer: usize,
}

impl Engine {
    /// Allocates the KV cache and starts the engine thread.
    pub fn start(
        model: Qwen2,
        tokenizer: Arc<Tokenizer>,
        eos_ids: Vec<u32>,
        options: &EngineOptions,
    ) -> Result<Engine, StartError> {
        let cache = KvCache::new(
            &model.shape(),
            options.num_blocks,
            options.block_size,
            model.dtype(),
            model.device(),
        )
        .map_err(|source| StartError::Cache {
            blocks: options.num_blocks,
            block_size: options.block_size,
            source,
        })?;
        let (jobs, receiver) = std::sync::mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let mut batcher = Batcher {
            model,
            cache,
            allocator: BlockAllocator::new(options.num_blocks, options.block_size),
            tokenizer,
            eos_ids,
            options: options.clone(),
            jobs: receiver,
            queued: queued.clone(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            draining: Vec::new(),
            arrivals: 0,
        };
        metrics::cache_usage(0.0);
        std::thread::Builder::new()
            .name("inference-engine".into())
            .spawn(move || batcher.run())?;
        Ok(Engine {
            jobs,
            queued,
            max_queue: options.max_queue,
            event_buffer: options.event_buffer.max(1),
        })
    }

    /// Queues a request; the receiver yields its events. Dropping the receiver cancels it.
    pub fn submit(&self, request: GenerationRequest) -> Result<mpsc::Receiver<Event>, SubmitError> {
        let max_queue = self.max_queue;
        self.queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max_queue).then_some(n + 1)
            })
            .map_err(|_| SubmitError::QueueFull)?;
        let (events, receiver) = mpsc::channel(self.event_buffer);
        let job = Job {
            request,
            events,
            arrived: Instant::now(),
        };
        metrics::request_waiting(1.0);
        if self.jobs.send(job).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            metrics::request_waiting(-1.0);
            return Err(SubmitError::Stopped);
        }
        Ok(receiver)
    }
}

/// Events on their way to one client, held while its channel is full.
struct Outbox {
    events: mpsc::Sender<Event>,
    pending: VecDeque<Event>,
    stalled_since: Option<Instant>,
}

enum Delivery {
    Delivered,
    Held,
    Closed,
}

impl Outbox {
    fn flush(&mut self, now: Instant) -> Delivery {
        while let Some(event) = self.pending.pop_front() {
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.pending.push_front(event);
                    self.stalled_since.get_or_insert(now);
                    return Delivery::Held;
                }
                Err(TrySendError::Closed(_)) => return Delivery::Closed,
            }
        }
        self.stalled_since = None;
        if self.events.is_closed() {
            return Delivery::Closed;
        }
        Delivery::Delivered
    }

    fn stalled_for(&self, now: Instant) -> Duration {
        self.stalled_since
            .map_or(Duration::ZERO, |since| now.duration_since(since))
    }
}

/// The text a sequence has produced so far, between the decoder and the stop matcher.
struct TextSink {
    decoder: IncrementalDecoder,
    stops: StopMatcher,
}

impl TextSink {
    /// The text to show for `token`, and whether a stop string ended the sequence.
    fn take(&mut self, token: u32) -> Result<(String, bool), tokenizers::Error> {
        let text = self.decoder.push(token)?;
        Ok(match self.stops.push(&text) {
            StopOutcome::Continue { emit } => (emit, false),
            StopOutcome::Stopped { emit } => (emit, true),
        })
    }

    /// The text held back for an unfinished character or a possible stop string.
    fn flush(&mut self) -> Result<String, tokenizers::Error> {
        let tail = self.decoder.flush()?;
        Ok(match self.stops.push(&tail) {
            StopOutcome::Continue { mut emit } => {
                emit.push_str(&self.stops.flush());
                emit
            }
            StopOutcome::Stopped { emit } => emit,
        })
    }
}

struct Sequence {
    /// Arrival order; the newest running sequence is preempted first.
    arrival: u64,
    /// Prompt and generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens whose keys and values are in the cache.
    computed: usize,
    /// Block table: the cache blocks holding this sequence, in position order.
    blocks: Vec<u32>,
    max_tokens: usize,
    ignore_eos: bool,
    sampler: LogitsProcessor,
    text: TextSink,
    outbox: Outbox,
    arrived: Instant,
    last_token_at: Option<Instant>,
    /// Still counted in the admission queue (false once it has run, even if preempted).
    queued: bool,
}

impl Sequence {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

/// How a sequence ended.
enum Ending {
    Finished(FinishReason),
    Cancelled(&'static str),
    Failed(String),
}

/// The engine thread's state.
struct Batcher {
    model: Qwen2,
    cache: KvCache,
    allocator: BlockAllocator,
    tokenizer: Arc<Tokenizer>,
    eos_ids: Vec<u32>,
    options: EngineOptions,
    jobs: Receiver<Job>,
    queued: Arc<AtomicUsize>,
    waiting: VecDeque<Sequence>,
    /// Sequences admitted to the batch, holding cache blocks.
    running: Vec<Sequence>,
    /// Finished sequences whose last events wait for a slow client.
    draining: Vec<Outbox>,
    arrivals: u64,
}

/// One sequence's share of a step: its index in `running` and how many tokens it feeds.
type Planned = (usize, usize);

impl Batcher {
    fn run(&mut self) {
        let mut idle = false;
        loop {
            if !self.receive(idle) {
                return;
            }
            self.reap(Instant::now());
            let plan = self.schedule();
            idle = plan.is_empty();
            if !idle {
                self.step(&plan);
            }
            metrics::cache_usage(self.allocator.usage());
        }
    }

    /// Takes new jobs: waits for one when there is nothing to do, polls otherwise. False when
    /// the engine was dropped and nothing is left.
    fn receive(&mut self, idle: bool) -> bool {
        let empty = self.waiting.is_empty() && self.running.is_empty() && self.draining.is_empty();
        let first = if empty {
            match self.jobs.recv() {
                Ok(job) => Some(job),
                Err(_) => return false,
            }
        } else if idle {
            // Work exists but none could run (every stream stalled): wait a little.
            self.jobs.recv_timeout(Duration::from_millis(5)).ok()
        } else {
            None
        };
        if let Some(job) = first {
            self.enqueue(job);
        }
        loop {
            match self.jobs.try_recv() {
                Ok(job) => self.enqueue(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return true,
            }
        }
    }

    fn enqueue(&mut self, job: Job) {
        let request = job.request;
        self.arrivals += 1;
        self.waiting.push_back(Sequence {
            arrival: self.arrivals,
            prompt_len: request.prompt_ids.len(),
            tokens: request.prompt_ids,
            computed: 0,
            blocks: Vec::new(),
            max_tokens: request.max_tokens,
            ignore_eos: request.ignore_eos,
            sampler: LogitsProcessor::from_sampling(request.seed, request.sampling),
            text: TextSink {
                decoder: IncrementalDecoder::new(self.tokenizer.clone()),
                stops: StopMatcher::new(request.stops),
            },
            outbox: Outbox {
                events: job.events,
                pending: VecDeque::new(),
                stalled_since: None,
            },
            arrived: job.arrived,
            last_token_at: None,
            queued: true,
        });
    }

    /// Drops what nobody waits for: cancelled requests, and streams stalled too long.
    fn reap(&mut self, now: Instant) {
        let timeout = self.options.stalled_stream_timeout;
        self.draining.retain_mut(|outbox| match outbox.flush(now) {
            Delivery::Held => outbox.stalled_for(now) < timeout,
            Delivery::Delivered | Delivery::Closed => false,
        });
        let mut index = 0;
        while index < self.running.len() {
            let sequence = &mut self.running[index];
            let ending = match sequence.outbox.flush(now) {
                Delivery::Closed => Some("client went away"),
                Delivery::Held if sequence.outbox.stalled_for(now) >= timeout => {
                    Some("client stopped reading")
                }
                Delivery::Held | Delivery::Delivered => None,
            };
            match ending {
                Some(why) => self.end(index, Ending::Cancelled(why)),
                None => index += 1,
            }
        }
        let queued = &self.queued;
        self.waiting.retain(|sequence| {
            if !sequence.outbox.events.is_closed() {
                return true;
            }
            if sequence.queued {
                queued.fetch_sub(1, Ordering::SeqCst);
            }
            metrics::request_waiting(-1.0);
            metrics::request_finished("abort");
            false
        });
    }

    /// Picks this step's work: running sequences first (decoding, then prompt chunks), then
    /// waiting requests while a slot, budget and blocks for their whole prompt are free.
    fn schedule(&mut self) -> Vec<Planned> {
        let mut budget = self.options.max_num_batched_tokens;
        let mut plan: Vec<Planned> = Vec::new();
        let mut index = 0;
        while index < self.running.len() {
            let sequence = &self.running[index];
            let wanted = (sequence.tokens.len() - sequence.computed).min(budget);
            if wanted == 0 || !sequence.outbox.pending.is_empty() {
                index += 1;
                continue;
            }
            let tokens = sequence.computed + wanted;
            if self.allocator.grow(&mut self.running[index].blocks, tokens) {
                plan.push((index, wanted));
                budget -= wanted;
                index += 1;
                continue;
            }
            // No free block: preempt the newest sequence not yet planned (perhaps this one).
            let victim = (index..self.running.len())
                .max_by_key(|&i| self.running[i].arrival)
                .unwrap_or(index);
            self.preempt(victim);
        }
        while self.running.len() < self.options.max_num_seqs && budget > 0 {
            let Some(front) = self.waiting.front() else {
                break;
            };
            let needed = self.allocator.blocks_for(front.tokens.len() + 1);
            if needed > self.allocator.free_blocks() {
                break;
            }
            let Some(mut sequence) = self.waiting.pop_front() else {
                break;
            };
            self.allocator
                .grow(&mut sequence.blocks, sequence.tokens.len() + 1);
            if std::mem::take(&mut sequence.queued) {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                metrics::prompt_tokens(sequence.prompt_len);
            }
            metrics::request_waiting(-1.0);
            metrics::request_running(1.0);
            let wanted = (sequence.tokens.len() - sequence.computed).min(budget);
            budget -= wanted;
            self.running.push(sequence);
            plan.push((self.running.len() - 1, wanted));
        }
        plan
    }

    /// Frees a running sequence's blocks and puts it back at the queue's head, to be
    /// recomputed from its tokens.
    fn preempt(&mut self, index: usize) {
        let mut sequence = self.running.remove(index);
        self.allocator.release(&mut sequence.blocks);
        sequence.computed = 0;
        metrics::request_running(-1.0);
        metrics::request_waiting(1.0);
        metrics::preemption();
        tracing::info!(
            tokens = sequence.tokens.len(),
            "KV cache full: preempted the newest sequence"
        );
        self.waiting.push_front(sequence);
    }

    /// One forward pass for the whole plan, then one sample per sequence that wants one.
    fn step(&mut self, plan: &[Planned]) {
        let block_size = self.allocator.block_size();
        let slots: Vec<Vec<u32>> = plan
            .iter()
            .map(|&(index, wanted)| {
                let sequence = &self.running[index];
                kv_cache::slots(&sequence.blocks, block_size, sequence.computed + wanted)
            })
            .collect();
        let result = {
            let batch: Vec<StepSequence> = plan
                .iter()
                .zip(&slots)
                .map(|(&(index, wanted), slots)| {
                    let sequence = &self.running[index];
                    let end = sequence.computed + wanted;
                    StepSequence {
                        tokens: &sequence.tokens[sequence.computed..end],
                        start: sequence.computed,
                        slots,
                        wants_logits: end == sequence.tokens.len(),
                    }
                })
                .collect();
            self.model.forward(&batch, &self.cache)
        };
        let logits = match result {
            Ok(logits) => logits,
            Err(error) => {
                tracing::error!(%error, "the batched forward pass failed");
                let mut indices: Vec<usize> = plan.iter().map(|&(index, _)| index).collect();
                indices.sort_unstable_by_key(|&index| Reverse(index));
                for index in indices {
                    self.end(index, Ending::Failed(format!("model: {error}")));
                }
                return;
            }
        };
        let now = Instant::now();
        let mut row = 0;
        let mut endings: Vec<(usize, Ending)> = Vec::new();
        for &(index, wanted) in plan {
            let sequence = &mut self.running[index];
            sequence.computed += wanted;
            if sequence.computed < sequence.tokens.len() {
                continue;
            }
            let sampled = logits
                .as_ref()
                .ok_or_else(|| candle_core::Error::Msg("no logits".into()))
                .and_then(|logits| logits.get(row))
                .and_then(|logits| sequence.sampler.sample(&logits));
            row += 1;
            let outcome = match sampled {
                Ok(token) => accept(sequence, token, &self.eos_ids, now),
                Err(error) => Err(format!("sampling: {error}")),
            };
            match outcome {
                Ok(None) => {}
                Ok(Some(reason)) => endings.push((index, Ending::Finished(reason))),
                Err(message) => endings.push((index, Ending::Failed(message))),
            }
        }
        endings.sort_unstable_by_key(|(index, _)| Reverse(*index));
        for (index, ending) in endings {
            self.end(index, ending);
        }
    }

    /// Takes a running sequence out of the batch and frees its blocks.
    fn end(&mut self, index: usize, ending: Ending) {
        let mut sequence = self.running.remove(index);
        self.allocator.release(&mut sequence.blocks);
        metrics::request_running(-1.0);
        let mut outbox = match ending {
            Ending::Finished(reason) => {
                let usage = Usage::new(sequence.prompt_len as u64, sequence.generated() as u64);
                metrics::request_finished(reason_label(reason));
                metrics::e2e_latency(sequence.arrived.elapsed());
                let mut outbox = sequence.outbox;
                outbox.pending.push_back(Event::Finished { reason, usage });
                outbox
            }
            Ending::Cancelled(why) => {
                tracing::info!(why, "request cancelled");
                metrics::request_finished("abort");
                return;
            }
            Ending::Failed(message) => {
                tracing::error!(%message, "generation failed");
                metrics::request_finished("error");
                let mut outbox = sequence.outbox;
                outbox.pending.push_back(Event::Failed(message));
                outbox
            }
        };
        if let Delivery::Held = outbox.flush(Instant::now()) {
            self.draining.push(outbox);
        }
    }
}

/// Appends a sampled token: metrics, end-of-sequence, text and stop strings, the length limit.
/// Returns the finish reason when the sequence is done.
fn accept(
    sequence: &mut Sequence,
    token: u32,
    eos_ids: &[u32],
    now: Instant,
) -> Result<Option<FinishReason>, String> {
    sequence.tokens.push(token);
    metrics::generation_token();
    match sequence.last_token_at {
        None => metrics::time_to_first_token(now.duration_since(sequence.arrived)),
        Some(last) => metrics::time_per_output_token(now.duration_since(last)),
    }
    sequence.last_token_at = Some(now);
    let detokenize = |error: tokenizers::Error| format!("detokenizing: {error}");
    let reason = if !sequence.ignore_eos && eos_ids.contains(&token) {
        Some(FinishReason::Stop)
    } else {
        let (text, stopped) = sequence.text.take(token).map_err(detokenize)?;
        push_text(&mut sequence.outbox, text);
        if stopped {
            return Ok(Some(FinishReason::Stop));
        }
        (sequence.generated() >= sequence.max_tokens).then_some(FinishReason::Length)
    };
    if reason.is_some() {
        let tail = sequence.text.flush().map_err(detokenize)?;
        push_text(&mut sequence.outbox, tail);
    }
    sequence.outbox.flush(now);
    Ok(reason)
}

fn push_text(outbox: &mut Outbox, text: String) {
    if !text.is_empty() {
        outbox.pending.push_back(Event::Text(text));
    }
}

fn reason_label(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}
