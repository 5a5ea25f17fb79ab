//! One registry's HTTP conversation: TLS (system roots or a CA file; plain HTTP only when
//! asked), authentication (anonymous, Basic, Bearer tokens for the scopes a request needs) and
//! retries with exponential backoff and jitter on 429, 5xx and broken connections.
//!
//! Credentials and tokens go only to the registry's own origin (scheme, host and port as the
//! user named it: HTTPS, or HTTP with `--plain-http`). Redirects are followed here, not by
//! reqwest, so that `Authorization` is attached hop by hop only where that holds (reqwest keeps it
//! on a same-host redirect from https to http); a token realm elsewhere is asked anonymously.
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

/// Redirects followed for one request.
const MAX_REDIRECTS: usize = 5;

/// A registry client shared by every upload of one push.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    host: String,
    credentials: Option<Credentials>,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<String, String>>,
    /// Token servers on another origin the user trusts with their credentials
    /// (`TRUSTED_REALMS_VARIABLE`, e.g. a registry whose auth server has a host of its own).
    trusted_realms: Vec<Url>,
    pub retry: RetryPolicy,
}

/// Comma-separated origins (`https://auth.example.com`) of token servers that may receive the
/// user's credentials although they are not the registry's own origin.
pub const TRUSTED_REALMS_VARIABLE: &str = "CAIRN_REGISTRY_TOKEN_REALMS";

/// The origins listed in `value`; an entry that is not a URL is an error naming it.
fn trusted_realms(value: &str) -> Result<Vec<Url>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            Url::parse(entry).with_context(|| {
                format!(
                    "{TRUSTED_REALMS_VARIABLE}: {entry:?} is not an origin (https://HOST[:PORT])"
                )
            })
        })
        .collect()
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

