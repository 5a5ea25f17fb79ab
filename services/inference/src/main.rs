//! `inference`: cairn's OpenAI-compatible LLM server (port 8001). `serve` (the default) loads a
//! Hugging Face Qwen2 model directory with candle and answers `/v1/chat/completions`;
//! `healthcheck` probes a running server; `tiny-model DIR` writes a random model for tests.

mod attention;
mod chat_template;
mod checkpoint;
mod completion;
mod config;
mod dense;
mod detokenize;
mod engine;
mod error;
mod kv_cache;
mod metrics;
mod model;
mod openai;
mod server;
mod stop;
mod tiny_model;

use std::future::IntoFuture;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::serve::ListenerExt;
use clap::{Parser, Subcommand};
use tokio::sync::watch;

use crate::completion::ServedModel;
use crate::config::ServeConfig;
use crate::engine::{Engine, EngineOptions};
use crate::server::{AppState, Ready};

/// The kernel send buffer of each connection (Linux doubles it).
const SEND_BUFFER_BYTES: usize = 64 * 1024;

#[derive(Debug, Parser)]
#[command(
    name = "inference",
    version,
    about = "cairn's OpenAI-compatible LLM server"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeConfig,
}

// `Serve` is the large variant; the command line is parsed once, so its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Load the model and serve the API (the default).
    Serve(ServeConfig),
    /// Exit 0 when the running server answers GET /health with 2xx.
    Healthcheck {
        #[arg(long, env = "INFERENCE_LISTEN", default_value = "0.0.0.0:8001")]
        listen: std::net::SocketAddr,
    },
    /// Write a model directory with random weights and a tiny byte-level BPE tokenizer.
    TinyModel {
        dir: PathBuf,
        #[arg(long, value_enum, default_value = "tiny")]
        shape: tiny_model::Shape,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(config)) => serve(config),
        Some(Command::Healthcheck { listen }) => lifecycle::healthcheck::Probe {
            address: format!("127.0.0.1:{}", listen.port()),
            path: "/health".into(),
            timeout: Duration::from_secs(3),
        }
        .run(),
        Some(Command::TinyModel { dir, shape }) => match tiny_model::write(&dir, shape) {
            Ok(()) => {
                println!("wrote a {shape:?} random model to {}", dir.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("tiny-model: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(config: ServeConfig) -> ExitCode {
    lifecycle::telemetry::init(lifecycle::telemetry::LogFormat::from_env());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(config));
    // A load still running when a signal came must not hold the process.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "inference stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: ServeConfig) -> anyhow::Result<()> {
    use anyhow::Context;
    let model_dir = config.model_dir()?;
    let device = config.candle_device()?;
    let metrics = metrics::install(&config.served_model_name)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding INFERENCE_LISTEN={}", config.listen))?;
    // A small kernel send buffer per connection: a client that stops reading fills it (and its
    // stream's bounded event buffer) quickly, so the engine notices and cancels it, and idle
    // streams cannot pin megabytes of kernel memory each.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = socket2::SockRef::from(&*tcp).set_send_buffer_size(SEND_BUFFER_BYTES) {
            tracing::warn!(%error, "cannot bound a connection's send buffer");
        }
    });
    let (stop_streams, shutdown) = watch::channel(false);
    let state = AppState {
        ready: Arc::new(OnceLock::new()),
        // Empty is unset, as in the gateway: compose renders an unset `${INFERENCE_API_KEY}` as "".
        api_key: config
            .api_key
            .as_deref()
            .filter(|key| !key.is_empty())
            .map(Arc::from),
        metrics,
        shutdown,
    };
    tracing::info!(listen = %config.listen, model_dir = %model_dir.display(), device = ?config.device, "loading the model");
    let mut loading = tokio::task::spawn_blocking({
        let ready = state.ready.clone();
        move || load(&config, &model_dir, device, &ready)
    });
    let app = server::router(state);
    let serving = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            lifecycle::shutdown::signal().await;
            let _ = stop_streams.send(true);
        })
        .into_future();
    tokio::pin!(serving);
    tokio::select! {
        served = &mut serving => return served.context("serving HTTP"),
        loaded = &mut loading => loaded.context("the loading task panicked")??,
    }
    serving.await.context("serving HTTP")
}

/// Loads the model, starts the engine and publishes both.
fn load(
    config: &ServeConfig,
    model_dir: &std::path::Path,
    device: candle_core::Device,
    ready: &OnceLock<Ready>,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let dtype = config.dtype.resolve(config.device);
    let checkpoint = checkpoint::load(model_dir, &device, dtype)?;
    let max_model_len = config.max_model_len(checkpoint.max_position_embeddings)?;
    let bytes_per_token = checkpoint.model.shape().kv_bytes_per_token(dtype);
    let sizing = config.batch_sizing(bytes_per_token, max_model_len)?;
    let options = EngineOptions {
        max_num_seqs: sizing.max_num_seqs,
        max_num_batched_tokens: sizing.max_num_batched_tokens,
        max_queue: config.max_queue as usize,
        event_buffer: 64,
        stalled_stream_timeout: Duration::from_secs(config.stalled_stream_timeout),
        num_blocks: sizing.num_blocks,
        block_size: sizing.block_size,
    };
    tracing::info!(
        max_num_seqs = sizing.max_num_seqs,
        max_num_batched_tokens = sizing.max_num_batched_tokens,
        kv_blocks = sizing.num_blocks,
        kv_tokens = sizing.num_blocks * sizing.block_size,
        kv_bytes = sizing.num_blocks * sizing.block_size * bytes_per_token,
        "allocating the KV cache"
    );
    let engine = Engine::start(
        checkpoint.model,
        checkpoint.tokenizer.clone(),
        checkpoint.eos_ids,
        &options,
    )?;
    let model = ServedModel::new(
        config.served_model_name.clone(),
        checkpoint.tokenizer,
        checkpoint.template,
        checkpoint.defaults,
        max_model_len,
        config.max_prompt_bytes(max_model_len),
    );
    let _ = ready.set(Ready { engine, model });
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        max_model_len,
        ?dtype,
        "model loaded; ready"
    );
    Ok(())
}
