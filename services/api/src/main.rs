//! `api`: cairn's application backend. `main` parses the command line and the configuration
//! once, then runs one subcommand: `serve` (the default), `migrate status|up`, `healthcheck`.

mod app;
mod auth;
mod config;
mod db;
mod error;
mod llm;
mod metrics;
mod prompt;
mod routes;
mod storage;
mod streams;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(name = "api", about = "cairn's application backend", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply pending migrations and serve HTTP (the default).
    Serve,
    /// Show or apply the embedded database migrations.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Exit 0 when the api on this machine answers /api/health (for image health checks).
    Healthcheck {
        /// Port of the running api (default: the port of API_LISTEN, else 8000).
        #[arg(long)]
        port: Option<u16>,
    },
}

#[derive(Debug, Subcommand)]
enum MigrateAction {
    /// List every embedded migration and whether the database has it.
    Status,
    /// Apply every pending migration.
    Up,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Healthcheck { port }) = cli.command {
        let port = port.unwrap_or_else(listen_port);
        return lifecycle::healthcheck::Probe {
            address: format!("127.0.0.1:{port}"),
            path: "/api/health".into(),
            timeout: Duration::from_secs(3),
        }
        .run();
    }
    lifecycle::telemetry::init(lifecycle::telemetry::LogFormat::from_env());
    // reqwest (LLM, S3) uses rustls without a built-in provider: ring is ours.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli.command)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "api failed");
            eprintln!("api: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The port of `API_LISTEN`, or 8000: where `healthcheck` finds the api in its own container.
fn listen_port() -> u16 {
    std::env::var("API_LISTEN")
        .ok()
        .and_then(|listen| listen.parse::<std::net::SocketAddr>().ok())
        .map_or(8000, |address| address.port())
}

async fn run(command: Option<Command>) -> anyhow::Result<()> {
    match command.unwrap_or(Command::Serve) {
        Command::Serve => serve(Config::from_env()?).await,
        Command::Migrate { action } => migrate(action).await,
        Command::Healthcheck { .. } => Ok(()),
    }
}

async fn migrate(action: MigrateAction) -> anyhow::Result<()> {
    let database = config::DatabaseConfig::from_env()?;
    let pool = db::connect(&database)
        .await
        .context("connecting to DATABASE_URL")?;
    if let MigrateAction::Up = action {
        db::migrate_up(&pool).await.context("applying migrations")?;
    }
    for state in db::migration_status(&pool)
        .await
        .context("reading migration state")?
    {
        let mark = if state.applied { "applied" } else { "pending" };
        println!("{:>16} {mark:<8} {}", state.version, state.description);
    }
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let pool = db::connect(&config.database)
        .await
        .context("connecting to DATABASE_URL")?;
    db::migrate_up(&pool).await.context("applying migrations")?;
    let store = storage::open(&config.storage)?;
    let llm = llm::LlmClient::new(config.llm.clone()).context("building the LLM client")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(metrics::upkeep(metrics::handle()));
    let state = app::AppState {
        tokens: auth::token::TokenKeys::new(&config.jwt_secret, config.token_ttl),
        hashing: auth::password::Hashing::new(
            config.limits.password_hashes,
            config.limits.password_wait,
        ),
        readiness: routes::health::ReadinessCache::new(config.limits.ready_cache),
        streams: streams::StreamLimiter::new(config.limits.streams_per_user),
        config: Arc::new(config),
        pool,
        llm,
        store,
        metrics: metrics::handle(),
        shutdown: shutdown.clone(),
    };
    let listen = state.config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding API_LISTEN {listen}"))?;
    tracing::info!(%listen, storage = ?state.config.storage, "api listening");
    axum::serve(listener, app::router(state))
        .with_graceful_shutdown(async move {
            lifecycle::shutdown::signal().await;
            shutdown.cancel();
        })
        .await
        .context("serving HTTP")?;
    tracing::info!("api stopped");
    Ok(())
}
