//! The one entry of every request: settle its request id, send the gateway's own routes
//! (`/api/health`, `/api/health/all`, `/metrics`) through the axum router and everything else
//! straight to the proxy, then stamp the id on the response and record it (`observe`).
//!
//! The proxy path skips the router on purpose: it is the hot path, and the router's boxed
//! middleware, handler and extractor layers cost more than the proxying itself on small
//! requests.
//!
//! It must never contain route logic of its own beyond that split.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse;
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use tower::ServiceExt;
use tracing::Instrument;

use crate::app::AppState;
use crate::client_body::ClientBody;
use crate::forwarding::{Peer, REQUEST_ID};
use crate::observe::{Observation, accept_or_generate};
use crate::proxy;
use crate::response_timer::ResponseTimer;
use crate::stream_limit::StreamPermit;
use crate::upstream::ReturningBody;

/// What the gateway keeps per client connection: who is at the other end, and the timer its
/// proxied requests re-arm (one request at a time on an HTTP/1 connection).
pub struct ClientConnection {
    pub peer: Peer,
    pub response_timer: ResponseTimer,
}

/// What every connection of every worker shares.
pub struct Gateway {
    pub state: Arc<AppState>,
    /// The gateway's own routes.
    pub own_routes: Router,
}

impl Gateway {
    pub async fn handle(
        &self,
        connection: &ClientConnection,
        request: http::Request<Incoming>,
    ) -> http::Response<ResponseBody> {
        let id = accept_or_generate(request.headers().get(&REQUEST_ID));
        let observation = Observation::start(&request);
        let span =
            tracing::info_span!("request", request_id = %String::from_utf8_lossy(id.as_bytes()));
        async move {
            let mut response = match observation.route() {
                "health" | "metrics" => {
                    let mut request = request.map(|body| Body::new(ClientBody::new(body)));
                    // Who asks decides how much `/api/health/all` tells (`health::is_internal`).
                    request.extensions_mut().insert(connection.peer.clone());
                    let routed = self.own_routes.clone().oneshot(request);
                    let response = routed.await.unwrap_or_else(|never| match never {});
                    response.map(ResponseBody::Own)
                }
                _ => match proxy::forward(&self.state, connection, &id, request).await {
                    Ok((response, None)) => response.map(ResponseBody::Proxied),
                    Ok((response, Some(permit))) => {
                        response.map(|body| ResponseBody::Counted(body, permit))
                    }
                    Err(refusal) => refusal.into_response().map(ResponseBody::Own),
                },
            };
            response.headers_mut().insert(REQUEST_ID, id);
            observation.finish(&response);
            response
        }
        .instrument(span)
        .await
    }
}

/// A response body: an upstream's, passed through as it is (no boxing on the hot path), the
/// same holding its caller's stream permit until it ends or is dropped (`/v1`), or one the
/// gateway wrote itself (its own routes and its errors).
pub enum ResponseBody {
    Proxied(ReturningBody),
    Counted(ReturningBody, StreamPermit),
    Own(Body),
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        match self.get_mut() {
            ResponseBody::Proxied(body) | ResponseBody::Counted(body, _) => {
                Pin::new(body).poll_frame(cx).map_err(Into::into)
            }
            ResponseBody::Own(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Proxied(body) | ResponseBody::Counted(body, _) => body.is_end_stream(),
            ResponseBody::Own(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Proxied(body) | ResponseBody::Counted(body, _) => body.size_hint(),
            ResponseBody::Own(body) => body.size_hint(),
        }
    }
}
