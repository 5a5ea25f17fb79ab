//! How long a client connection may take over a request head and sit idle between requests
//! (slowloris): a [`ConnectionClock`] follows the connection through its phases, fed by the
//! socket wrapper ([`ClockedIo`]: the first bytes of a head), the service (a head was parsed)
//! and the response body (it ended or was dropped), and gives the deadline of the phase it is
//! in. hyper's own `header_read_timeout` cannot do this: its timer also runs while a
//! keep-alive connection waits for its next request, so it is the idle timeout too.
//!
//! Phases: a new connection, and one whose next request has begun to arrive, is reading a head
//! (header timeout from its first byte, or from the accept); a connection with a request in
//! flight (including a long stream) has no deadline; one with none is idle (idle timeout from
//! the end of its last response). Bytes of a pipelined head that arrive while a request is in
//! flight count as idle time.
//!
//! It must never look inside requests or responses.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::config::ConnectionLimits;

/// Which timeout ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Header,
    Idle,
}

/// One connection's phase and when it began (nanoseconds since the accept). Atomics only so
/// that it can be shared with the connection's own task; every access is from that task.
pub struct ConnectionClock {
    accepted: Instant,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    in_flight: AtomicU32,
    reading_head: AtomicBool,
    since_nanos: AtomicU64,
}

impl ConnectionClock {
    pub fn new(limits: &ConnectionLimits) -> Self {
        ConnectionClock {
            accepted: Instant::now(),
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            in_flight: AtomicU32::new(0),
            reading_head: AtomicBool::new(true),
            since_nanos: AtomicU64::new(0),
        }
    }

    fn mark(&self) {
        let nanos = u64::try_from(self.accepted.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.since_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Bytes arrived: when nothing is in flight, a new head has begun.
    fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 && !self.reading_head.load(Ordering::Relaxed)
        {
            self.reading_head.store(true, Ordering::Relaxed);
            self.mark();
        }
    }

    /// A head was parsed and its request is being served.
    pub fn request_started(&self) {
        self.reading_head.store(false, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A response ended (or was dropped).
    pub fn response_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.mark();
        }
    }

    /// When the current phase runs out and which timeout that is; `None` while a request is in
    /// flight.
    pub fn deadline(&self) -> Option<(Instant, Expired)> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = self.accepted + Duration::from_nanos(self.since_nanos.load(Ordering::Relaxed));
        Some(if self.reading_head.load(Ordering::Relaxed) {
            (since + self.header_read_timeout, Expired::Header)
        } else {
            (since + self.idle_timeout, Expired::Idle)
        })
    }
}

/// The client socket, telling the clock when bytes arrive.
pub struct ClockedIo<T> {
    inner: T,
    clock: Arc<ConnectionClock>,
}

impl<T> ClockedIo<T> {
    pub fn new(inner: T, clock: Arc<ConnectionClock>) -> Self {
        ClockedIo { inner, clock }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ClockedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.clock.bytes_arrived();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ClockedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A response body that tells the clock when it is done: at its end, or when dropped.
pub struct ClockedBody<B> {
    inner: B,
    clock: Option<Arc<ConnectionClock>>,
}

impl<B> ClockedBody<B> {
    pub fn new(inner: B, clock: Arc<ConnectionClock>) -> Self {
        ClockedBody {
            inner,
            clock: Some(clock),
        }
    }

    fn finish(&mut self) {
        if let Some(clock) = self.clock.take() {
            clock.response_finished();
        }
    }
}

impl<B> Drop for ClockedBody<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for ClockedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            this.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            max_per_ip: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn phases_have_their_deadlines() {
        let clock = ConnectionClock::new(&limits());
        let start = clock.accepted;
        assert_eq!(
            clock.deadline(),
            Some((start + Duration::from_secs(1), Expired::Header)),
            "a new connection must send its head within the header timeout"
        );
        clock.request_started();
        assert_eq!(
            clock.deadline(),
            None,
            "a request in flight has no deadline"
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        clock.bytes_arrived();
        assert_eq!(clock.deadline(), None, "pipelined bytes during a request");
        clock.response_finished();
        let idle_from = start + Duration::from_secs(30);
        assert_eq!(
            clock.deadline(),
            Some((idle_from + Duration::from_secs(5), Expired::Idle))
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        clock.bytes_arrived();
        assert_eq!(
            clock.deadline(),
            Some((idle_from + Duration::from_secs(3), Expired::Header)),
            "the next head began to arrive"
        );
    }
}
