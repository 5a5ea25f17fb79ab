//! `pg-entrypoint`: the PostgreSQL image's entrypoint (no shell in the image).
//!
//! On an empty data directory (`PGDATA`) it runs `initdb` as the image's non-root user with the
//! superuser `POSTGRES_USER` and the password of `POSTGRES_PASSWORD` or `POSTGRES_PASSWORD_FILE`
//! (handed over on initdb's standard input through `--pwfile`, so any character works and the
//! password is never on a command line), creates the database `POSTGRES_DB`, lets network
//! clients in with scram-sha-256 only, then execs `postgres`. On a data directory that already
//! holds a cluster it only execs `postgres`. `pg-entrypoint healthcheck` runs `pg_isready`.

mod init;

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use init::{InitError, Settings};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("healthcheck") {
        return healthcheck();
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("pg-entrypoint: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), InitError> {
    let settings = Settings::from_env(|name| std::env::var(name).ok())?;
    if init::needs_init(&settings.data_dir)? {
        init::initialise(&settings)?;
    }
    let err = Command::new("postgres")
        .arg("-D")
        .arg(&settings.data_dir)
        .args(args)
        .exec();
    Err(InitError::Exec("postgres", err))
}

/// Exit 0 when the server accepts connections on its TCP port (`pg_isready`).
fn healthcheck() -> ExitCode {
    let port = std::env::var("PGPORT").unwrap_or_else(|_| "5432".into());
    match Command::new("pg_isready")
        .args(["-q", "-h", "127.0.0.1", "-p", &port])
        .status()
    {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("pg-entrypoint healthcheck: running pg_isready: {err}");
            ExitCode::FAILURE
        }
    }
}
