//! `http-probe http://HOST:PORT/PATH`: the health check of images that have no shell, curl or
//! wget (the nginx image). One HTTP/1.0 GET with a 3 s deadline; exit 0 on a 2xx status, 1
//! otherwise, with the reason on stderr. Plain HTTP only: it probes a server in its own container.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: http-probe http://HOST:PORT/PATH");
        return ExitCode::from(2);
    };
    match probe(&url) {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("http-probe {url}: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// `http://host:port/path` as (host:port, path); the port defaults to 80, the path to `/`.
fn parse(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are probed")?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err("the URL names no host".into());
    }
    let address = match authority.rsplit_once(':') {
        Some(_) => authority.to_owned(),
        None => format!("{authority}:80"),
    };
    Ok((address, path.to_owned()))
}

fn probe(url: &str) -> Result<(), String> {
    let (address, path) = parse(url)?;
    let socket = address
        .to_socket_addrs()
        .map_err(|err| format!("resolving {address}: {err}"))?
        .next()
        .ok_or_else(|| format!("{address} resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&socket, TIMEOUT)
        .map_err(|err| format!("connecting to {socket}: {err}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|err| err.to_string())?;
    let host = address.rsplit_once(':').map(|(h, _)| h).unwrap_or(&address);
    // One write: a server may answer (and close) as soon as it has read the request line.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: http-probe\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|err| format!("sending the request: {err}"))?;
    let mut head = [0u8; 64];
    let read = stream
        .read(&mut head)
        .map_err(|err| format!("reading the answer: {err}"))?;
    let status = status_code(&head[..read]).ok_or("the answer is not HTTP")?;
    match status {
        200..=299 => Ok(()),
        other => Err(format!("status {other}")),
    }
}

/// The status code of an HTTP status line.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head).ok()?.lines().next()?;
    let mut words = line.split_whitespace();
    words.next().filter(|v| v.starts_with("HTTP/"))?;
    words.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_status_lines() {
        assert_eq!(
            parse("http://127.0.0.1:8080/nginx-health"),
            Ok(("127.0.0.1:8080".into(), "/nginx-health".into()))
        );
        assert_eq!(
            parse("http://localhost"),
            Ok(("localhost:80".into(), "/".into()))
        );
        assert!(parse("https://x/").is_err());
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_code(b"SSH-2.0"), None);
    }

    #[test]
    fn a_real_server_is_probed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let server = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.1 200 OK\r\n\r\nok",
                "HTTP/1.1 503 Unavailable\r\n\r\n",
            ] {
                let (mut stream, _) = listener.accept().expect("accept");
                let mut request = Vec::new();
                let mut buffer = [0u8; 512];
                while !request.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                }
                stream.write_all(answer.as_bytes()).expect("answer");
            }
        });
        let url = format!("http://127.0.0.1:{port}/nginx-health");
        assert_eq!(probe(&url), Ok(()));
        assert_eq!(probe(&url), Err("status 503".into()));
        server.join().expect("server");
    }
}
