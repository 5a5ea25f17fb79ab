//! The api's one error type and the one place errors become HTTP responses: every failure a
//! client can see is `{"error": {"code": "...", "message": "..."}}` with a fitting status.
//! Internal causes (database, storage, LLM) are logged here and never shown to the client:
//! a failing LLM becomes one of the codes of [`LlmFailure`], never its URL or its body.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::llm::LlmFailure;

/// What an overloaded api asks the client to wait before trying again, seconds.
const RETRY_AFTER_SECONDS: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be parsed (malformed JSON, bad query string).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no token, a bad token, or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the resource exists but belongs to someone else.
    #[error("{0}")]
    Forbidden(String),
    /// 404
    #[error("{0}")]
    NotFound(String),
    /// 409: e.g. the email is already registered.
    #[error("{0}")]
    Conflict(String),
    /// 413: body or upload larger than the configured limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: an upload type that is not allowed.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed but invalid (field values, lengths).
    #[error("{0}")]
    Unprocessable(String),
    /// 429: too many concurrent LLM streams for this user.
    #[error("{0}")]
    TooManyRequests(String),
    /// 502: the LLM answered badly or not at all (what it said is logged, not shown).
    #[error("{0}")]
    Llm(LlmFailure),
    /// 503: a dependency is not ready.
    #[error("{0}")]
    Unavailable(String),
    /// 503 with `Retry-After`: a bounded resource (password hashing) is busy.
    #[error("{0}")]
    Overloaded(String),
    /// 500: logged with its cause, shown to the client without it.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Llm(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable(_) | ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code in the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Unprocessable(_) => "unprocessable",
            ApiError::TooManyRequests(_) => "too_many_requests",
            ApiError::Llm(failure) => failure.code(),
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::Internal(_) => "internal",
        }
    }

    /// What the client may read: internal causes stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }

    /// The JSON body, also used for `event: error` in a chat stream.
    pub fn body(&self) -> serde_json::Value {
        json!({ "error": { "code": self.code(), "message": self.public_message() } })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(%cause, "internal error");
        }
        let mut response = (self.status(), Json(self.body())).into_response();
        if let ApiError::Overloaded(_) = &self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        ApiError::Internal(format!("database: {err}"))
    }
}

impl From<object_store::Error> for ApiError {
    fn from(err: object_store::Error) -> Self {
        match err {
            object_store::Error::NotFound { .. } => {
                ApiError::NotFound("file content not found".to_owned())
            }
            other => ApiError::Internal(format!("object storage: {other}")),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let text = rejection.body_text();
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(text),
            StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable(text),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(text),
            _ => ApiError::BadRequest(text),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}
