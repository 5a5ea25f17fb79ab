//! The `healthcheck` subcommand every service binary has. Images carry no curl or wget, so a
//! compose or Docker health check runs `SERVICE healthcheck`, which GETs the running service's
//! health route over loopback and exits 0 only on a 2xx answer within the timeout.

use std::process::ExitCode;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Where and how long to ask.
#[derive(Debug, Clone)]
pub struct Probe {
    /// `host:port` of the running service, usually `127.0.0.1:PORT`.
    pub address: String,
    /// The health route, e.g. `/api/health`.
    pub path: String,
    pub timeout: Duration,
}

/// Why a probe failed, worded for the health check's log.
#[derive(Debug)]
pub struct ProbeFailure(pub String);

impl std::fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Probe {
    /// Asks once; `Ok(status)` for a 2xx answer.
    pub async fn ask(&self) -> Result<u16, ProbeFailure> {
        tokio::time::timeout(self.timeout, self.ask_unbounded())
            .await
            .map_err(|_| {
                ProbeFailure(format!(
                    "no answer from http://{}{} within {:?}",
                    self.address, self.path, self.timeout
                ))
            })?
    }

    async fn ask_unbounded(&self) -> Result<u16, ProbeFailure> {
        let url = format!("http://{}{}", self.address, self.path);
        let fail =
            |what: &str, err: &dyn std::fmt::Display| ProbeFailure(format!("{what} {url}: {err}"));
        let stream = tokio::net::TcpStream::connect(&self.address)
            .await
            .map_err(|e| fail("connecting to", &e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail("handshake with", &e))?;
        tokio::spawn(connection);
        let request = hyper::Request::get(self.path.as_str())
            .header(hyper::header::HOST, self.address.as_str())
            .header(hyper::header::USER_AGENT, "cairn-healthcheck")
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail("building a request for", &e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| fail("requesting", &e))?;
        let status = response.status();
        if status.is_success() {
            Ok(status.as_u16())
        } else {
            Err(ProbeFailure(format!("{url} answered {status}")))
        }
    }

    /// Runs the probe on a small runtime of its own and turns the answer into the process's
    /// exit code, printing one line either way. Meant to be the whole body of the subcommand.
    pub fn run(&self) -> ExitCode {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => {
                eprintln!("healthcheck: cannot start a runtime: {err}");
                return ExitCode::FAILURE;
            }
        };
        match runtime.block_on(self.ask()) {
            Ok(status) => {
                println!(
                    "healthy: http://{}{} answered {status}",
                    self.address, self.path
                );
                ExitCode::SUCCESS
            }
            Err(failure) => {
                eprintln!("unhealthy: {failure}");
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn one_shot_server(reply: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            if let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(reply.as_bytes()).await;
            }
        });
        address
    }

    fn probe(address: String) -> Probe {
        Probe {
            address,
            path: "/health".into(),
            timeout: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn success_is_ok() {
        let address = one_shot_server("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        assert_eq!(probe(address).ask().await.expect("healthy"), 200);
    }

    #[tokio::test]
    async fn server_error_is_unhealthy() {
        let address =
            one_shot_server("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
        let failure = probe(address).ask().await.expect_err("unhealthy");
        assert!(failure.0.contains("503"), "{failure}");
    }

    #[tokio::test]
    async fn refused_connection_names_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let failure = probe(address.clone()).ask().await.expect_err("unhealthy");
        assert!(failure.0.contains(&address), "{failure}");
    }
}
