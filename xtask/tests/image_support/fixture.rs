// A std-only HTTP server compiled by the tests with rustc (about a second), so image tests have
// a real dynamic binary before the services exist. `serve` answers every request with 200 and
// its uid; `healthcheck` exits 0 only on a 200 from 127.0.0.1:$PORT; `id` prints the uid.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

fn uid() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("Uid: ?");
    line.split_whitespace().nth(1).unwrap_or("?").to_owned()
}

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    match std::env::args().nth(1).as_deref() {
        Some("healthcheck") => {
            let ok = TcpStream::connect(format!("127.0.0.1:{port}")).ok().and_then(|mut s| {
                s.write_all(b"GET /health HTTP/1.0\r\n\r\n").ok()?;
                let mut answer = String::new();
                s.read_to_string(&mut answer).ok()?;
                Some(answer.starts_with("HTTP/1.0 200"))
            });
            std::process::exit(if ok == Some(true) { 0 } else { 1 });
        }
        Some("id") => println!("{}", uid()),
        _ => {
            let listener = TcpListener::bind(format!("127.0.0.1:{port}")).expect("bind");
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                let body = uid();
                let _ = write!(stream, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            }
        }
    }
}
