//! `cargo xtask bench api`: the release `api` binary under concurrent load from Debian's `wrk`,
//! on two routes: `/api/health/ready` (a database round trip, a storage metadata request and an
//! HTTP request to the LLM endpoint per call) and `GET /api/sessions?limit=20` with a bearer
//! token (JWT verification plus two indexed queries over a user with 200 sessions).
//!
//! Everything is real and started here: a PostgreSQL cluster (initdb on a directory under
//! `target/bench/api`), nginx answering `GET /v1/models` as the LLM endpoint the readiness check
//! asks, the local-directory object store, and the api with `RUST_LOG=warn` (no per-request log
//! line). It prints requests/s and p99 per route.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use testkit::ProcessGuard;
use xshell::{Shell, cmd};

use super::nginx::Nginx;
use super::wrk::{self, Load};
use crate::project;

#[derive(Debug, clap::Args)]
pub struct ApiBenchArgs {
    /// Seconds of load per route.
    #[arg(long, default_value_t = 10)]
    duration: u32,
    /// Concurrent connections wrk keeps open.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Sessions created for the benchmark user before the listing is measured.
    #[arg(long, default_value_t = 200)]
    sessions: u32,
    /// Cargo profile of the api binary: `release` (what images ship) or `dev` (quicker to
    /// build; dependencies are optimised in this workspace's dev profile, the api is not).
    #[arg(long, default_value = "release")]
    profile: String,
}

pub fn run(args: &ApiBenchArgs) -> Result<()> {
    for tool in ["nginx", "wrk"] {
        if testkit::find_program(tool).is_none() {
            bail!("{tool} is missing: apt-get install -y {tool}");
        }
    }
    for tool in ["initdb", "postgres"] {
        // PATH first, then Debian's PostgreSQL directory.
        if testkit::postgres::program(tool).is_none() {
            bail!("{tool} is missing: {}", testkit::postgres::INSTALL);
        }
    }
    let root = project::root();
    let sh = Shell::new()?;
    sh.change_dir(&root);
    let profile = &args.profile;
    cmd!(sh, "cargo build --profile {profile} --locked -p api")
        .run()
        .with_context(|| format!("building the api ({profile} profile)"))?;
    let binary_dir = if profile == "dev" {
        "debug"
    } else {
        profile.as_str()
    };
    let work = root.join("target/bench/api");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let (_postgres, database_url) = start_postgres(&work)?;
    let llm_port = testkit::free_port();
    let _llm = start_nginx(&work.join("llm"), llm_port)?;
    let api_port = testkit::free_port();
    let _api = start_api(
        &root.join("target").join(binary_dir).join("api"),
        &work,
        api_port,
        &database_url,
        llm_port,
    )?;

    let token = seed(api_port, args.sessions)?;
    let ready_url = format!("http://127.0.0.1:{api_port}/api/health/ready");
    let list_url = format!("http://127.0.0.1:{api_port}/api/sessions?limit=20");
    wrk::measure(args.load(2), &ready_url, &[]).context("warming up")?;
    let ready = wrk::measure(args.load(args.duration), &ready_url, &[])?;
    let list = wrk::measure(
        args.load(args.duration),
        &list_url,
        &[format!("Authorization: Bearer {token}")],
    )?;
    println!(
        "\napi ({profile} profile), {} connections, {} wrk threads, {} s per route, on {} cores:",
        args.connections,
        args.threads,
        args.duration,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  GET /api/health/ready          {:>8.0} req/s  p99 {:.2?}",
        ready.requests_per_second, ready.p99
    );
    println!(
        "  GET /api/sessions?limit=20     {:>8.0} req/s  p99 {:.2?}  (authenticated, {} sessions)",
        list.requests_per_second, list.p99, args.sessions
    );
    Ok(())
}

fn start_postgres(work: &Path) -> Result<(testkit::postgres::Running, String)> {
    let cluster = testkit::postgres::Cluster::new(work.join("pg"), testkit::free_port());
    let server = cluster
        .start(&[("max_connections", "100")], Duration::from_secs(30))
        .context("starting the benchmark's PostgreSQL")?;
    let url = server.url();
    Ok((server, url))
}

/// An nginx master that stops with SIGTERM, so that its workers exit with it.
/// nginx answering `GET /v1/models` like an OpenAI-compatible server: what readiness asks.
fn start_nginx(prefix: &Path, port: u16) -> Result<Nginx> {
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid nginx.pid;\nerror_log stderr warn;\nevents {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path tmp/body;\n  proxy_temp_path tmp/proxy;\n  fastcgi_temp_path tmp/fastcgi;\n  uwsgi_temp_path tmp/uwsgi;\n  scgi_temp_path tmp/scgi;\n\
         server {{\n    listen 127.0.0.1:{port};\n    location = /v1/models {{ default_type application/json; return 200 '{{\"object\":\"list\",\"data\":[{{\"id\":\"bench\",\"object\":\"model\"}}]}}'; }}\n  }}\n}}\n"
    );
    let mut nginx = Nginx::spawn(prefix, &conf)?;
    wait_for_port(nginx.process(), port)?;
    Ok(nginx)
}

fn start_api(
    binary: &Path,
    work: &Path,
    port: u16,
    database_url: &str,
    llm_port: u16,
) -> Result<ProcessGuard> {
    let log = std::fs::File::create(work.join("api.log")).context("creating api.log")?;
    let mut guard = ProcessGuard::spawn(
        "api",
        Command::new(binary)
            .env("API_LISTEN", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", database_url)
            .env("JWT_SECRET", "bench-only-secret-bench-only-secret")
            .env("LLM_BASE_URL", format!("http://127.0.0.1:{llm_port}/v1"))
            .env("LLM_MODEL", "bench")
            .env("STORAGE_BACKEND", "local")
            .env("STORAGE_DIR", work.join("files"))
            .env("RUST_LOG", "warn")
            .stdout(log)
            .stderr(Stdio::inherit()),
    );
    wait_for_port(&mut guard, port)?;
    Ok(guard)
}

fn wait_for_port(guard: &mut ProcessGuard, port: u16) -> Result<()> {
    for _ in 0..1500 {
        guard.assert_running();
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on 127.0.0.1:{port} after 30 s")
}

/// One HTTP/1.1 POST with `Connection: close`; returns the status and the body.
fn post(port: u16, path: &str, token: Option<&str>, body: &str) -> Result<(u16, String)> {
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).context("connecting to the api")?;
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .context("sending a request")?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .context("reading a reply")?;
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line in {reply:.200}"))?;
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Registers the benchmark user, creates its sessions, returns its token.
fn seed(port: u16, sessions: u32) -> Result<String> {
    let (status, body) = post(
        port,
        "/api/auth/register",
        None,
        r#"{"email":"bench@example.org","password":"bench-password"}"#,
    )?;
    if status != 201 {
        bail!("registering the benchmark user: {status} {body}");
    }
    let token = body
        .split("\"token\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("no token in the register reply")?
        .to_owned();
    for i in 0..sessions {
        let (status, body) = post(
            port,
            "/api/sessions",
            Some(&token),
            &format!(r#"{{"title":"bench session {i}"}}"#),
        )?;
        if status != 201 {
            bail!("creating session {i}: {status} {body}");
        }
    }
    Ok(token)
}

impl ApiBenchArgs {
    fn load(&self, seconds: u32) -> Load {
        Load {
            threads: self.threads,
            connections: self.connections,
            seconds,
        }
    }
}
