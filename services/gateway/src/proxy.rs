//! Forwarding: `/api/*` to the api pool and `/v1/*` to the inference pool, paths unchanged,
//! bodies streamed both ways (never collected, so SSE events pass as they come), WebSocket
//! upgrades tunnelled. Before a request leaves: rate limits, `/v1` edge auth, the body limit.
//! On `/v1` the caller's `Authorization` stays here and the pool's upstream key, if any, is sent
//! instead; an upstream 401 there is the gateway's key failing, a 502 of the gateway's own.
//! Connect errors eject the instance (passive health); failures map to 502/503/504.
//!
//! It must never parse configuration or render errors itself (that is `error`).

use std::sync::Arc;

use http::header::{AUTHORIZATION, CONTENT_LENGTH, HeaderValue};
use http::{StatusCode, Uri};
use http_body_util::{LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::Instrument;

use crate::app::AppState;
use crate::client_body::ClientBody;
use crate::dispatch::ClientConnection;
use crate::error::{GatewayError, chain_has, describe};
use crate::forwarding::{self, Forwarding, USER_HEADER};
use crate::pool::{Instance, Pool, Service};
use crate::rate_limit::RateKey;
use crate::response_timer::ResponseTimer;
use crate::stream_limit::StreamPermit;
use crate::upstream::{OutgoingBody, ReturningBody, UpstreamError};

/// The service a path belongs to; `None` is a 404.
pub fn route(path: &str) -> Option<Service> {
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    if under("/api") {
        Some(Service::Api)
    } else if under("/v1") {
        Some(Service::Inference)
    } else {
        None
    }
}

/// Forwards everything that is not the gateway's own route; `request_id` is the one `observe`
/// settled on. A `/v1` response comes with the caller's stream permit, to be dropped with its
/// body.
pub async fn forward(
    state: &AppState,
    connection: &ClientConnection,
    request_id: &HeaderValue,
    request: http::Request<Incoming>,
) -> Result<(http::Response<ReturningBody>, Option<StreamPermit>), GatewayError> {
    let (mut head, body) = request.into_parts();
    // From here on, a body that is not forwarded to its end drains itself (`client_body`).
    let body = ClientBody::new(body);
    let path = head.uri.path();
    let service = route(path).ok_or_else(|| GatewayError::NotFound(path.to_owned()))?;
    let peer = &connection.peer;
    let client = forwarding::client_ip(peer, &head.headers, &state.trusted_proxies);
    // `/v1` is limited per authenticated caller (one api serves every user from one address);
    // the rest, and failed `/v1` authentication, per client address.
    let caller = match service {
        Service::Inference => match state.verifier.identify(&head.headers) {
            Ok(caller) => Some(caller.header_value()),
            Err(refusal) => {
                check_rate(state, &RateKey::address(client), path)?;
                return Err(refusal);
            }
        },
        Service::Api => None,
    };
    let rate_key = match &caller {
        Some(caller) => RateKey::Caller(Arc::from(caller.as_str())),
        None => RateKey::address(client),
    };
    check_rate(state, &rate_key, path)?;
    let permit = match &caller {
        Some(caller) => state
            .streams
            .acquire(caller)
            .map_err(|busy| GatewayError::TooManyStreams { limit: busy.limit })?,
        None => None,
    };
    if declared_length(&head.headers).is_some_and(|length| length > state.max_body_bytes) {
        // Refused before a byte goes upstream.
        return Err(GatewayError::PayloadTooLarge {
            limit: state.max_body_bytes,
        });
    }
    let pool = state.pool(service);
    let instance = pool.pick().ok_or(GatewayError::NoHealthyUpstream {
        service: service.name(),
    })?;
    let forwarding = Forwarding {
        peer,
        client,
        request_id: request_id.clone(),
        upgrade: forwarding::requested_upgrade(&head.headers),
        upstream_host: instance.connections.host().clone(),
    };
    // What `hyper::upgrade::on` takes from a request, taken from its head.
    let client_upgrade = forwarding
        .upgrade
        .is_some()
        .then(|| head.extensions.remove::<OnUpgrade>())
        .flatten();
    let mut outgoing = upstream_request(head, body, &forwarding, state.max_body_bytes);
    let authenticated_here = caller.is_some();
    if let Some(caller) = caller {
        // The credential stays at the edge; inference learns who called from x-cairn-user.
        outgoing.headers_mut().remove(AUTHORIZATION);
        if let Ok(value) = HeaderValue::from_str(&caller) {
            outgoing.headers_mut().insert(USER_HEADER, value);
        }
    }
    if let Some(authorization) = &pool.upstream_authorization {
        // The gateway's own credential (server A to server B), never the client's.
        outgoing
            .headers_mut()
            .insert(AUTHORIZATION, authorization.clone());
    }
    let timer = &connection.response_timer;
    let mut response = send(pool, instance, timer, outgoing, state.max_body_bytes).await?;
    if authenticated_here && response.status() == StatusCode::UNAUTHORIZED {
        // The caller's credential was good and never left: the upstream refused the gateway's.
        // Its 401 would tell the caller otherwise, so it is answered here and its body dropped.
        let (service, upstream) = (pool.service.name(), instance.upstream.url());
        tracing::warn!(
            service,
            upstream,
            "upstream answered 401 to the gateway: GATEWAY_INFERENCE_UPSTREAM_KEY must be inference's INFERENCE_API_KEY"
        );
        return Err(GatewayError::UpstreamUnauthorized { service, upstream });
    }
    let (upgrade, permit) = match client_upgrade {
        Some(client_side) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
            // A tunnel holds the caller's slot for as long as it is open.
            tunnel(client_side, hyper::upgrade::on(&mut response), permit);
            (forwarding.upgrade, None)
        }
        _ => (None, permit),
    };
    forwarding::client_response_headers(response.headers_mut(), request_id, upgrade);
    Ok((response, permit))
}

