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

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};
use testkit::ProcessGuard;

/// How long any one step may take: a process to listen, an event to arrive.
const DEADLINE: Duration = Duration::from_secs(30);
/// Shared by the api (which signs tokens) and the gateway (which checks them on `/v1`).
const JWT_SECRET: &str = "edge-test-secret-edge-test-secret-0123";
/// The API key the gateway accepts on `/v1`.
const API_KEY: &str = "edge-test-key";
/// What the scripted LLM answers, one delta per event.
const DELTAS: [&str; 3] = ["one ", "two ", "three"];
/// RFC 6455's example key and the accept value it derives (section 1.3).
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// The site's server name in the default topology (and the test certificate's).
const SERVER_NAME: &str = "cairn.example.com";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

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

/// The loopback ports of one run.
struct Ports {
    /// nginx's local variant.
    local: u16,
    /// nginx's TLS variant: the redirecting HTTP server and the HTTPS one.
    http: u16,
    https: u16,
    gateway: u16,
    api: u16,
}

impl Ports {
    fn free() -> Ports {
        Ports {
            local: testkit::free_port(),
            http: testkit::free_port(),
            https: testkit::free_port(),
            gateway: testkit::free_port(),
            api: testkit::free_port(),
        }
    }
}

/// Renders the default topology, its nginx ports and the gateway's port moved to `ports`,
/// through `cargo xtask render`; returns the server-a nginx folder.
fn render_nginx(dir: &Path, ports: &Ports) -> PathBuf {
    let root = workspace_root();
    let deploy = dir.join("deploy");
    std::fs::create_dir_all(deploy.join("files")).expect("deploy folder");
    let mut topology =
        std::fs::read_to_string(root.join("deploy/topology.toml")).expect("deploy/topology.toml");
    for (line, moved) in [
        (
            "\nlocal_port = 8088\n",
            format!("\nlocal_port = {}\n", ports.local),
        ),
        (
            "\nlocal_upstream = \"127.0.0.1:8080\"\n",
            format!("\nlocal_upstream = \"127.0.0.1:{}\"\n", ports.gateway),
        ),
        (
            "\nhttp_port = 8080\n",
            format!("\nhttp_port = {}\n", ports.http),
        ),
        (
            "\nhttps_port = 8443\n",
            format!("\nhttps_port = {}\n", ports.https),
        ),
        // The gateway service's port: the TLS variant's upstream is `gateway:PORT`.
        ("\nport = 8080\n", format!("\nport = {}\n", ports.gateway)),
    ] {
        assert_eq!(
            topology.matches(line).count(),
            1,
            "deploy/topology.toml: {line:?} moved"
        );
        topology = topology.replace(line, &moved);
    }
    std::fs::write(deploy.join("topology.toml"), topology).expect("write topology");
    for entry in std::fs::read_dir(root.join("deploy/files")).expect("deploy/files") {
        let path = entry.expect("entry").path();
        std::fs::copy(
            &path,
            deploy.join("files").join(path.file_name().expect("name")),
        )
        .expect("copy a server file");
    }
    let rendered = dir.join("rendered");
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("render")
        .arg("--topology")
        .arg(deploy.join("topology.toml"))
        .arg("--out")
        .arg(&rendered)
        .output()
        .expect("run xtask render");
    assert!(
        output.status.success(),
        "xtask render: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    rendered.join("server-a/nginx")
}

fn start_local_nginx(nginx: &Path, prefix: &Path) -> ProcessGuard {
    ProcessGuard::spawn(
        "nginx (local variant)",
        Command::new(nginx)
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(prefix.join("nginx-local.conf"))
            // One process: the guard's kill then leaves no orphaned worker behind.
            .args(["-e", "stderr", "-g", "daemon off; master_process off;"])
            .stdout(Stdio::null()),
    )
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

/// An HTTP head on `reader`, up to the blank line ("" when the connection closed first).
fn read_head(reader: &mut impl BufRead) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            return head;
        }
        head.push_str(&line);
    }
}

/// The value of header `name` (any case) in an HTTP head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(key, _)| key.trim().eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim())
}

