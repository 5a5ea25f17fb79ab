//! The edge path of issue #7 on real parts: the nginx configs `cargo xtask render` writes, run
//! on loopback in front of the real `gateway` binary, in front of the real `api` binary on a
//! real PostgreSQL. Both variants: the plain-HTTP local one, and (as root) the TLS `nginx.conf`
//! that ships, in a private mount namespace laid out like its container (the folder over
//! `/etc/nginx` with a test certificate, `gateway` in `/etc/hosts`, a fresh `/tmp`), reached by
//! `openssl s_client` speaking HTTP/1.1 over TLS 1.3 and checking the certificate.
//!
//! - A registered, logged-in user's `POST /api/chat` streams server-sent events through nginx
//!   and the gateway over HTTP/1.1, one by one: the api's LLM (an OpenAI-format server scripted
//!   here) sends its next delta only after the client has received the previous event, so any
//!   buffering on the path stalls the test. The reply is then stored in the session.
//! - A WebSocket upgrade is tunnelled nginx -> gateway -> a WebSocket echo server in the
//!   gateway's inference pool (`/v1/*`; the api has no WebSocket route), frames both ways.

mod edge_support;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use edge_support::nginx::{
    Ports, SERVER_NAME, container_etc_nginx, render_nginx, start_local_nginx, start_tls_nginx,
    tls_connection,
};
use edge_support::upstreams::{
    DELTAS, WS_ACCEPT, WS_KEY, frame, header, read_frame, read_head, start_scripted_llm,
    start_websocket_echo,
};
use edge_support::{DEADLINE, workspace_root};
use serde_json::{Value, json};
use testkit::ProcessGuard;

/// Shared by the api (which signs tokens) and the gateway (which checks them on `/v1`).
const JWT_SECRET: &str = "edge-test-secret-edge-test-secret-0123";
/// The API key the gateway accepts on `/v1`.
const API_KEY: &str = "edge-test-key";

/// The debug `gateway` and `api` binaries, built now (a no-op when they are up to date).
fn service_binaries() -> (PathBuf, PathBuf) {
    let root = workspace_root();
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "-p", "gateway", "-p", "api", "--bins"])
        .current_dir(&root);
    // cargo test gives this process xtask's package variables; build scripts that watch them
    // (ring's watches CARGO_PKG_NAME and CARGO_MANIFEST_DIR) would rerun, and the api with them,
    // on every switch between this build and a plain `cargo build`.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let package_variable = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_BIN_EXE_",
            "CARGO_CRATE_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
            || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"].contains(&name.as_ref());
        if package_variable {
            build.env_remove(name.as_ref());
        }
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "building the gateway and the api");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    (target.join("debug/gateway"), target.join("debug/api"))
}

