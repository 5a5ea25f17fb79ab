//! Lingering close for a refused request body: when a service answers early while the client
//! may still be sending, it reads and drops what is left, within bounds (the api before its
//! 413; the gateway in the background while its answer goes out). Answering and closing with
//! unread data makes the kernel reset the connection, and the client then never sees the
//! answer (nginx's "lingering close" exists for the same reason). Past the bounds the
//! connection is simply closed.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Body, Buf};

/// How much of a refused body is read and thrown away at most.
pub const DISCARD_BYTES: usize = 64 * 1024 * 1024;
/// How long reading a refused body may take at most.
pub const DISCARD_TIME: Duration = Duration::from_secs(2);

/// Reads and drops what is left of `body`, within [`DISCARD_BYTES`] and [`DISCARD_TIME`].
pub async fn discard_rest<B>(body: B)
where
    B: Body + Unpin,
{
    let mut body = body;
    let drain = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, Buf::remaining);
            if seen > DISCARD_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
}
