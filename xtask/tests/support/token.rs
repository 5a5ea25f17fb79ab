//! A real token server for the registry's Bearer flow: `GET /token?service=…&scope=…` with
//! Basic credentials answers `{"token": JWT}`, an ES256 JWT whose `x5c` header carries the
//! issuer certificate the registry trusts. It records every scope asked for.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

use super::pki::TokenIssuer;

pub const ISSUER: &str = "cairn-test-issuer";
pub const SERVICE: &str = "cairn-test-registry";

pub struct TokenServer {
    pub addr: SocketAddr,
    /// Every `scope` parameter of every token request, in order.
    pub scopes: Arc<Mutex<Vec<String>>>,
    _runtime: tokio::runtime::Runtime,
}

struct Issuer {
    key: EcdsaKeyPair,
    cert_b64: String,
    user: String,
    password: String,
    scopes: Arc<Mutex<Vec<String>>>,
}

impl TokenServer {
    pub fn start(issuer: &TokenIssuer, user: &str, password: &str) -> TokenServer {
        let runtime = tokio::runtime::Runtime::new().expect("token server runtime");
        let rng = ring::rand::SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &issuer.pkcs8, &rng)
            .expect("issuer key is P-256 PKCS#8");
        let scopes = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(Issuer {
            key,
            cert_b64: base64::engine::general_purpose::STANDARD.encode(&issuer.cert_der),
            user: user.to_owned(),
            password: password.to_owned(),
            scopes: scopes.clone(),
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind token server");
        let addr = listener.local_addr().expect("token server address");
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&state, &request)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TokenServer {
            addr,
            scopes,
            _runtime: runtime,
        }
    }

    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }
}

fn answer(issuer: &Issuer, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", issuer.user, issuer.password))
    );
    let authorized = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(expected.as_str());
    if !authorized {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .body(Full::new(Bytes::from_static(
                b"{\"errors\":[\"bad credentials\"]}",
            )))
            .expect("response");
    }
    let query = request.uri().query().unwrap_or("");
    let scopes: Vec<String> = url_pairs(query)
        .into_iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v)
        .collect();
    issuer
        .scopes
        .lock()
        .expect("scopes lock")
        .extend(scopes.iter().cloned());
    let token = sign(issuer, &scopes);
    Response::new(Full::new(Bytes::from(
        serde_json::json!({ "token": token, "expires_in": 300 }).to_string(),
    )))
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{query}"))
        .expect("query parses")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Grants every action asked for: this server tests the client's flow, not a policy.
fn sign(issuer: &Issuer, scopes: &[String]) -> String {
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|scope| {
            let mut parts = scope.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({
                "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()
            }))
        })
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let header = serde_json::json!({ "typ": "JWT", "alg": "ES256", "x5c": [issuer.cert_b64] });
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": issuer.user, "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", fastrand::u64(..)), "access": access,
    });
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let signing_input = format!("{}.{}", b64(&header), b64(&claims));
    let rng = ring::rand::SystemRandom::new();
    let signature = issuer
        .key
        .sign(&rng, signing_input.as_bytes())
        .expect("ES256 signature");
    format!(
        "{signing_input}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature.as_ref())
    )
}
