//! JWT access tokens: HS256 signed with `JWT_SECRET`, claims `sub` (the user id as a string),
//! `iat` and `exp`. The gateway verifies the same tokens for `/v1/*`.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
}

impl Claims {
    pub fn user_id(&self) -> Result<Uuid, ApiError> {
        Uuid::parse_str(&self.sub)
            .map_err(|_| ApiError::Unauthorized("token subject is not a user id".into()))
    }
}

/// Issues and verifies tokens with one secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

impl TokenKeys {
    pub fn new(secret: &str, ttl: Duration) -> TokenKeys {
        hs256::install();
        TokenKeys {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            ttl,
        }
    }

    /// A token for `user_id`, valid from `now` (seconds since the epoch) for the configured TTL.
    pub fn issue_at(&self, user_id: Uuid, now: u64) -> Result<String, ApiError> {
        let claims = Claims {
            sub: user_id.to_string(),
            iat: now,
            exp: now + self.ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|err| ApiError::Internal(format!("signing a token: {err}")))
    }

    pub fn issue(&self, user_id: Uuid) -> Result<String, ApiError> {
        self.issue_at(user_id, jsonwebtoken::get_current_timestamp())
    }

    /// The claims of a valid, unexpired HS256 token.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "iat", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|err| ApiError::Unauthorized(format!("invalid token: {err}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn issued_token_verifies_with_its_claims() {
        let keys = TokenKeys::new(SECRET, Duration::from_secs(60));
        let user = Uuid::new_v4();
        let claims = keys
            .verify(&keys.issue(user).expect("issue"))
            .expect("valid");
        assert_eq!(claims.user_id().expect("uuid"), user);
        assert_eq!(claims.exp - claims.iat, 60);
    }

    #[test]
    fn expired_and_foreign_tokens_are_rejected() {
        let keys = TokenKeys::new(SECRET, Duration::from_secs(60));
        let old = keys.issue_at(Uuid::new_v4(), 1_000).expect("issue");
        assert!(matches!(keys.verify(&old), Err(ApiError::Unauthorized(_))));
        let other = TokenKeys::new("another-secret-another-secret-!!", Duration::from_secs(60));
        let foreign = other.issue(Uuid::new_v4()).expect("issue");
        assert!(matches!(
            keys.verify(&foreign),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(
            keys.verify("not.a.jwt"),
            Err(ApiError::Unauthorized(_))
        ));
    }
}