fn check_rate(state: &AppState, key: &RateKey, path: &str) -> Result<(), GatewayError> {
    state.rate_limits.check(key, path).map_err(|refusal| {
        metrics::counter!("gateway_rate_limited_total", "bucket" => refusal.bucket.name())
            .increment(1);
        GatewayError::RateLimited {
            bucket: refusal.bucket.name(),
            retry_after: refusal.retry_after,
        }
    })
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The client's request rewritten for the upstream: origin-form URI (the connection already
/// names the instance), HTTP/1.1, forwarding headers, the body bounded by the body limit.
fn upstream_request(
    mut parts: http::request::Parts,
    body: ClientBody,
    forwarding: &Forwarding,
    max_body_bytes: u64,
) -> http::Request<OutgoingBody> {
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        // An absolute-form request line (`GET http://host/path`): forward only its path.
        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        parts.uri = Uri::try_from(path_and_query).unwrap_or_else(|_| Uri::from_static("/"));
    }
    parts.version = http::Version::HTTP_11;
    parts.extensions = http::Extensions::new();
    forwarding::upstream_request_headers(&mut parts.headers, forwarding);
    let limit = usize::try_from(max_body_bytes).unwrap_or(usize::MAX);
    http::Request::from_parts(parts, Limited::new(body, limit))
}

async fn send(
    pool: &Pool,
    instance: &Instance,
    timer: &ResponseTimer,
    outgoing: http::Request<OutgoingBody>,
    max_body_bytes: u64,
) -> Result<http::Response<ReturningBody>, GatewayError> {
    let service = pool.service.name();
    let upstream = || instance.upstream.url();
    let timeout = pool.response_timeout;
    let result = timer
        .limit(timeout, instance.connections.send(outgoing))
        .await;
    let err = match result {
        Ok(Ok(response)) => return Ok(response),
        Ok(Err(err)) => err,
        Err(_) => {
            tracing::warn!(
                service,
                upstream = upstream(),
                ?timeout,
                "upstream response timed out"
            );
            return Err(GatewayError::UpstreamTimeout {
                service,
                upstream: upstream(),
                timeout,
            });
        }
    };
    let detail = describe(&err);
    match err {
        UpstreamError::Exchange(err) if chain_has::<LengthLimitError>(&err) => {
            Err(GatewayError::PayloadTooLarge {
                limit: max_body_bytes,
            })
        }
        UpstreamError::Connect(_) | UpstreamError::ConnectTimeout(_) => {
            pool.eject(instance);
            tracing::warn!(
                service,
                upstream = upstream(),
                error = detail,
                "upstream connect failed"
            );
            let timed_out = match &err {
                UpstreamError::ConnectTimeout(_) => true,
                UpstreamError::Connect(io) => io.kind() == std::io::ErrorKind::TimedOut,
                UpstreamError::Exchange(_) => false,
            };
            if timed_out {
                return Err(GatewayError::UpstreamTimeout {
                    service,
                    upstream: upstream(),
                    timeout,
                });
            }
            Err(GatewayError::UpstreamConnect {
                service,
                upstream: upstream(),
                detail,
            })
        }
        UpstreamError::Exchange(_) => {
            tracing::warn!(
                service,
                upstream = upstream(),
                error = detail,
                "upstream request failed"
            );
            Err(GatewayError::UpstreamFailed {
                service,
                upstream: upstream(),
                detail,
            })
        }
    }
}

/// Joins the client's and the upstream's upgraded connections and copies bytes both ways.
fn tunnel(client: OnUpgrade, upstream: OnUpgrade, permit: Option<StreamPermit>) {
    tokio::spawn(
        async move {
            let _permit = permit;
            match tokio::try_join!(client, upstream) {
                Ok((client, upstream)) => {
                    let mut client = TokioIo::new(client);
                    let mut upstream = TokioIo::new(upstream);
                    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                        Ok((up, down)) => {
                            tracing::info!(bytes_up = up, bytes_down = down, "tunnel closed")
                        }
                        Err(err) => tracing::info!(error = %err, "tunnel ended"),
                    }
                }
                Err(err) => tracing::warn!(error = %err, "upgrade failed"),
            }
        }
        .instrument(tracing::Span::current()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_prefix() {
        assert_eq!(route("/api"), Some(Service::Api));
        assert_eq!(route("/api/items?x"), Some(Service::Api));
        assert_eq!(route("/v1/chat/completions"), Some(Service::Inference));
        assert_eq!(route("/apix"), None);
        assert_eq!(route("/"), None);
        assert_eq!(route("/v2/models"), None);
    }
}
