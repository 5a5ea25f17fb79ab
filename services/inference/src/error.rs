//! Every way a request can fail, and the one place they become HTTP answers: a status code and
//! OpenAI's `{"error": {"message", "type", "param", "code"}}` body.
//!
//! It must never decide whether something is an error; callers do.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::openai::{ErrorBody, ErrorObject};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("request body is not valid JSON for a chat completion: {0}")]
    BadJson(String),
    #[error("{message}")]
    Invalid {
        message: String,
        param: Option<&'static str>,
    },
    #[error(
        "This model's maximum context length is {max_model_len} tokens. However, you requested {requested} tokens ({prompt} in the messages, {completion} in the completion). Please reduce the length of the messages or completion."
    )]
    ContextTooLong {
        max_model_len: usize,
        requested: usize,
        prompt: usize,
        completion: usize,
    },
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    #[error("the request queue is full; retry later")]
    QueueFull,
    #[error("missing or wrong API key (send `Authorization: Bearer <key>`)")]
    Unauthorized,
    #[error("the model is still loading")]
    Loading,
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: &'static str) -> ApiError {
        ApiError::Invalid {
            message: message.into(),
            param: Some(param),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadJson(_) | ApiError::Invalid { .. } | ApiError::ContextTooLong { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Loading => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type`, `param` and `code` fields.
    fn kind_param_code(&self) -> (&'static str, Option<&'static str>, Option<&'static str>) {
        match self {
            ApiError::BadJson(_) => ("invalid_request_error", None, Some("invalid_json")),
            ApiError::Invalid { param, .. } => ("invalid_request_error", *param, None),
            ApiError::ContextTooLong { .. } => (
                "invalid_request_error",
                Some("messages"),
                Some("context_length_exceeded"),
            ),
            ApiError::ModelNotFound(_) => (
                "invalid_request_error",
                Some("model"),
                Some("model_not_found"),
            ),
            ApiError::QueueFull => ("rate_limit_exceeded", None, Some("queue_full")),
            ApiError::Unauthorized => ("invalid_request_error", None, Some("invalid_api_key")),
            ApiError::Loading => ("server_error", None, Some("model_loading")),
            ApiError::Internal(_) => ("server_error", None, None),
        }
    }

    pub fn body(&self) -> ErrorBody {
        let (kind, param, code) = self.kind_param_code();
        ErrorBody {
            error: ErrorObject {
                message: self.to_string(),
                kind,
                param,
                code,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), Json(self.body())).into_response()
    }
}