fn start_api(binary: &Path, dir: &Path, port: u16, database_url: &str, llm: u16) -> ProcessGuard {
    ProcessGuard::spawn(
        "api",
        Command::new(binary)
            .env_clear()
            .env("API_LISTEN", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", database_url)
            .env("JWT_SECRET", JWT_SECRET)
            .env("LLM_BASE_URL", format!("http://127.0.0.1:{llm}/v1"))
            .env("LLM_MODEL", "scripted")
            .env("STORAGE_BACKEND", "local")
            .env("STORAGE_DIR", dir.join("files"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null()),
    )
}

fn start_gateway(binary: &Path, port: u16, api: u16, echo: u16) -> ProcessGuard {
    ProcessGuard::spawn(
        "gateway",
        Command::new(binary)
            .env_clear()
            .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("GATEWAY_WORKERS", "1")
            .env("GATEWAY_API_UPSTREAMS", format!("http://127.0.0.1:{api}"))
            .env(
                "GATEWAY_INFERENCE_UPSTREAMS",
                format!("http://127.0.0.1:{echo}"),
            )
            .env("GATEWAY_API_KEYS", API_KEY)
            .env("JWT_SECRET", JWT_SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null()),
    )
}

/// Waits until `port` accepts connections while `process` keeps running.
fn wait_for(process: &mut ProcessGuard, what: &str, port: u16) {
    testkit::wait_until(what, DEADLINE, || {
        process.assert_running();
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// A JSON request through nginx; returns the status and the JSON body.
fn call(
    client: &reqwest::blocking::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = response.status().as_u16();
    let text = response.text().expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Reads from `stream` until the text received so far contains `needle`.
fn read_until(stream: &mut impl Read, seen: &mut String, needle: &str) {
    let mut buffer = [0_u8; 4096];
    while !seen.contains(needle) {
        let n = stream
            .read(&mut buffer)
            .unwrap_or_else(|err| panic!("waiting for {needle:?}: {err}; got so far:\n{seen}"));
        assert!(n > 0, "closed before {needle:?}; got:\n{seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
}

/// The data line of a delta event carrying `text`, as the api writes it.
fn delta_event(text: &str) -> String {
    format!("event: delta\ndata: {}", json!({"content": text}))
}

/// `POST /api/chat` on `stream` (a connection to nginx): every delta event arrives before the
/// LLM is allowed to send the next one. Returns the response head.
fn chat_streams_one_by_one(
    stream: &mut (impl Read + Write),
    token: &str,
    session_id: &str,
    client_saw: &mpsc::Sender<()>,
) -> String {
    let body = json!({"message": "hello edge", "session_id": session_id}).to_string();
    write!(
        stream,
        "POST /api/chat HTTP/1.1\r\nHost: {SERVER_NAME}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\nAccept-Encoding: gzip\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send the chat request");
    let mut seen = String::new();
    for (index, delta) in DELTAS.iter().enumerate() {
        read_until(stream, &mut seen, &delta_event(delta));
        if let Some(next) = DELTAS.get(index + 1) {
            assert!(!seen.contains(&delta_event(next)), "{seen}");
            client_saw.send(()).expect("tell the LLM");
        }
    }
    read_until(stream, &mut seen, "event: done");
    let head = seen[..seen.find("\r\n\r\n").expect("response head")].to_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/event-stream"),
        "{head}"
    );
    assert_eq!(
        header(&head, "content-encoding"),
        None,
        "an event stream is never compressed: {head}"
    );
    assert_eq!(
        header(&head, "x-content-type-options"),
        Some("nosniff"),
        "{head}"
    );
    head
}

/// A WebSocket upgrade of `/v1/ws` on `stream` (a connection to nginx) reaches the echo server
/// through the gateway; frames go both ways.
fn websocket_tunnels(stream: impl Read + Write, upgrade_heads: &mpsc::Receiver<String>) {
    let mut reader = BufReader::new(stream);
    write!(
        reader.get_mut(),
        "GET /v1/ws HTTP/1.1\r\nHost: {SERVER_NAME}\r\nAuthorization: Bearer {API_KEY}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n\r\n"
    )
    .expect("send the upgrade");
    let answer = read_head(&mut reader);
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    assert_eq!(
        header(&answer, "sec-websocket-accept"),
        Some(WS_ACCEPT),
        "{answer}"
    );
    let upstream = upgrade_heads
        .recv_timeout(DEADLINE)
        .expect("the upgrade reached the echo server");
    assert!(upstream.starts_with("GET /v1/ws HTTP/1.1"), "{upstream}");
    assert_eq!(
        header(&upstream, "sec-websocket-key"),
        Some(WS_KEY),
        "{upstream}"
    );
    assert_eq!(
        header(&upstream, "authorization"),
        None,
        "the credential stays at the edge: {upstream}"
    );
    assert_eq!(
        read_frame(&mut reader).expect("greeting"),
        b"hello from the upstream"
    );
    for message in ["ping", "a second frame"] {
        reader
            .get_mut()
            .write_all(&frame(message.as_bytes(), Some([0x12, 0x34, 0x56, 0x78])))
            .expect("send a frame");
        assert_eq!(read_frame(&mut reader).expect("echo"), message.as_bytes());
    }
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream
}

#[test]
fn nginx_gateway_and_api_stream_chat_events_one_by_one_and_tunnel_websockets() {
    let Some(nginx) = testkit::require_tool("nginx", "apt-get install nginx") else {
        return;
    };
    if !testkit::postgres::require() {
        return;
    }
    let (gateway_binary, api_binary) = service_binaries();
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = testkit::postgres::Cluster::new(dir.path().join("pg"), testkit::free_port());
    let postgres = cluster.start(&[], DEADLINE).expect("start PostgreSQL");

    let (client_saw, llm_may_go_on) = mpsc::channel();
    let (requests_sender, llm_requests) = mpsc::channel();
    let llm = start_scripted_llm(llm_may_go_on, requests_sender);
    let (heads_sender, upgrade_heads) = mpsc::channel();
    let echo = start_websocket_echo(heads_sender);

    let ports = Ports::free();
    let mut api = start_api(&api_binary, dir.path(), ports.api, &postgres.url(), llm);
    wait_for(&mut api, "the api", ports.api);
    let mut gateway = start_gateway(&gateway_binary, ports.gateway, ports.api, echo);
    wait_for(&mut gateway, "the gateway", ports.gateway);
    let rendered = render_nginx(dir.path(), &ports);
    let mut local_nginx = start_local_nginx(&nginx, &rendered);
    wait_for(&mut local_nginx, "nginx (local variant)", ports.local);

    // A user registers, logs in and opens a session, all through nginx and the gateway.
    let base = format!("http://127.0.0.1:{}", ports.local);
    let http = reqwest::blocking::Client::builder()
        .timeout(DEADLINE)
        .build()
        .expect("HTTP client");
    let credentials = json!({"email": "edge@example.org", "password": "correct horse"});
    let (status, registered) = call(
        &http,
        reqwest::Method::POST,
        &format!("{base}/api/auth/register"),
        None,
        Some(credentials.clone()),
    );
    assert_eq!(status, 201, "{registered}");
    let (status, login) = call(
        &http,
        reqwest::Method::POST,
        &format!("{base}/api/auth/login"),
        None,
        Some(credentials),
    );
    assert_eq!(status, 200, "{login}");
    let token = login["token"].as_str().expect("token").to_owned();
    let (status, session) = call(
        &http,
        reqwest::Method::POST,
        &format!("{base}/api/sessions"),
        Some(&token),
        Some(json!({"title": "through the edge"})),
    );
    assert_eq!(status, 201, "{session}");
    let session_id = session["id"].as_str().expect("session id").to_owned();

    chat_streams_one_by_one(&mut connect(ports.local), &token, &session_id, &client_saw);
    let request = llm_requests
        .recv_timeout(DEADLINE)
        .expect("the LLM request");
    assert_eq!(request["stream"], true, "{request}");
    assert!(
        request["messages"].to_string().contains("hello edge"),
        "{request}"
    );
    // The streamed reply is stored in the user's session.
    let (status, stored) = call(
        &http,
        reqwest::Method::GET,
        &format!("{base}/api/sessions/{session_id}"),
        Some(&token),
        None,
    );
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["messages"][1]["role"], "assistant", "{stored}");
    assert_eq!(
        stored["messages"][1]["content"],
        DELTAS.concat(),
        "{stored}"
    );
    websocket_tunnels(connect(ports.local), &upgrade_heads);

    // The same through the TLS config that ships.
    let (Some(unshare), Some(openssl)) = (
        testkit::require_tool("unshare", "apt-get install util-linux"),
        testkit::require_tool("openssl", "apt-get install openssl"),
    ) else {
        return;
    };
    if !testkit::require_root("the TLS variant's mount namespace") {
        return;
    }
    let etc = dir.path().join("etc-nginx");
    let ca = container_etc_nginx(&openssl, &rendered, &etc);
    let mut tls_nginx = start_tls_nginx(&nginx, &unshare, &etc, dir.path());
    wait_for(&mut tls_nginx, "nginx (TLS variant)", ports.https);
    let (mut events, _events_client) = tls_connection(&openssl, ports.https, &ca);
    let head = chat_streams_one_by_one(&mut events, &token, &session_id, &client_saw);
    assert!(
        header(&head, "strict-transport-security").is_some(),
        "the TLS server's headers: {head}"
    );
    let (socket, _socket_client) = tls_connection(&openssl, ports.https, &ca);
    websocket_tunnels(socket, &upgrade_heads);

    for process in [&mut tls_nginx, &mut local_nginx, &mut gateway, &mut api] {
        process.assert_running();
    }
}

/// Item 5 of issue 17: nginx's temporary files live on /tmp, a tmpfs charged to its memory
/// limit, so an upload it buffers whole costs nginx its size in memory until the upload ends (a
/// few stalled 25 MB uploads and it is killed). `/api/files` must stream: the upstream (a
/// recording server on the gateway's port) sees the first body bytes while the client is still
/// far from done, and the gateway, not nginx's /tmp, holds the size limit.
#[test]
fn uploads_stream_through_nginx_instead_of_filling_its_tmp() {
    let Some(nginx) = testkit::require_tool("nginx", "apt-get install nginx") else {
        return;
    };
    const TOTAL: usize = 4 * 1024 * 1024;
    const FIRST: usize = 256 * 1024;
    let dir = tempfile::tempdir().expect("temp dir");
    // The recording upstream's port is the one it is bound to: a port picked free and bound
    // later can be taken in between by a test running beside this one.
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    let mut ports = Ports::free();
    ports.gateway = listener.local_addr().expect("local address").port();
    let (upstream_saw, body_bytes_seen) = mpsc::channel::<(String, usize)>();
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let head = read_head(&mut reader);
        let mut buffer = vec![0u8; 64 * 1024];
        let mut received = 0;
        let mut reported = false;
        while received < TOTAL {
            match reader.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => received += n,
            }
            if !reported {
                reported = true;
                let _ = upstream_saw.send((head.clone(), received));
            }
        }
        let _ = (&stream).write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    });
    let rendered = render_nginx(dir.path(), &ports);
    let mut local_nginx = start_local_nginx(&nginx, &rendered);
    wait_for(&mut local_nginx, "nginx (local variant)", ports.local);

    let mut client = connect(ports.local);
    write!(
        client,
        "POST /api/files HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\nContent-Length: {TOTAL}\r\n\r\n"
    )
    .expect("head");
    client.write_all(&vec![b'x'; FIRST]).expect("first part");
    let (head, seen) = body_bytes_seen
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the upstream saw no byte of the upload while the client was still sending: nginx buffers it");
    assert!(head.starts_with("POST /api/files "), "{head}");
    assert!(
        seen <= FIRST,
        "{seen} bytes before the client sent more than {FIRST}"
    );
    client
        .write_all(&vec![b'x'; TOTAL - FIRST])
        .expect("the rest");
    let mut reader = BufReader::new(client);
    let answer = read_head(&mut reader);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    drop(local_nginx);
}
