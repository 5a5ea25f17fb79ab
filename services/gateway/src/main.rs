//! The `gateway` binary: parse the configuration once, then serve or run the health check.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use gateway::config::{self, Config, Environment};

#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about = "cairn's edge service (see the crate docs for every variable)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Exit 0 only when the running gateway answers its health route on loopback.
    Healthcheck,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config::load(&Environment::from_process()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("gateway: bad configuration: {err}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config),
        Command::Healthcheck => healthcheck(&config),
    }
}

fn serve(config: Config) -> ExitCode {
    lifecycle::telemetry::init(lifecycle::telemetry::LogFormat::from_env());
    let metrics = match gateway::observe::install_metrics() {
        Ok(handle) => handle,
        Err(err) => {
            eprintln!("gateway: {err}");
            return ExitCode::FAILURE;
        }
    };
    match gateway::app::serve(config, metrics) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "gateway failed");
            eprintln!("gateway: {err}");
            ExitCode::FAILURE
        }
    }
}

fn healthcheck(config: &Config) -> ExitCode {
    // A wildcard listen address is reached over loopback; a specific one, directly.
    let ip = match config.listen.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    lifecycle::healthcheck::Probe {
        address: SocketAddr::new(ip, config.listen.port()).to_string(),
        path: "/api/health".into(),
        timeout: Duration::from_secs(3),
    }
    .run()
}
