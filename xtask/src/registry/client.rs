//! One registry's HTTP conversation: TLS (system roots or a CA file; plain HTTP only when
//! asked), authentication (anonymous, Basic, Bearer tokens for the scopes a request needs) and
//! retries with exponential backoff and jitter on 429, 5xx and broken connections.
//!
//! It knows requests, statuses and tokens, not blobs or manifests (that is `upload` and the
//! push plan). It must never log a credential or a token.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use reqwest::header::{
    AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, LOCATION, WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode, Url};

use super::auth::{self, Challenge};
use super::credentials::Credentials;

/// How to reach the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// HTTPS verified against the system roots, plus the CA certificates of `ca_file`.
    Https { ca_file: Option<PathBuf> },
    /// Plain HTTP: only when the user asks for it (`--plain-http`).
    PlainHttp,
}

/// How often and how patiently to retry a request that failed for a passing reason.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts after the first one.
    pub retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (1-based): doubling, capped, with ±50% jitter so
    /// that four parallel uploads do not hammer a recovering registry in step.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(16);
        let raw = self
            .base_delay
            .saturating_mul(1 << exponent)
            .min(self.max_delay);
        raw.mul_f64(0.5 + fastrand::f64())
    }
}

/// One request, kept whole so it can be sent again after a retry or a fresh token.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub url: Url,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<Bytes>,
    /// The token scopes the request needs (`repository:NAME:pull,push`, …).
    pub scopes: Vec<String>,
    /// What the request does, for error messages: "PUT manifest cairn/api:latest".
    pub what: String,
}

impl Request {
    pub fn new(method: Method, url: Url, scopes: Vec<String>, what: String) -> Request {
        Request {
            method,
            url,
            headers: Vec::new(),
            body: None,
            scopes,
            what,
        }
    }

    pub fn header(mut self, name: HeaderName, value: &str) -> Result<Request> {
        let value = HeaderValue::from_str(value)
            .with_context(|| format!("header {name} for {}", self.what))?;
        self.headers.push((name, value));
        Ok(self)
    }

    pub fn body(mut self, body: Bytes) -> Request {
        self.body = Some(body);
        self
    }
}

/// The result of sending a request once.
#[derive(Debug)]
pub enum Attempt {
    /// The registry answered with a status that is not worth retrying (2xx, 3xx, most 4xx).
    Answered(Response),
    /// A passing failure (429, 5xx, reset connection); the reason says which.
    Transient(String),
}

/// A registry client shared by every upload of one push.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    host: String,
    credentials: Option<Credentials>,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<String, String>>,
    pub retry: RetryPolicy,
}

