//! `POST /api/auth/register`, `POST /api/auth/login`, `GET /api/auth/me`.
//!
//! Neither answer helps enumerate accounts more than registration itself must: a taken email is
//! a 409 whose message does not repeat the address, and a login for an unknown email runs the
//! same password hash as a wrong password (see [`crate::auth::password`]).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::JsonBody;
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::db::users::{self, InsertUserError};
use crate::error::ApiError;

const MIN_PASSWORD_CHARS: usize = 8;
const MAX_PASSWORD_CHARS: usize = 256;
const MAX_EMAIL_CHARS: usize = 254;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    email: String,
    password: String,
}

/// Trims and lower-cases an email; 422 when it is not plausibly one.
fn normalise_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_lowercase();
    let plausible = email.len() <= MAX_EMAIL_CHARS
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
        && !email.chars().any(char::is_whitespace);
    if plausible {
        Ok(email)
    } else {
        Err(ApiError::Unprocessable(format!(
            "email: {raw:?} is not an email address"
        )))
    }
}

fn check_password(password: &str) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
        return Err(ApiError::Unprocessable(format!(
            "password: must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"
        )));
    }
    Ok(())
}

fn session_body(state: &AppState, user: &users::User) -> Result<Value, ApiError> {
    Ok(json!({ "token": state.tokens.issue(user.id)?, "token_type": "Bearer", "user": user }))
}

pub async fn register(
    State(state): State<AppState>,
    JsonBody(credentials): JsonBody<Credentials>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let email = normalise_email(&credentials.email)?;
    check_password(&credentials.password)?;
    // Hashed before the insert, so a taken email costs the same as a new one.
    let hash = state.hashing.hash(credentials.password).await?;
    let user = users::insert(&state.pool, &email, &hash)
        .await
        .map_err(|err| match err {
            InsertUserError::EmailTaken => {
                ApiError::Conflict("an account with this email already exists".into())
            }
            InsertUserError::Database(db) => db.into(),
        })?;
    tracing::info!(user_id = %user.id, "registered");
    Ok((StatusCode::CREATED, Json(session_body(&state, &user)?)))
}

pub async fn login(
    State(state): State<AppState>,
    JsonBody(credentials): JsonBody<Credentials>,
) -> Result<Json<Value>, ApiError> {
    let wrong = || ApiError::Unauthorized("wrong email or password".into());
    let email = credentials.email.trim().to_lowercase();
    let user = users::find_by_email(&state.pool, &email).await?;
    let stored = user.as_ref().map(|user| user.password_hash.clone());
    let matches = state.hashing.verify(credentials.password, stored).await?;
    match user {
        Some(user) if matches => Ok(Json(session_body(&state, &user)?)),
        _ => Err(wrong()),
    }
}

pub async fn me(
    State(state): State<AppState>,
    caller: AuthUser,
) -> Result<Json<users::User>, ApiError> {
    users::find(&state.pool, caller.id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::Unauthorized("the token's user no longer exists".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_or_rejected() {
        assert_eq!(
            normalise_email(" Ann@Example.ORG ").expect("valid"),
            "ann@example.org"
        );
        for bad in [
            "",
            "ann",
            "@example.org",
            "ann@localhost",
            "a n@example.org",
        ] {
            assert!(normalise_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn password_length_is_bounded() {
        assert!(check_password("short").is_err());
        assert!(check_password("long enough").is_ok());
        assert!(check_password(&"x".repeat(300)).is_err());
    }
}
