//! The one entry of every request: settle its request id, send the gateway's own routes
//! (`/api/health`, `/api/health/all`, `/metrics`) through the axum router and everything else
//! straight to the proxy, then stamp the id on the response and record it (`observe`).
//!
//! The proxy path skips the router on purpose: it is the hot path, and the router's boxed
//! middleware, handler and extractor layers cost more than the proxying itself on small
//! requests.
//!
//! It must never contain route logic of its own beyond that split.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use tower::ServiceExt;
use tracing::Instrument;

use crate::app::AppState;
use crate::forwarding::{Peer, REQUEST_ID};
use crate::observe::{Observation, accept_or_generate};
use crate::proxy;

/// What every connection of every worker shares.
pub struct Gateway {
    pub state: Arc<AppState>,
    /// The gateway's own routes.
    pub own_routes: Router,
}

impl Gateway {
    pub async fn handle(&self, peer: &Peer, request: http::Request<Incoming>) -> Response {
        let id = accept_or_generate(request.headers().get(&REQUEST_ID));
        let observation = Observation::start(&request);
        let span =
            tracing::info_span!("request", request_id = %String::from_utf8_lossy(id.as_bytes()));
        async move {
            let mut response = match observation.route() {
                "health" | "metrics" => {
                    let routed = self.own_routes.clone().oneshot(request.map(Body::new));
                    routed.await.unwrap_or_else(|never| match never {})
                }
                _ => proxy::forward(&self.state, peer, &id, request)
                    .await
                    .unwrap_or_else(IntoResponse::into_response),
            };
            response.headers_mut().insert(REQUEST_ID, id);
            observation.finish(&response);
            response
        }
        .instrument(span)
        .await
    }
}
