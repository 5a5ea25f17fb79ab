//! Asking a process whether it is ready: one `Health` check, answered within a short timeout.
//! Used by the supervisor (health gating) and by `cargo xtask dev status`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::plan::Health;

/// How long one probe may take before it counts as "not ready".
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// True when the check passes now.
pub async fn is_healthy(health: &Health) -> bool {
    match health {
        Health::Postgres { port } => {
            let port = *port;
            tokio::task::spawn_blocking(move || testkit::postgres::is_ready(port))
                .await
                .unwrap_or(false)
        }
        Health::Http { port, path } => tokio::time::timeout(PROBE_TIMEOUT, http_ok(*port, path))
            .await
            .unwrap_or(false),
        Health::Tcp(port) => {
            tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(("127.0.0.1", *port)))
                .await
                .is_ok_and(|connected| connected.is_ok())
        }
    }
}

/// `GET path` over HTTP/1.1 on 127.0.0.1:port answered with a 2xx status.
async fn http_ok(port: u16, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    if stream.read_exact(&mut head).await.is_err() {
        return false;
    }
    is_success_status_line(&head)
}

/// `HTTP/1.x 2..` at the start of a response.
fn is_success_status_line(head: &[u8]) -> bool {
    head.starts_with(b"HTTP/1.") && head.get(9) == Some(&b'2')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_2xx_is_healthy() {
        assert!(is_success_status_line(b"HTTP/1.1 200 OK"));
        assert!(is_success_status_line(b"HTTP/1.0 204 No"));
        assert!(!is_success_status_line(b"HTTP/1.1 503 Se"));
        assert!(!is_success_status_line(b"SSH-2.0-OpenSS"));
    }
}