impl Client {
    pub fn new(
        host: &str,
        transport: &Transport,
        credentials: Option<Credentials>,
        retry: RetryPolicy,
    ) -> Result<Client> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(16)
            .redirect(reqwest::redirect::Policy::limited(5));
        let scheme = match transport {
            Transport::PlainHttp => "http",
            Transport::Https { ca_file } => {
                if let Some(path) = ca_file {
                    let pem = std::fs::read(path)
                        .with_context(|| format!("reading CA file {}", path.display()))?;
                    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                        .with_context(|| format!("CA file {} is not PEM", path.display()))?;
                    if certificates.is_empty() {
                        bail!("CA file {} holds no certificate", path.display());
                    }
                    for certificate in certificates {
                        builder = builder.add_root_certificate(certificate);
                    }
                }
                "https"
            }
        };
        let base = Url::parse(&format!("{scheme}://{host}/"))
            .with_context(|| format!("registry host {host:?} is not HOST[:PORT]"))?;
        Ok(Client {
            http: builder.build().context("building the HTTP client")?,
            base,
            host: host.to_owned(),
            credentials,
            challenge: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
            retry,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// `https://HOST/v2/<path>`.
    pub fn url(&self, path: &str) -> Result<Url> {
        self.base
            .join(&format!("v2/{path}"))
            .with_context(|| format!("building a URL for {path}"))
    }

    /// Resolves a `Location` header (absolute or relative to the registry).
    pub fn location(&self, response: &Response) -> Result<Url> {
        let value = response.headers().get(LOCATION).with_context(|| {
            format!(
                "{} answered {} without a Location",
                self.host,
                response.status()
            )
        })?;
        let text = value.to_str().context("Location header is not text")?;
        self.base
            .join(text)
            .with_context(|| format!("{} answered an unusable Location {text:?}", self.host))
    }

    /// Asks `GET /v2/` once to learn how the registry wants to be authenticated.
    pub async fn ping(&self) -> Result<()> {
        let request = Request::new(Method::GET, self.url("")?, Vec::new(), "GET /v2/".into());
        let response = self.send(&request).await?;
        if !response.status().is_success() {
            return Err(self.status_error(&request, response).await);
        }
        Ok(())
    }

    /// Sends `request`, retrying passing failures with backoff; any answer the registry gives
    /// for good (including 404) comes back as the response.
    pub async fn send(&self, request: &Request) -> Result<Response> {
        let mut attempt = 0;
        loop {
            match self.send_once(request).await? {
                Attempt::Answered(response) => return Ok(response),
                Attempt::Transient(reason) if attempt < self.retry.retries => {
                    attempt += 1;
                    report_retry(&self.host, request, &reason, attempt);
                    tokio::time::sleep(self.retry.delay(attempt)).await;
                }
                Attempt::Transient(reason) => bail!(
                    "registry {}: {} failed after {} attempts: {reason}",
                    self.host,
                    request.what,
                    attempt + 1
                ),
            }
        }
    }

    /// Sends `request` once (after at most one extra round for authentication).
    pub async fn send_once(&self, request: &Request) -> Result<Attempt> {
        let mut refreshed = false;
        loop {
            let authorization = self.authorization(&request.scopes).await?;
            let response = match self.build(request, authorization).send().await {
                Ok(response) => response,
                Err(err) if err.is_builder() => {
                    return Err(anyhow!(err).context(format!("building {}", request.what)));
                }
                Err(err) => return Ok(Attempt::Transient(describe_transport_error(&err))),
            };
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                refreshed = true;
                if self.learn_challenge(&response, &request.scopes) {
                    continue;
                }
            }
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                // A registry that says how long to back off is believed, up to the cap.
                let wait = retry_after(&response).map(|wait| wait.min(self.retry.max_delay));
                let body = response.text().await.unwrap_or_default();
                if let Some(wait) = wait {
                    tokio::time::sleep(wait).await;
                }
                return Ok(Attempt::Transient(format!("{status}: {}", body.trim())));
            }
            return Ok(Attempt::Answered(response));
        }
    }

    fn build(&self, request: &Request, authorization: Option<String>) -> reqwest::RequestBuilder {
        let mut headers = HeaderMap::new();
        for (name, value) in &request.headers {
            headers.append(name.clone(), value.clone());
        }
        let mut builder = self
            .http
            .request(request.method.clone(), request.url.clone())
            .headers(headers);
        if let Some(value) = authorization {
            builder = builder.header(AUTHORIZATION, value);
        }
        if let Some(body) = &request.body {
            builder = builder.body(body.clone());
        }
        builder
    }

    /// Records the challenge of a 401 and forgets the token it refused. True when another try
    /// can do better (we have something to send that we did not send).
    fn learn_challenge(&self, response: &Response, scopes: &[String]) -> bool {
        let Some(challenge) = response
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(auth::parse_challenge)
        else {
            return false;
        };
        let retry = match &challenge {
            Challenge::Basic => self.credentials.is_some(),
            Challenge::Bearer { .. } => true,
        };
        if matches!(challenge, Challenge::Bearer { .. }) {
            // The token we sent (if any) was refused: fetch a fresh one on the next try.
            let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            tokens.remove(&scope_key(scopes));
        }
        *self.challenge.lock().unwrap_or_else(|e| e.into_inner()) = Some(challenge);
        retry
    }

