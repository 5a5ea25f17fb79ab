//! Who the caller is: password hashing ([`password`]), JWT access tokens ([`token`]) and the
//! [`AuthUser`] extractor that turns a `Bearer` token into a user id. Routes for register,
//! login and `me` live in [`crate::routes::auth`]; this module never touches the database.

pub mod password;
pub mod token;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use uuid::Uuid;

use crate::app::AppState;
use crate::error::ApiError;

/// The authenticated caller, from a valid access token.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    pub id: Uuid,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthorized("missing Authorization header".into()))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::Unauthorized("Authorization header is not \"Bearer <token>\"".into())
            })?;
        let claims = state.tokens.verify(token.trim())?;
        Ok(AuthUser {
            id: claims.user_id()?,
        })
    }
}
