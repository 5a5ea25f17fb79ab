//! A recording, fault-injecting HTTP proxy in front of the registry. Like nginx with request
//! buffering (its default), it reads a whole request before forwarding it, so a client that
//! drops mid-body leaves nothing half-written upstream. It counts every request and every
//! body byte it received, and can answer chosen requests with 503 or cut the connection in
//! the middle of a request body.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// What to do to the `nth` (1-based) request with `method` whose path contains `path_part`.
#[derive(Debug, Clone)]
pub struct Fault {
    pub method: Method,
    pub path_part: &'static str,
    pub nth: usize,
    pub kind: FaultKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer 503 Service Unavailable without forwarding.
    Unavailable,
    /// Read half of the body, then drop the connection without forwarding or answering.
    DropMidBody,
    /// Forward the head and half of the body to the registry, then drop both connections
    /// (what a proxy without request buffering does when the client's line breaks).
    DropMidBodyForwarded,
}

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    /// Body bytes received from the client (also for requests that were cut or refused).
    pub body_bytes: u64,
    pub fault: Option<FaultKind>,
}

pub struct Proxy {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _runtime: tokio::runtime::Runtime,
}

struct State {
    upstream: String,
    client: reqwest::Client,
    faults: Vec<Fault>,
    counters: Mutex<HashMap<(Method, &'static str), usize>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Proxy {
    pub fn start(upstream_port: u16, faults: Vec<Fault>) -> Proxy {
        let runtime = tokio::runtime::Runtime::new().expect("proxy runtime");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(State {
            upstream: format!("http://127.0.0.1:{upstream_port}"),
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("proxy client"),
            faults,
            counters: Mutex::new(HashMap::new()),
            seen: seen.clone(),
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { handle(&state, request).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Proxy {
            addr,
            seen,
            _runtime: runtime,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }

    pub fn clear(&self) {
        self.seen.lock().expect("seen lock").clear();
    }
}

async fn handle(
    state: &State,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, mut body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let fault = pick_fault(state, &parts.method, &path);
    let record = |body_bytes: u64, fault: Option<FaultKind>| {
        state.seen.lock().expect("seen lock").push(Seen {
            method: parts.method.clone(),
            path: path.clone(),
            body_bytes,
            fault,
        });
    };
    let declared: u64 = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut received = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(std::io::Error::other)?;
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
        let cut = matches!(
            fault,
            Some(FaultKind::DropMidBody | FaultKind::DropMidBodyForwarded)
        );
        if cut && received.len() as u64 >= declared / 2 {
            record(received.len() as u64, fault);
            if fault == Some(FaultKind::DropMidBodyForwarded) {
                forward_partial(state, &parts, &path, &received[..(declared / 2) as usize]).await?;
            }
            return Err(std::io::Error::other("fault: connection dropped mid-body"));
        }
    }
    record(received.len() as u64, fault);
    if fault == Some(FaultKind::Unavailable) {
        return Ok(Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .body(Full::new(Bytes::from_static(b"fault: unavailable")))
            .expect("503 response"));
    }
    forward(state, parts, path, received).await
}

fn pick_fault(state: &State, method: &Method, path: &str) -> Option<FaultKind> {
    let mut counters = state.counters.lock().expect("counters lock");
    let mut keys: Vec<(Method, &'static str)> = state
        .faults
        .iter()
        .filter(|fault| fault.method == *method && path.contains(fault.path_part))
        .map(|fault| (fault.method.clone(), fault.path_part))
        .collect();
    keys.dedup();
    for key in keys {
        *counters.entry(key).or_insert(0) += 1;
    }
    state
        .faults
        .iter()
        .find(|fault| {
            fault.method == *method
                && path.contains(fault.path_part)
                && counters.get(&(fault.method.clone(), fault.path_part)) == Some(&fault.nth)
        })
        .map(|fault| fault.kind)
}

/// Sends the request head with its full Content-Length but only `partial` of the body to the
/// registry, then ends the connection.
async fn forward_partial(
    state: &State,
    parts: &hyper::http::request::Parts,
    path: &str,
    partial: &[u8],
) -> Result<(), std::io::Error> {
    use tokio::io::AsyncWriteExt as _;
    let upstream = state.upstream.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(upstream).await?;
    let mut head = format!("{} {path} HTTP/1.1\r\n", parts.method);
    for (name, value) in &parts.headers {
        head.push_str(&format!(
            "{name}: {}\r\n",
            value.to_str().map_err(std::io::Error::other)?
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(partial).await?;
    // Half-close: the registry reads the partial body up to EOF, fails the request and closes;
    // waiting for that close means it has taken in (and kept) what arrived.
    stream.shutdown().await?;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer),
    )
    .await;
    Ok(())
}

async fn forward(
    state: &State,
    parts: hyper::http::request::Parts,
    path: String,
    body: Vec<u8>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let mut upstream = state
        .client
        .request(parts.method.clone(), format!("{}{path}", state.upstream))
        .body(body);
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "connection" | "transfer-encoding" | "content-length"
        ) {
            upstream = upstream.header(name, value);
        }
    }
    let answer = upstream.send().await.map_err(std::io::Error::other)?;
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !matches!(name.as_str(), "connection" | "transfer-encoding") {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.map_err(std::io::Error::other)?;
    Ok(response.body(Full::new(bytes)).expect("proxied response"))
}