    async fn authorization(&self, scopes: &[String]) -> Result<Option<String>> {
        let challenge = self
            .challenge
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.credentials.as_ref().map(basic_header)),
            Some(Challenge::Bearer { realm, service, .. }) => {
                // Ask for exactly the scopes the request names (its repository, plus pull on a
                // mount's source): a challenge's hint never widens what a token may do.
                let wanted = auth::merge_scopes(scopes, &[]);
                let key = scope_key(&wanted);
                if let Some(token) = self
                    .tokens
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&key)
                {
                    return Ok(Some(format!("Bearer {token}")));
                }
                let token = self
                    .fetch_token(&realm, service.as_deref(), &wanted)
                    .await?;
                self.tokens
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, token.clone());
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<String> {
        let mut url = Url::parse(realm).with_context(|| {
            format!("registry {}: token realm {realm:?} is not a URL", self.host)
        })?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            for scope in scopes {
                query.append_pair("scope", scope);
            }
        }
        let mut attempt = 0;
        loop {
            let mut builder = self.http.get(url.clone());
            if let Some(credentials) = &self.credentials {
                builder = builder.basic_auth(&credentials.username, Some(&credentials.secret));
            }
            let failure = match builder.send().await {
                Ok(response) if response.status().is_success() => {
                    return parse_token(response, realm).await;
                }
                Ok(response) if !response.status().is_server_error() => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    bail!(
                        "token server {realm} refused scopes {scopes:?}: {status}: {}",
                        body.trim()
                    );
                }
                Ok(response) => response.status().to_string(),
                Err(err) => describe_transport_error(&err),
            };
            if attempt >= self.retry.retries {
                bail!("token server {realm}: {failure}");
            }
            attempt += 1;
            tokio::time::sleep(self.retry.delay(attempt)).await;
        }
    }

    /// An error naming the registry, the request and the status, with the registry's body.
    pub async fn status_error(&self, request: &Request, response: Response) -> anyhow::Error {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        anyhow!(
            "registry {}: {} answered {status}: {}",
            self.host,
            request.what,
            body.trim()
        )
    }
}

/// The token cache key: the request's scopes, sorted.
fn scope_key(scopes: &[String]) -> String {
    auth::merge_scopes(scopes, &[]).join(" ")
}

async fn parse_token(response: Response, realm: &str) -> Result<String> {
    #[derive(serde::Deserialize)]
    struct TokenAnswer {
        token: Option<String>,
        access_token: Option<String>,
    }
    let body = response
        .bytes()
        .await
        .with_context(|| format!("token server {realm}: reading the answer"))?;
    let answer: TokenAnswer = serde_json::from_slice(&body)
        .with_context(|| format!("token server {realm}: answer is not token JSON"))?;
    answer
        .token
        .or(answer.access_token)
        .filter(|t| !t.is_empty())
        .with_context(|| format!("token server {realm}: answer has no token"))
}

fn basic_header(credentials: &Credentials) -> String {
    use base64::Engine as _;
    let pair = format!("{}:{}", credentials.username, credentials.secret);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

fn describe_transport_error(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Retry-After: <seconds>` (the HTTP-date form is rare from registries and is ignored).
fn retry_after(response: &Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?;
    value
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
        .map(Duration::from_secs)
}

fn report_retry(host: &str, request: &Request, reason: &str, attempt: u32) {
    eprintln!(
        "retry {attempt}: registry {host}: {} ({reason})",
        request.what
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let policy = RetryPolicy {
            retries: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for _ in 0..50 {
            let first = policy.delay(1);
            assert!(first >= Duration::from_millis(50) && first < Duration::from_millis(150));
            let third = policy.delay(3);
            assert!(third >= Duration::from_millis(200) && third < Duration::from_millis(600));
            assert!(policy.delay(30) < Duration::from_millis(1500));
        }
    }
}