fn content_length(head: &str) -> usize {
    header(head, "content-length")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

fn write_chunk(stream: &mut TcpStream, text: &str) -> std::io::Result<()> {
    write!(stream, "{:x}\r\n{text}\r\n", text.len())?;
    stream.flush()
}

fn completion_chunk(delta: Value, finish_reason: Option<&str>) -> String {
    let chunk = json!({
        "id": "chatcmpl-edge",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "scripted",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
    });
    format!("data: {chunk}\n\n")
}

/// An OpenAI-compatible `POST /v1/chat/completions` that streams [`DELTAS`] in OpenAI's wire
/// format, each delta after the first only when `client_saw` says the test client received the
/// previous one. Sends each request body it gets on `requests`.
fn start_scripted_llm(client_saw: mpsc::Receiver<()>, requests: mpsc::Sender<Value>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the LLM");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let _ = answer_completion(stream, &client_saw, &requests);
        }
    });
    port
}

fn answer_completion(
    mut stream: TcpStream,
    client_saw: &mpsc::Receiver<()>,
    requests: &mpsc::Sender<Value>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let head = read_head(&mut reader);
    let mut body = vec![0_u8; content_length(&head)];
    reader.read_exact(&mut body)?;
    if !head.starts_with("POST /v1/chat/completions ") {
        return stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    let _ = requests.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")?;
    write_chunk(
        &mut stream,
        &completion_chunk(json!({"role": "assistant", "content": ""}), None),
    )?;
    for (index, delta) in DELTAS.iter().enumerate() {
        if index > 0 && client_saw.recv_timeout(DEADLINE).is_err() {
            // The client never saw the previous event: leave the stream hanging, the test fails.
            return Ok(());
        }
        write_chunk(
            &mut stream,
            &completion_chunk(json!({"content": delta}), None),
        )?;
    }
    write_chunk(&mut stream, &completion_chunk(json!({}), Some("stop")))?;
    let usage = json!({
        "id": "chatcmpl-edge", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "scripted", "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
    });
    write_chunk(&mut stream, &format!("data: {usage}\n\n"))?;
    write_chunk(&mut stream, "data: [DONE]\n\n")?;
    stream.write_all(b"0\r\n\r\n")
}

/// A WebSocket echo server: `GET /health` answers 200 (the gateway probes its pool), an upgrade
/// gets 101, a greeting frame, then every frame it receives echoed back. Sends each upgrade
/// request's head on `heads`.
fn start_websocket_echo(heads: mpsc::Sender<String>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo server");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let heads = heads.clone();
            std::thread::spawn(move || {
                let _ = serve_websocket(stream, &heads);
            });
        }
    });
    port
}

