//! Keep-alive HTTP/1 connections to one upstream instance, kept per worker thread: a request
//! takes an idle connection of its own worker (or opens one), and the connection goes back
//! when the response body has been read to its end. Each connection is driven by a task on
//! the worker that opened it, so a proxied request never wakes another thread.
//!
//! This replaces hyper-util's pooled client on the proxy path: that client keys its pool by a
//! hashed (scheme, authority), builds a connect future per request and spawns a task per
//! request to return the connection; the gateway knows the instance already and each worker
//! runs on one thread, so a plain per-worker stack of idle connections does the job.
//!
//! It must never decide where a request goes or map failures to HTTP statuses (that is `proxy`).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::HeaderValue;
use http::uri::Authority;
use http_body_util::Limited;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::client_body::ClientBody;
use crate::pool::worker_slot;

/// What the gateway sends upstream: the client's body, bounded by the body limit.
pub type OutgoingBody = Limited<ClientBody>;

/// Idle connections kept per worker and instance; more are closed when they come back.
const MAX_IDLE_PER_WORKER: usize = 256;
/// An idle connection older than this is closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("tcp connect error: {0}")]
    Connect(std::io::Error),
    #[error("tcp connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error(transparent)]
    Exchange(hyper::Error),
}

struct IdleConnection {
    sender: SendRequest<OutgoingBody>,
    since: Instant,
}

type IdleStack = Arc<Mutex<Vec<IdleConnection>>>;

/// The connections of one instance: its address, its `Host` header, and one idle stack per
/// worker (plus one for every other thread).
pub struct Connections {
    authority: Authority,
    host: HeaderValue,
    connect_timeout: Duration,
    idle: Vec<IdleStack>,
}

impl Connections {
    pub fn new(authority: &Authority, connect_timeout: Duration, workers: usize) -> Self {
        Connections {
            host: HeaderValue::from_str(authority.as_str())
                .unwrap_or(HeaderValue::from_static("localhost")),
            authority: authority.clone(),
            connect_timeout,
            idle: (0..=workers).map(|_| IdleStack::default()).collect(),
        }
    }

    /// The instance's `host:port` as the `Host` its requests carry.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// Sends `request` (origin-form URI, `Host` set to `host()`) on an idle connection of this
    /// worker, or on a new one. The response's body hands the connection back when it has been
    /// read to the end.
    pub async fn send(
        &self,
        mut request: http::Request<OutgoingBody>,
    ) -> Result<http::Response<ReturningBody>, UpstreamError> {
        let stack = &self.idle[worker_slot().min(self.idle.len() - 1)];
        while let Some(mut sender) = take_idle(stack) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(returning(response, sender, stack)),
                Err(mut failed) => match failed.take_message() {
                    // The connection closed before the request went out: another one may do.
                    Some(unsent) => request = unsent,
                    None => return Err(UpstreamError::Exchange(failed.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(UpstreamError::Exchange)?;
        Ok(returning(response, sender, stack))
    }

    async fn connect(&self) -> Result<SendRequest<OutgoingBody>, UpstreamError> {
        let address = self.authority.as_str();
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(address)).await {
                Err(_) => return Err(UpstreamError::ConnectTimeout(self.connect_timeout)),
                Ok(Err(err)) => return Err(UpstreamError::Connect(err)),
                Ok(Ok(stream)) => stream,
            };
        // Small request/response exchanges: never let Nagle hold a request back.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Exchange)?;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!(error = %err, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// The newest idle connection that is still open and fresh; older stale ones are dropped.
fn take_idle(stack: &IdleStack) -> Option<SendRequest<OutgoingBody>> {
    let mut idle = stack
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    while let Some(connection) = idle.pop() {
        if !connection.sender.is_closed() && connection.since.elapsed() < IDLE_TIMEOUT {
            return Some(connection.sender);
        }
    }
    None
}

fn returning(
    response: http::Response<Incoming>,
    sender: SendRequest<OutgoingBody>,
    stack: &IdleStack,
) -> http::Response<ReturningBody> {
    // A switched protocol owns the connection from now on.
    let keep = response.status() != http::StatusCode::SWITCHING_PROTOCOLS;
    response.map(|inner| ReturningBody {
        inner,
        ended: false,
        checkin: keep.then(|| (sender, Arc::clone(stack))),
    })
}

/// An upstream response body that returns its connection to the idle stack when it is dropped
/// after being read to the end (an unfinished body closes the connection instead).
pub struct ReturningBody {
    inner: Incoming,
    ended: bool,
    checkin: Option<(SendRequest<OutgoingBody>, IdleStack)>,
}

impl Body for ReturningBody {
    type Data = hyper::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ReturningBody {
    fn drop(&mut self) {
        let Some((sender, stack)) = self.checkin.take() else {
            return;
        };
        if !(self.ended || self.inner.is_end_stream()) {
            return;
        }
        let mut idle = stack
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < MAX_IDLE_PER_WORKER {
            idle.push(IdleConnection {
                sender,
                since: Instant::now(),
            });
        }
    }
}