impl std::fmt::Debug for Client {
    // The cached tokens are secrets like the credentials (whose own Debug hides the secret).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tokens = self.tokens.lock().map_or(0, |tokens| tokens.len());
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("credentials", &self.credentials)
            .field("tokens", &format_args!("[{tokens} hidden]"))
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
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
            .redirect(reqwest::redirect::Policy::none());
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
            trusted_realms: trusted_realms(
                &std::env::var(TRUSTED_REALMS_VARIABLE).unwrap_or_default(),
            )?,
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
            let sent = self
                .follow(
                    request.method.clone(),
                    request.url.clone(),
                    &request.headers,
                    request.body.clone(),
                    authorization.as_deref(),
                )
                .await;
            let response = match sent {
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

    /// Whether `url` is the registry's own origin: the only place credentials and tokens go.
    fn is_registry_origin(&self, url: &Url) -> bool {
        same_origin(url, &self.base)
    }

    /// Whether the token server at `url` may receive the user's credentials: the registry's
    /// own origin, or one the user listed in `TRUSTED_REALMS_VARIABLE`.
    fn may_receive_credentials(&self, url: &Url) -> bool {
        self.is_registry_origin(url)
            || self
                .trusted_realms
                .iter()
                .any(|origin| same_origin(url, origin))
    }

    /// Sends one request and follows up to `MAX_REDIRECTS` redirects, attaching
    /// `authorization` only on hops to the registry's own origin (or a trusted token realm).
    async fn follow(
        &self,
        mut method: Method,
        mut url: Url,
        headers: &[(HeaderName, HeaderValue)],
        mut body: Option<Bytes>,
        authorization: Option<&str>,
    ) -> Result<Response, reqwest::Error> {
        let mut hops = 0;
        loop {
            let mut header_map = HeaderMap::new();
            for (name, value) in headers {
                header_map.append(name.clone(), value.clone());
            }
            let mut builder = self
                .http
                .request(method.clone(), url.clone())
                .headers(header_map);
            if let Some(value) = authorization.filter(|_| self.may_receive_credentials(&url)) {
                builder = builder.header(AUTHORIZATION, value);
            }
            if let Some(body) = &body {
                builder = builder.body(body.clone());
            }
            let response = builder.send().await?;
            let status = response.status();
            let next = response
                .headers()
                .get(LOCATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|location| url.join(location).ok());
            let Some(next) = next.filter(|_| status.is_redirection() && hops < MAX_REDIRECTS)
            else {
                return Ok(response);
            };
            hops += 1;
            // 303, and 301/302 after a POST, turn into a GET without a body (RFC 9110 15.4).
            let becomes_get = status == StatusCode::SEE_OTHER
                || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                    && method == Method::POST);
            if becomes_get {
                method = Method::GET;
                body = None;
            }
            url = next;
        }
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
        // The user's password goes to a token server on the registry's own origin only; one
        // elsewhere (named by a 401 that anyone on the path may have written) is asked anonymously.
        let basic = self
            .credentials
            .as_ref()
            .filter(|_| self.may_receive_credentials(&url))
            .map(basic_header);
        let withheld = if self.credentials.is_some() && basic.is_none() {
            format!(
                " (your credentials were not sent: the realm is not the registry's origin {}; \
                 list it in {TRUSTED_REALMS_VARIABLE} to trust it)",
                self.base.as_str().trim_end_matches('/')
            )
        } else {
            String::new()
        };
        let mut attempt = 0;
        loop {
            let sent = self
                .follow(Method::GET, url.clone(), &[], None, basic.as_deref())
                .await;
            let failure = match sent {
                Ok(response) if response.status().is_success() => {
                    return parse_token(response, realm).await;
                }
                Ok(response) if !response.status().is_server_error() => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    bail!(
                        "token server {realm} refused scopes {scopes:?}: {status}: {}{withheld}",
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
    use std::sync::Arc;

    use http_body_util::Full;
    use hyper::body::Incoming;

    /// What a test server saw: the path and the `Authorization` header of each request.
    type Log = Arc<Mutex<Vec<(String, Option<String>)>>>;
    type Answer = fn(&str, Option<&str>, u16) -> hyper::Response<Full<Bytes>>;

    /// A loopback HTTP server that records every request and answers with `answer(path,
    /// authorization, other_port)`.
    async fn server(answer: Answer, other_port: Arc<Mutex<u16>>) -> (u16, Log) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let log = Log::default();
        let seen = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, other_port) = (Arc::clone(&seen), Arc::clone(&other_port));
                let service =
                    hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                        let path = request.uri().path().to_owned();
                        let authorization = request
                            .headers()
                            .get(AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        seen.lock()
                            .expect("log")
                            .push((path.clone(), authorization.clone()));
                        let other = *other_port.lock().expect("port");
                        let response = answer(&path, authorization.as_deref(), other);
                        async move { Ok::<_, std::convert::Infallible>(response) }
                    });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        (port, log)
    }

    fn reply(status: u16, headers: &[(&str, String)], body: &str) -> hyper::Response<Full<Bytes>> {
        let mut response = hyper::Response::builder().status(status);
        for (name, value) in headers {
            response = response.header(*name, value);
        }
        response
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("response")
    }

    const SECRET: &str = "s3cr3t-password";

    fn credentials() -> Credentials {
        Credentials {
            username: "pusher".into(),
            secret: SECRET.into(),
        }
    }

    fn client(port: u16) -> Client {
        let retry = RetryPolicy {
            retries: 0,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(10),
        };
        Client::new(
            &format!("127.0.0.1:{port}"),
            &Transport::PlainHttp,
            Some(credentials()),
            retry,
        )
        .expect("client")
    }

    /// The other origin: a token server and a blob store that anyone may use.
    fn other_origin(path: &str, _: Option<&str>, _: u16) -> hyper::Response<Full<Bytes>> {
        match path {
            "/token" => reply(200, &[], r#"{"token":"token-from-elsewhere"}"#),
            _ => reply(200, &[], "blob"),
        }
    }

    fn assert_no_credentials(log: &Log, host: &str) {
        for (path, authorization) in log.lock().expect("log").iter() {
            assert!(
                authorization.is_none(),
                "{host} received Authorization {authorization:?} on {path}"
            );
        }
    }

    /// Item 13 of issue 17: a registry (or whoever answers for it) names a token realm on
    /// another origin; the user's password must not go there.
    #[tokio::test]
    async fn credentials_never_reach_a_token_realm_on_another_origin() {
        let elsewhere_port = Arc::new(Mutex::new(0));
        let (elsewhere, elsewhere_log) = server(other_origin, Arc::default()).await;
        *elsewhere_port.lock().expect("port") = elsewhere;
        let registry_answer: Answer = |path, authorization, other| match (path, authorization) {
            ("/v2/", Some(a)) if a.starts_with("Bearer ") => reply(200, &[], "{}"),
            _ => reply(
                401,
                &[(
                    "www-authenticate",
                    format!(r#"Bearer realm="http://127.0.0.1:{other}/token",service="r""#),
                )],
                "",
            ),
        };
        let (registry, _) = server(registry_answer, elsewhere_port).await;
        client(registry)
            .ping()
            .await
            .expect("anonymous token works");
        let seen = elsewhere_log.lock().expect("log").len();
        assert!(seen >= 1, "the token server was asked");
        assert_no_credentials(&elsewhere_log, "the token realm on another origin");
    }

    /// Item 13 of issue 17: the registry redirects a download to another host; the
    /// credentials stay with the registry.
    #[tokio::test]
    async fn authorization_is_not_sent_on_a_redirect_to_another_host() {
        let (elsewhere, elsewhere_log) = server(other_origin, Arc::default()).await;
        let registry_answer: Answer = |path, authorization, other| match (path, authorization) {
            (_, None) => reply(
                401,
                &[("www-authenticate", r#"Basic realm="r""#.to_owned())],
                "",
            ),
            ("/v2/", Some(_)) => reply(200, &[], "{}"),
            (_, Some(_)) => reply(
                307,
                &[("location", format!("http://127.0.0.1:{other}/blob"))],
                "",
            ),
        };
        let (registry, registry_log) =
            server(registry_answer, Arc::new(Mutex::new(elsewhere))).await;
        let client = client(registry);
        client.ping().await.expect("ping");
        let request = Request::new(
            Method::GET,
            client.url("ns/api/blobs/sha256:00").expect("url"),
            Vec::new(),
            "GET blob".into(),
        );
        let response = client.send(&request).await.expect("download");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.text().await.expect("body"), "blob");
        assert!(
            registry_log
                .lock()
                .expect("log")
                .iter()
                .any(|(_, a)| a.as_deref().is_some_and(|a| a.starts_with("Basic "))),
            "the registry itself gets the credentials"
        );
        assert_eq!(elsewhere_log.lock().expect("log").len(), 1);
        assert_no_credentials(&elsewhere_log, "the redirect target");
    }

    /// Item 13 of issue 17: `{:?}` of anything holding a secret shows no secret.
    #[test]
    fn debug_of_the_client_shows_no_password_or_token() {
        let client = client(9);
        client
            .tokens
            .lock()
            .expect("tokens")
            .insert("repository:a:pull".into(), "bearer-token-value".into());
        let printed = format!("{client:?}");
        assert!(!printed.contains(SECRET), "{printed}");
        assert!(!printed.contains("bearer-token-value"), "{printed}");
        let printed = format!("{:?}", credentials());
        assert!(!printed.contains(SECRET), "{printed}");
    }

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
