//! A real nginx, started on loopback with the rendered local variant, in front of a real HTTP/1.1
//! upstream written here (the gateway and api land later on main): server-sent events arrive one
//! by one (the second is sent only after the client has seen the first, so buffering anywhere
//! would stall the test), responses are never gzipped, and a WebSocket upgrade is tunnelled.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::{ImagePins, Rendering, read_pieces, render};
use crate::project;
use crate::topology;

const DEADLINE: Duration = Duration::from_secs(10);

/// The default topology with the local variant on `listen`, in front of `upstream`.
fn rendering(listen: u16, upstream: u16) -> Rendering {
    let path = project::root().join(topology::DEFAULT_PATH);
    let text = std::fs::read_to_string(&path)
        .expect("topology")
        .replace("local_port = 8088", &format!("local_port = {listen}"))
        .replace(
            "local_upstream = \"127.0.0.1:8080\"",
            &format!("local_upstream = \"127.0.0.1:{upstream}\""),
        );
    let topology = topology::parse("test topology", &text).expect("topology");
    let pieces = read_pieces(&project::root(), &path).expect("pieces");
    render(
        &topology,
        "test",
        &ImagePins::placeholders(&topology),
        &pieces,
    )
    .expect("render")
}

fn start_nginx(nginx: &Path, prefix: &Path, rendering: &Rendering) -> testkit::ProcessGuard {
    for (relative, text) in &rendering.files {
        if let Ok(inside) = relative.strip_prefix("server-a/nginx") {
            let path = prefix.join(inside);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
    }
    testkit::ProcessGuard::spawn(
        "nginx",
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

/// Reads the request head of one upstream connection and returns it.
fn request_head(reader: &mut BufReader<TcpStream>) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            return head;
        }
        head.push_str(&line);
    }
}

fn chunk(stream: &mut TcpStream, text: &str) {
    write!(stream, "{:x}\r\n{text}\r\n", text.len()).expect("chunk");
    stream.flush().expect("flush");
}

/// Reads from `stream` until the accumulated text contains `needle` (or the read times out).
fn read_until(stream: &mut TcpStream, seen: &mut String, needle: &str) {
    let mut buffer = [0_u8; 4096];
    while !seen.contains(needle) {
        let n = stream
            .read(&mut buffer)
            .unwrap_or_else(|err| panic!("waiting for {needle:?}: {err}; got so far: {seen}"));
        assert!(n > 0, "closed before {needle:?}; got: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
}

fn client(port: u16, request: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream.write_all(request.as_bytes()).expect("request");
    stream
}

#[test]
fn server_sent_events_stream_one_by_one_and_websockets_tunnel() {
    let Some(nginx) = testkit::require_tool("nginx", "apt-get install nginx") else {
        return;
    };
    let upstream = TcpListener::bind("127.0.0.1:0").expect("upstream");
    let upstream_port = upstream.local_addr().expect("address").port();
    let listen = testkit::free_port();
    let prefix = tempfile::tempdir().expect("prefix");
    let mut nginx_process = start_nginx(&nginx, prefix.path(), &rendering(listen, upstream_port));
    testkit::wait_for_port("nginx", listen, DEADLINE);
    nginx_process.assert_running();

    let (client_saw_first, first_seen) = mpsc::channel::<()>();
    let (heads_sender, heads) = mpsc::channel::<String>();
    // nginx keeps upstream connections alive, so one connection may carry both requests.
    std::thread::spawn(move || {
        for stream in upstream.incoming() {
            let Ok(stream) = stream else { return };
            serve(stream, &heads_sender, &first_seen);
        }
    });

    let mut events = client(
        listen,
        "GET /api/chat HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\nAccept-Encoding: gzip\r\n\r\n",
    );
    let mut seen = String::new();
    read_until(&mut events, &mut seen, "data: first");
    assert!(!seen.contains("data: second"));
    assert!(
        !seen.to_ascii_lowercase().contains("content-encoding"),
        "{seen}"
    );
    assert!(seen.contains("X-Content-Type-Options: nosniff"), "{seen}");
    client_saw_first.send(()).expect("signal");
    read_until(&mut events, &mut seen, "data: second");
    let head = heads.recv_timeout(DEADLINE).expect("upstream head");
    assert!(head.starts_with("GET /api/chat HTTP/1.1"), "{head}");
    assert!(head.contains("X-Request-Id: "), "{head}");

    let mut socket = client(
        listen,
        "GET /api/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    let mut answer = String::new();
    read_until(&mut socket, &mut answer, "\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    let head = heads.recv_timeout(DEADLINE).expect("upstream head");
    assert!(head.contains("Upgrade: websocket"), "{head}");
    assert!(head.contains("Connection: upgrade"), "{head}");
    socket.write_all(b"ping").expect("ping");
    let mut echo = [0_u8; 4];
    socket.read_exact(&mut echo).expect("echo");
    assert_eq!(&echo, b"ping");
}

/// The upstream: `/api/chat` answers two events, the second only after the client saw the
/// first; an upgrade request gets 101 and its tunnelled bytes echoed.
fn serve(stream: TcpStream, heads: &mpsc::Sender<String>, first_seen: &mpsc::Receiver<()>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut stream = stream;
    loop {
        let head = request_head(&mut reader);
        if head.is_empty() {
            return;
        }
        let _ = heads.send(head.clone());
        if head.contains("Upgrade: websocket") {
            stream
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                .expect("101");
            let mut ping = [0_u8; 4];
            reader.read_exact(&mut ping).expect("tunnelled bytes");
            stream.write_all(&ping).expect("echo");
            return;
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
            .expect("head");
        chunk(&mut stream, "data: first\n\n");
        first_seen
            .recv_timeout(DEADLINE)
            .expect("client never saw the first event");
        chunk(&mut stream, "data: second\n\n");
        stream.write_all(b"0\r\n\r\n").expect("end");
    }
}
