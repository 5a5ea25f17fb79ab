//! The upstreams the edge test scripts, on std threads and raw HTTP/1.1: an OpenAI-compatible
//! `POST /v1/chat/completions` that streams [`DELTAS`] one at a time on the test's cue, and a
//! WebSocket echo server. Both speak the wire formats exactly (OpenAI's chunk objects and
//! `[DONE]`; RFC 6455 frames), so the real api and gateway in front of them cannot tell.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;

use serde_json::{Value, json};

use super::DEADLINE;

/// What the scripted LLM answers, one delta per event.
pub const DELTAS: [&str; 3] = ["one ", "two ", "three"];
/// RFC 6455's example key and the accept value it derives (section 1.3).
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// An HTTP head on `reader`, up to the blank line ("" when the connection closed first).
pub fn read_head(reader: &mut impl BufRead) -> String {
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
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
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
pub fn start_scripted_llm(client_saw: mpsc::Receiver<()>, requests: mpsc::Sender<Value>) -> u16 {
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
pub fn start_websocket_echo(heads: mpsc::Sender<String>) -> u16 {
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
pub fn frame(payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
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
pub fn read_frame(reader: &mut impl Read) -> std::io::Result<Vec<u8>> {
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
