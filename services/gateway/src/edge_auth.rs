//! `/v1/*` protection at the edge: a request must carry `Authorization: Bearer <token>` where the
//! token is one of the configured API keys (compared in constant time) or an HS256 JWT signed
//! with the api's `JWT_SECRET` (claims `sub`, `iat`, `exp`; expiry checked).
//!
//! A caller holding an API key is a service (the api) calling on behalf of its users: it may
//! name the end user in `X-Cairn-End-User`, and is then known as `api-key:N/user:ID`, so that
//! rate and stream limits apply per end user. The header means nothing from anyone else (a JWT
//! already names its user), and like every `x-cairn-*` header it never reaches an upstream.
//!
//! It must never log a token or a key, and never decide anything about routing.

use http::HeaderMap;
use http::header::AUTHORIZATION;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use subtle::ConstantTimeEq;

use crate::config::EdgeAuth;
use crate::error::GatewayError;

/// Who the caller proved to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The JWT's `sub`.
    User(String),
    /// The index of the API key that matched (never the key itself).
    ApiKey(usize),
    /// A service holding API key `key`, calling for its user `user` (`X-Cairn-End-User`).
    EndUser { key: usize, user: String },
}

/// The header a service (API key holder) names its end user in.
pub const END_USER_HEADER: &str = "x-cairn-end-user";

/// The longest end-user id accepted.
const MAX_END_USER: usize = 128;

impl Caller {
    /// The value of `x-cairn-user` for the upstream, and the caller's key for the limits.
    pub fn header_value(&self) -> String {
        match self {
            Caller::User(sub) => sub.clone(),
            Caller::ApiKey(index) => format!("api-key:{index}"),
            Caller::EndUser { key, user } => format!("api-key:{key}/user:{user}"),
        }
    }
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

/// The checker, built once from the configuration.
pub struct Verifier {
    api_keys: Vec<Vec<u8>>,
    jwt: Option<(DecodingKey, Validation)>,
}

impl Verifier {
    pub fn new(auth: &EdgeAuth) -> Self {
        hs256::install();
        let jwt = auth.jwt_secret.as_ref().map(|secret| {
            let mut validation = Validation::new(Algorithm::HS256);
            validation.set_required_spec_claims(&["exp", "sub"]);
            validation.leeway = 5;
            (DecodingKey::from_secret(secret.as_bytes()), validation)
        });
        Verifier {
            api_keys: auth
                .api_keys
                .iter()
                .map(|k| k.as_bytes().to_vec())
                .collect(),
            jwt,
        }
    }

    /// Who is calling: the verified credential, and for an API key the end user it names.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Caller, GatewayError> {
        match self.verify(headers)? {
            Caller::ApiKey(key) => match headers.get(END_USER_HEADER) {
                None => Ok(Caller::ApiKey(key)),
                Some(value) => {
                    let bytes = value.as_bytes();
                    let sane = !bytes.is_empty()
                        && bytes.len() <= MAX_END_USER
                        && bytes.iter().all(u8::is_ascii_graphic);
                    match value.to_str() {
                        Ok(user) if sane => Ok(Caller::EndUser {
                            key,
                            user: user.to_owned(),
                        }),
                        _ => Err(GatewayError::BadRequest(
                            "X-Cairn-End-User must be 1 to 128 visible ASCII characters",
                        )),
                    }
                }
            },
            // A token names its user; the header cannot change who that is.
            caller => Ok(caller),
        }
    }

    pub fn verify(&self, headers: &HeaderMap) -> Result<Caller, GatewayError> {
        let token = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(GatewayError::Unauthorized(
                "/v1 needs Authorization: Bearer <API key or token>",
            ))?;
        if let Some(index) = self
            .api_keys
            .iter()
            .position(|key| bool::from(key.as_slice().ct_eq(token.as_bytes())))
        {
            return Ok(Caller::ApiKey(index));
        }
        let (key, validation) = self
            .jwt
            .as_ref()
            .ok_or(GatewayError::Unauthorized("unknown API key"))?;
        jsonwebtoken::decode::<Claims>(token, key, validation)
            .map(|data| Caller::User(data.claims.sub))
            .map_err(|_| GatewayError::Unauthorized("invalid or expired token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use jsonwebtoken::{EncodingKey, Header, encode};

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("value"),
        );
        h
    }

    fn jwt(secret: &str, sub: &str, exp_offset: i64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let claims = serde_json::json!({"sub": sub, "iat": now, "exp": now + exp_offset});
        hs256::install();
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    #[test]
    fn keys_and_tokens() {
        let verifier = Verifier::new(&EdgeAuth {
            api_keys: vec!["k1".into(), "k2".into()],
            jwt_secret: Some("secret".into()),
        });
        assert_eq!(
            verifier.verify(&bearer("k2")).expect("key"),
            Caller::ApiKey(1)
        );
        assert_eq!(
            verifier
                .verify(&bearer(&jwt("secret", "u7", 60)))
                .expect("jwt"),
            Caller::User("u7".into())
        );
        assert!(verifier.verify(&bearer(&jwt("other", "u7", 60))).is_err());
        assert!(verifier.verify(&bearer(&jwt("secret", "u7", -60))).is_err());
        assert!(verifier.verify(&bearer("k3")).is_err());
        assert!(verifier.verify(&HeaderMap::new()).is_err());
    }

    #[test]
    fn only_api_key_holders_name_an_end_user() {
        let verifier = Verifier::new(&EdgeAuth {
            api_keys: vec!["k1".into()],
            jwt_secret: Some("secret".into()),
        });
        let with_end_user = |token: &str, user: &str| {
            let mut h = bearer(token);
            h.insert(END_USER_HEADER, HeaderValue::from_str(user).expect("value"));
            h
        };
        let service = verifier.identify(&with_end_user("k1", "42")).expect("key");
        assert_eq!(service.header_value(), "api-key:0/user:42");
        let user = verifier
            .identify(&with_end_user(&jwt("secret", "u7", 60), "42"))
            .expect("jwt");
        assert_eq!(user, Caller::User("u7".into()));
        assert!(verifier.identify(&with_end_user("k1", "a b")).is_err());
        assert_eq!(
            verifier
                .identify(&bearer("k1"))
                .expect("key")
                .header_value(),
            "api-key:0"
        );
    }
}
