//! HTTP handlers, one module per resource. Handlers parse the request, call the database,
//! storage or LLM modules, and return data or an [`ApiError`]; they never build an error
//! response by hand. [`JsonBody`] and [`PathId`] make extractor failures uniform JSON errors.

pub mod auth;
pub mod chat;
pub mod files;
pub mod health;
pub mod sessions;

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path};
use axum::http::request::Parts;
use uuid::Uuid;

use crate::error::ApiError;

/// `axum::Json` whose rejections (malformed JSON, wrong fields, too large) are [`ApiError`]s.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct JsonBody<T>(pub T);

/// A UUID path segment; anything else is a 400 naming the segment.
#[derive(Debug, Clone, Copy)]
pub struct PathId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<Uuid>::from_request_parts(parts, state).await?;
        Ok(PathId(id))
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest(format!("bad id in path: {}", rejection.body_text()))
    }
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}
