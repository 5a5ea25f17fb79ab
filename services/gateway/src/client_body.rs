//! The client's request body as the gateway holds it. Whatever a request's path (forwarded,
//! refused early with 401/404/413/429/503, failed upstream, cut off at the body limit), a body
//! dropped before its end is read to the end and thrown away in the background, within
//! `lifecycle::linger`'s bounds, while the answer goes out. Closing a connection with unread
//! request data makes the kernel reset it, and the client then loses the answer it was sent
//! (nginx's lingering close exists for the same reason).
//!
//! It must never look at the data it passes on.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};

/// A request body that drains itself when dropped unfinished; `None` once it has ended.
pub struct ClientBody(Option<Incoming>);

impl ClientBody {
    pub fn new(inner: Incoming) -> Self {
        ClientBody(Some(inner))
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.0.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = polled {
            // Ended, or the client went away: nothing is left to drain.
            self.0 = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        let Some(rest) = self.0.take() else {
            return;
        };
        // Dropped off a runtime (at exit) there is nobody to answer anyway.
        if !rest.is_end_stream()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(lifecycle::linger::discard_rest(rest));
        }
    }
}
