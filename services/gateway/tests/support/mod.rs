//! What the gateway's integration tests share: the real `gateway` binary started as a child
//! process, real upstream HTTP servers (axum) started in the test's runtime, and a small HTTP
//! client. Readiness is polled with deadlines, never slept on.

#![allow(dead_code)]

pub mod inference;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use testkit::ProcessGuard;

pub const API_KEY: &str = "test-key-1";
pub const JWT_SECRET: &str = "test-jwt-secret";

/// A running gateway process.
pub struct Gateway {
    pub guard: ProcessGuard,
    pub port: u16,
    pub stdout: PathBuf,
}

impl Gateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }
}

/// A scratch directory unique to this test process and name.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gateway-it-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The gateway command with a clean environment: loopback port, both pools, fast health checks.
pub fn gateway_command(port: u16, api: &[String], inference: &[String]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
    command
        .env_clear()
        .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("GATEWAY_API_UPSTREAMS", api.join(","))
        .env("GATEWAY_INFERENCE_UPSTREAMS", inference.join(","))
        .env("GATEWAY_API_KEYS", API_KEY)
        .env("JWT_SECRET", JWT_SECRET)
        .env("GATEWAY_HEALTH_INTERVAL_MS", "100")
        .env("GATEWAY_HEALTH_TIMEOUT_MS", "500")
        .env("RUST_LOG", "info");
    command
}

/// Starts the gateway and waits until it answers `/api/health`.
pub async fn start(name: &str, mut command: Command) -> Gateway {
    let port: u16 = command
        .get_envs()
        .find(|(k, _)| *k == "GATEWAY_LISTEN")
        .and_then(|(_, v)| v?.to_str()?.rsplit(':').next()?.parse().ok())
        .expect("GATEWAY_LISTEN set");
    let stdout = scratch(name).join("gateway.log");
    let file = std::fs::File::create(&stdout).expect("log file");
    command.stdout(file).stderr(Stdio::inherit());
    let mut guard = ProcessGuard::spawn("gateway", &mut command);
    let client = client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        guard.assert_running();
        let ready = client
            .get(
                format!("http://127.0.0.1:{port}/api/health")
                    .parse()
                    .expect("uri"),
            )
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK);
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "gateway did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Gateway {
        guard,
        port,
        stdout,
    }
}

pub fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A complete answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.body))
    }
}

pub async fn send(request: http::Request<Body>) -> Answer {
    let response = client().request(request).await.expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

pub async fn get(url: &str) -> Answer {
    send(
        http::Request::get(url)
            .body(Body::empty())
            .expect("request"),
    )
    .await
}

/// A real upstream HTTP server on a free port, stoppable and restartable on the same port.
pub struct Upstream {
    pub name: &'static str,
    pub port: u16,
    pub sse_sent: Arc<Mutex<Vec<Instant>>>,
    /// How many health probes (`/api/health`, `/health`) this upstream answered.
    pub health_hits: Arc<AtomicUsize>,
    /// How many of those probes carried an `Authorization` header.
    pub health_authorized: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Upstream {
    pub async fn start(name: &'static str) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut upstream = Upstream {
            name,
            port,
            sse_sent: Arc::default(),
            health_hits: Arc::default(),
            health_authorized: Arc::default(),
            stop: None,
            task: None,
        };
        upstream.serve(listener);
        upstream
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = upstream_app(
            self.name,
            Arc::clone(&self.sse_sent),
            Arc::clone(&self.health_hits),
            Arc::clone(&self.health_authorized),
        );
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        }));
    }

    /// Stops accepting and closes every connection (the gateway's pooled ones too).
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    pub async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("rebind the same port");
        self.serve(listener);
    }
}

fn upstream_app(
    name: &'static str,
    sse_sent: Arc<Mutex<Vec<Instant>>>,
    health_hits: Arc<AtomicUsize>,
    health_authorized: Arc<AtomicUsize>,
) -> Router {
    let health = move |headers: HeaderMap| {
        health_hits.fetch_add(1, Ordering::SeqCst);
        if headers.contains_key(http::header::AUTHORIZATION) {
            health_authorized.fetch_add(1, Ordering::SeqCst);
        }
        async { "ok" }
    };
    let v1_sent = Arc::clone(&sse_sent);
    Router::new()
        .route("/api/health", axum::routing::get(health.clone()))
        .route("/health", axum::routing::get(health))
        .route(
            "/v1/events",
            axum::routing::get(move |request: Request| events(request, Arc::clone(&v1_sent))),
        )
        .route(
            "/api/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "late"
            }),
        )
        .route(
            "/api/events",
            axum::routing::get(move |request: Request| events(request, Arc::clone(&sse_sent))),
        )
        .fallback(move |request: Request| echo(name, request))
}

/// Answers with who it is and what it received.
async fn echo(name: &'static str, request: Request) -> Response {
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                serde_json::Value::from(v.to_str().unwrap_or("?")),
            )
        })
        .collect();
    let method = request.method().to_string();
    let uri = request.uri().to_string();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    axum::Json(serde_json::json!({
        "upstream": name, "method": method, "uri": uri, "headers": headers, "body_bytes": body,
    }))
    .into_response()
}

/// An SSE stream: `count` events (query `?count=N`, default 4) every 300 ms, the first at once;
/// the send time of each is recorded.
async fn events(request: Request, sent: Arc<Mutex<Vec<Instant>>>) -> Response {
    let count: usize = request
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("count="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(4);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(1);
    tokio::spawn(async move {
        for n in 0..count {
            if n > 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            sent.lock().expect("lock").push(Instant::now());
            if tx.send(Ok(format!("data: event {n}\n\n"))).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        [(http::header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A port nobody listens on.
pub fn dead_url() -> String {
    format!("http://127.0.0.1:{}", testkit::free_port())
}

/// Polls `check` every 20 ms until it is true; panics naming `what` after `deadline`.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < deadline,
            "{what}: not true after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
