//! Every way a request can fail at the gateway, and the one place where each becomes an HTTP
//! response: a JSON body `{"error": {"code", "message"}}` with the status the issue names
//! (404 unknown route, 401 unauthenticated /v1, 413 body too large, 429 rate limited,
//! 502 connect failure or an upstream refusing the gateway's key, 503 nobody healthy, 504 timeout).
//!
//! The `Display` text names upstreams and their errors and is for the log; a client is told
//! only the code and a message without internal addresses or upstream output
//! ([`GatewayError::public_message`]).
//!
//! It must never log or touch pool state; callers do that before returning the error.

use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no route for {0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("{limit} responses of this caller are already open")]
    TooManyStreams { limit: u32 },
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("rate limit of the {bucket} bucket exceeded; retry after {} s", retry_after_seconds(*.retry_after))]
    RateLimited {
        bucket: &'static str,
        retry_after: Duration,
    },
    #[error("no healthy {service} instance")]
    NoHealthyUpstream { service: &'static str },
    #[error("cannot connect to {service} at {upstream}: {detail}")]
    UpstreamConnect {
        service: &'static str,
        upstream: String,
        detail: String,
    },
    #[error("{service} at {upstream} did not answer within {timeout:?}")]
    UpstreamTimeout {
        service: &'static str,
        upstream: String,
        timeout: Duration,
    },
    /// The upstream answered 401 to a request whose caller the gateway had authenticated (and
    /// whose credential it kept): the gateway's own upstream key is missing or wrong.
    #[error("{service} at {upstream} refused the gateway's upstream key (answered 401)")]
    UpstreamUnauthorized {
        service: &'static str,
        upstream: String,
    },
    #[error("{service} at {upstream} failed: {detail}")]
    UpstreamFailed {
        service: &'static str,
        upstream: String,
        detail: String,
    },
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::TooManyStreams { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::NoHealthyUpstream { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamConnect { .. }
            | GatewayError::UpstreamUnauthorized { .. }
            | GatewayError::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            GatewayError::NotFound(_) => "not_found",
            GatewayError::Unauthorized(_) => "unauthorized",
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::TooManyStreams { .. } => "too_many_streams",
            GatewayError::PayloadTooLarge { .. } => "payload_too_large",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::NoHealthyUpstream { .. } => "no_healthy_upstream",
            GatewayError::UpstreamConnect { .. } => "upstream_connect_failed",
            GatewayError::UpstreamTimeout { .. } => "upstream_timeout",
            GatewayError::UpstreamUnauthorized { .. } => "upstream_unauthorized",
            GatewayError::UpstreamFailed { .. } => "upstream_failed",
        }
    }
}

impl GatewayError {
    /// What a client is told: nothing about where the upstreams are or what they said.
    pub fn public_message(&self) -> String {
        match self {
            GatewayError::NotFound(_) => "no route for this path".to_owned(),
            GatewayError::UpstreamConnect { service, .. } => {
                format!("the {service} service cannot be reached")
            }
            GatewayError::UpstreamTimeout { service, .. } => {
                format!("the {service} service did not answer in time")
            }
            GatewayError::UpstreamFailed { service, .. } => {
                format!("the {service} service failed to answer")
            }
            GatewayError::UpstreamUnauthorized { service, .. } => {
                format!("the {service} service refused the gateway")
            }
            GatewayError::Unauthorized(_)
            | GatewayError::BadRequest(_)
            | GatewayError::TooManyStreams { .. }
            | GatewayError::PayloadTooLarge { .. }
            | GatewayError::RateLimited { .. }
            | GatewayError::NoHealthyUpstream { .. } => self.to_string(),
        }
    }
}

fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.public_message() }
        });
        let mut response = (self.status(), Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            GatewayError::RateLimited { retry_after, .. } => {
                headers.insert(
                    RETRY_AFTER,
                    HeaderValue::from(retry_after_seconds(*retry_after).max(1)),
                );
            }
            GatewayError::TooManyStreams { .. } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(1u32));
            }
            GatewayError::Unauthorized(_) => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

/// An error and its sources on one line, e.g. `client error (Connect): tcp connect error: Connection refused`.
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// True when some error in the chain is of type `E`.
pub fn chain_has<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<E>() {
            return true;
        }
        current = e.source();
    }
    false
}
