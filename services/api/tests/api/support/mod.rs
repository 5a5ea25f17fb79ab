//! What the api's integration tests run for real: a PostgreSQL cluster (initdb + postgres on a
//! temporary directory and a free port), the s3s-fs S3 server, an OpenAI-compatible streaming
//! endpoint, and the `api` binary itself. Every process is owned by a `ProcessGuard`.
//!
//! Two OpenAI-compatible endpoints: the real `inference` server on a tiny random model
//! ([`inference`]), for the path a user takes, and a scripted one inside the test ([`llm`]) that
//! streams OpenAI's exact wire format but can also be made to stall, break mid-answer or go
//! silent on cue: the failure paths a random model cannot be asked to take.

#![allow(dead_code)]

pub mod inference;
pub mod llm;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use testkit::ProcessGuard;

/// A PostgreSQL cluster owned by the test (`testkit::postgres`).
pub struct Postgres {
    /// The superuser's URL (trust authentication).
    pub url: String,
    pub port: u16,
    _server: testkit::postgres::Running,
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// Starts a fresh cluster, or `None` (test skipped) when PostgreSQL is not installed.
    pub fn start() -> Option<Postgres> {
        Postgres::start_with(|_| {})
    }

    /// A cluster where every role but the superuser must log in over TCP with its password
    /// (`scram-sha-256`), and `role` (password `password`) owns a database of its own name.
    pub async fn start_with_password_role(role: &str, password: &str) -> Option<Postgres> {
        let pg = Postgres::start_with(|cluster| {
            let hba = cluster.data_dir().join("pg_hba.conf");
            let rest = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
            let first = "host all postgres 127.0.0.1/32 trust\n\
                         host all all 127.0.0.1/32 scram-sha-256\n";
            std::fs::write(&hba, format!("{first}{rest}")).expect("write pg_hba.conf");
        })?;
        let admin = sqlx::PgPool::connect(&pg.url)
            .await
            .expect("superuser login");
        let quoted = password.replace('\'', "''");
        for statement in [
            format!("CREATE ROLE \"{role}\" LOGIN PASSWORD '{quoted}'"),
            format!("CREATE DATABASE \"{role}\" OWNER \"{role}\""),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&admin)
                .await
                .expect("create the role");
        }
        admin.close().await;
        Some(pg)
    }

    /// Starts a cluster after `prepare` has seen it initialised but not yet running.
    fn start_with(prepare: impl FnOnce(&testkit::postgres::Cluster)) -> Option<Postgres> {
        if !testkit::postgres::require() {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("cairn-pg")
            .tempdir()
            .expect("tempdir");
        let cluster = testkit::postgres::Cluster::new(dir.path(), testkit::free_port());
        cluster.init().expect("initdb");
        prepare(&cluster);
        let server = cluster
            .start(&[("fsync", "off")], Duration::from_secs(30))
            .expect("start PostgreSQL");
        Some(Postgres {
            url: server.url(),
            port: server.port(),
            _server: server,
            _dir: dir,
        })
    }
}

/// The s3s-fs S3 server with one bucket.
pub struct S3Server {
    pub endpoint: String,
    pub bucket: String,
    pub root: PathBuf,
    _server: ProcessGuard,
    _dir: tempfile::TempDir,
}

pub const S3_ACCESS_KEY: &str = "cairn-test-access";
pub const S3_SECRET_KEY: &str = "cairn-test-secret-key-0123456789";

impl S3Server {
    pub fn start() -> Option<S3Server> {
        let program = testkit::require_tool(
            "s3s-fs",
            "cargo install --locked s3s-fs --version 0.14.1 --features binary",
        )?;
        let dir = tempfile::Builder::new()
            .prefix("cairn-s3")
            .tempdir()
            .expect("tempdir");
        let bucket = "cairn-files".to_owned();
        std::fs::create_dir_all(dir.path().join(&bucket)).expect("bucket directory");
        let port = testkit::free_port();
        let server = ProcessGuard::spawn(
            "s3s-fs",
            Command::new(program)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        testkit::wait_for_port("s3s-fs", port, Duration::from_secs(30));
        Some(S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            root: dir.path().to_owned(),
            bucket,
            _server: server,
            _dir: dir,
        })
    }
}

pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret!";

/// The `api` binary, running against the given database and LLM.
pub struct Api {
    pub base: String,
    pub port: u16,
    pub guard: ProcessGuard,
    pub storage_dir: tempfile::TempDir,
}

/// The environment every test api gets; `extra` overrides or adds.
pub fn api_env(database_url: &str, llm_base: &str, storage: &Path) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", database_url),
        ("JWT_SECRET", JWT_SECRET),
        ("LLM_BASE_URL", llm_base),
        ("LLM_MODEL", "test-model"),
        ("STORAGE_BACKEND", "local"),
        ("STORAGE_DIR", storage.to_str().expect("utf-8 path")),
        ("RUST_LOG", "warn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

impl Api {
    pub fn start(database_url: &str, llm_base: &str, extra: &[(&str, &str)]) -> Api {
        Api::launch(database_url, llm_base, extra, Stdio::null())
    }

    /// Like [`Api::start`], with the api's log (its stdout) written to `log`.
    pub fn start_logged(
        database_url: &str,
        llm_base: &str,
        extra: &[(&str, &str)],
        log: &Path,
    ) -> Api {
        let file = std::fs::File::create(log).expect("api log file");
        Api::launch(database_url, llm_base, extra, file.into())
    }

    fn launch(database_url: &str, llm_base: &str, extra: &[(&str, &str)], log: Stdio) -> Api {
        let storage_dir = tempfile::Builder::new()
            .prefix("cairn-files")
            .tempdir()
            .expect("tempdir");
        let port = testkit::free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_api"));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(api_env(database_url, llm_base, storage_dir.path()))
            .env("API_LISTEN", format!("127.0.0.1:{port}"))
            .envs(extra.iter().map(|(k, v)| (*k, *v)))
            .stdout(log);
        let mut guard = ProcessGuard::spawn("api", &mut command);
        testkit::wait_until("api", Duration::from_secs(60), || {
            guard.assert_running();
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Api {
            base: format!("http://127.0.0.1:{port}"),
            port,
            guard,
            storage_dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// A reqwest client; reqwest is built with rustls and no provider, so install ring first.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A small JSON client for the api.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
}

/// Status and parsed JSON body (`Value::Null` when the body is not JSON).
pub type Reply = (u16, Value);

impl Client {
    /// `POST /api/chat`: the status and the whole response text (the event stream, read to its end).
    pub async fn chat(&self, body: Value) -> (u16, String) {
        let response = self
            .request(reqwest::Method::POST, "/api/chat")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("chat request");
        let status = response.status().as_u16();
        (status, response.text().await.expect("chat body"))
    }

    pub fn new(api: &Api) -> Client {
        Client {
            http: http_client(),
            base: api.base.clone(),
            token: None,
        }
    }

    pub fn with_token(&self, token: &str) -> Client {
        Client {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.request(reqwest::Method::DELETE, path)).await
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Reply {
        let request = self
            .request(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(body);
        self.send(request).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.post_raw(path, body.to_string()).await
    }

    /// Registers a user and returns a client carrying its token.
    pub async fn register(&self, email: &str, password: &str) -> Client {
        let (status, body) = self
            .post(
                "/api/auth/register",
                &serde_json::json!({ "email": email, "password": password }),
            )
            .await;
        assert_eq!(status, 201, "register {email}: {body}");
        self.with_token(body["token"].as_str().expect("token"))
    }
}

/// One server-sent event as the client saw it.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub data: Value,
}

/// Reads a whole SSE response into events; comment lines (keep-alives) are counted.
pub fn parse_sse(text: &str) -> (Vec<SseEvent>, usize) {
    let mut events = Vec::new();
    let mut comments = 0;
    for block in text.split("\n\n").map(testkit::sse::parse_block) {
        comments += block.comments;
        if !block.data.is_empty() {
            events.push(SseEvent {
                event: block.event,
                data: serde_json::from_str(&block.data).expect("event data is JSON"),
            });
        }
    }
    (events, comments)
}