fn serve_websocket(mut stream: TcpStream, heads: &mpsc::Sender<String>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let head = read_head(&mut reader);
    if head.starts_with("GET /health ") {
        return stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    }
    if !head.to_ascii_lowercase().contains("upgrade: websocket") {
        return stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    let _ = heads.send(head);
    write!(
        stream,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\n\r\n"
    )?;
    stream.write_all(&frame(b"hello from the upstream", None))?;
    loop {
        let payload = read_frame(&mut reader)?;
        stream.write_all(&frame(&payload, None))?;
    }
}

/// One final text frame; a client's frames are masked (RFC 6455 section 5.3).
fn frame(payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    assert!(payload.len() < 126, "short frames only");
    let mut bytes = vec![0x81];
    let length = payload.len() as u8;
    match mask {
        Some(key) => {
            bytes.push(0x80 | length);
            bytes.extend_from_slice(&key);
            bytes.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
        }
        None => {
            bytes.push(length);
            bytes.extend_from_slice(payload);
        }
    }
    bytes
}

/// Reads one short frame and returns its payload, unmasked.
fn read_frame(reader: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut head = [0_u8; 2];
    reader.read_exact(&mut head)?;
    assert_eq!(head[0], 0x81, "a final text frame");
    let length = usize::from(head[1] & 0x7f);
    assert!(length < 126, "short frames only");
    let mut key = [0_u8; 4];
    if head[1] & 0x80 != 0 {
        reader.read_exact(&mut key)?;
    }
    let mut payload = vec![0_u8; length];
    reader.read_exact(&mut payload)?;
    for (byte, k) in payload.iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
    Ok(payload)
}

/// A folder laid out like the nginx container's `/etc/nginx`: the rendered server-a folder,
/// Debian's mime.types (the image's own) and a self-signed certificate for `SERVER_NAME` in
/// `certs/`, as the compose file mounts them. Returns the certificate's path.
fn container_etc_nginx(openssl: &Path, rendered: &Path, etc: &Path) -> PathBuf {
    let status = Command::new("cp")
        .arg("-a")
        .arg(rendered)
        .arg(etc)
        .status()
        .expect("cp");
    assert!(status.success(), "copying {}", rendered.display());
    std::fs::copy("/etc/nginx/mime.types", etc.join("mime.types")).expect("mime.types");
    let certs = etc.join("certs");
    std::fs::create_dir_all(&certs).expect("certs");
    let status = Command::new(openssl)
        .args(["req", "-x509", "-nodes", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-days", "1"])
        .args(["-subj", &format!("/CN={SERVER_NAME}")])
        .args(["-addext", &format!("subjectAltName=DNS:{SERVER_NAME}")])
        .arg("-keyout")
        .arg(certs.join("privkey.pem"))
        .arg("-out")
        .arg(certs.join("fullchain.pem"))
        .stderr(Stdio::null())
        .status()
        .expect("run openssl req");
    assert!(status.success(), "openssl req");
    certs.join("fullchain.pem")
}

/// The shipped TLS `nginx.conf` in a private mount namespace: `etc` over /etc/nginx, a hosts
/// file naming `gateway` over /etc/hosts, a fresh tmpfs over /tmp (its pid and temp paths). The
/// network namespace is the host's, so it listens on loopback next to the gateway.
fn start_tls_nginx(nginx: &Path, unshare: &Path, etc: &Path, dir: &Path) -> ProcessGuard {
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost gateway\n").expect("hosts");
    let script = format!(
        "set -e
mount --bind {hosts} /etc/hosts
mount --bind {etc} /etc/nginx
mount -t tmpfs tmpfs /tmp
exec {nginx} -e stderr -p /etc/nginx/ -c /etc/nginx/nginx.conf -g 'daemon off; master_process off;'",
        hosts = hosts.display(),
        etc = etc.display(),
        nginx = nginx.display(),
    );
    ProcessGuard::spawn(
        "nginx (TLS variant)",
        Command::new(unshare)
            .args(["-m", "sh", "-c", &script])
            .stdout(Stdio::null()),
    )
}

/// A TLS connection to nginx through `openssl s_client` (HTTP/1.1 by ALPN, TLS 1.3, the
/// certificate checked against `ca` and `SERVER_NAME`): the returned socket carries the
/// plaintext both ways.
fn tls_connection(openssl: &Path, port: u16, ca: &Path) -> (UnixStream, ProcessGuard) {
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    let stdin = theirs.try_clone().expect("clone");
    let client = ProcessGuard::spawn(
        "openssl s_client",
        Command::new(openssl)
            .args([
                "s_client",
                "-quiet",
                "-nocommands",
                "-tls1_3",
                "-alpn",
                "http/1.1",
            ])
            .args(["-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", SERVER_NAME, "-verify_hostname", SERVER_NAME])
            .arg("-CAfile")
            .arg(ca)
            .arg("-verify_return_error")
            .stdin(Stdio::from(OwnedFd::from(stdin)))
            .stdout(Stdio::from(OwnedFd::from(theirs))),
    );
    ours.set_read_timeout(Some(DEADLINE)).expect("timeout");
    (ours, client)
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
    if !testkit::is_root() {
        assert!(
            !testkit::in_ci(),
            "the TLS variant needs root (mount namespace) under CI"
        );
        eprintln!("SKIPPED: the TLS variant needs root for its mount namespace");
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
