//! The gateway's typed configuration, read once at start-up from an optional TOML file
//! (`GATEWAY_CONFIG`) and the environment, the environment winning. Every value is checked here,
//! and a bad one is an error naming where it came from: the variable, or the file, line and key.
//!
//! This module only parses and validates; it must never open sockets or start tasks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderValue;
use http::uri::{Authority, Uri};
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::rate_limit::{BucketKind, Quota};

/// Everything the gateway needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Worker threads, each with its own single-threaded runtime.
    pub workers: usize,
    pub api: PoolConfig,
    pub inference: PoolConfig,
    pub health_check: HealthCheckConfig,
    /// Per-instance timeout of `/api/health/all`.
    pub health_all_timeout: Duration,
    pub rate_limits: RateLimitConfig,
    pub max_body_bytes: u64,
    /// How long open streams may run on after SIGTERM before they are cut.
    pub drain_timeout: Duration,
    /// Peers whose `X-Forwarded-*` headers are believed (nginx).
    pub trusted_proxies: Vec<IpNet>,
    /// Peers that see `/api/health/all` in detail when they send no `X-Forwarded-For`.
    pub health_detail_networks: Vec<IpNet>,
    /// How long one round of `/api/health/all` probes is reused.
    pub health_all_cache: Duration,
    /// Open `/v1` responses one caller may hold at once; `None` is no limit.
    pub v1_streams_per_caller: Option<u32>,
    pub connection_limits: ConnectionLimits,
    pub edge_auth: EdgeAuth,
}

/// What bounds a client connection: how long its request head may take, how long it may sit
/// idle between requests, and how many one address may hold.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// Per client address (IPv6: per /64); trusted proxies are exempt. `None` is no cap.
    pub max_per_ip: Option<u32>,
}

/// One upstream pool: where its instances are and how long to wait for them.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub upstreams: Vec<Upstream>,
    pub health_path: String,
    /// A critical service that is down turns `/api/health/all` into a 503.
    pub critical: bool,
    pub connect_timeout: Duration,
    /// Time until the upstream's response headers (streams may then run as long as they like).
    pub response_timeout: Duration,
    /// The credential the gateway shows every instance of the pool (inference's
    /// `INFERENCE_API_KEY`); `None` sends none.
    pub upstream_key: Option<UpstreamKey>,
}

/// A pool's upstream key, held as the `Authorization: Bearer <key>` header it is sent as
/// (marked sensitive). Its `Debug` never shows it, and no error repeats it.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamKey {
    authorization: HeaderValue,
}

impl UpstreamKey {
    /// Checks a key: visible ASCII, no whitespace. The message never repeats the value.
    pub fn parse(key: &str) -> Result<UpstreamKey, String> {
        if key.is_empty() {
            return Err("the key is empty".into());
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "the key ({} characters, not shown) must be visible ASCII without spaces or control characters: it is sent as `Authorization: Bearer <key>`",
                key.chars().count()
            ));
        }
        let mut authorization = HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| "the key is not a valid header value".to_owned())?;
        authorization.set_sensitive(true);
        Ok(UpstreamKey { authorization })
    }

    /// `Bearer <key>`, the value of the `Authorization` header forwarded requests carry.
    pub fn authorization(&self) -> &HeaderValue {
        &self.authorization
    }
}

impl std::fmt::Debug for UpstreamKey {
    // Secrets never reach a log line, not even through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("redacted")
    }
}

/// One upstream instance, `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub authority: Authority,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.authority)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct HealthCheckConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub failures_to_eject: u32,
    pub successes_to_return: u32,
}

/// Per-client-IP quotas; `None` turns a bucket off.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitConfig {
    pub general: Option<Quota>,
    pub auth: Option<Quota>,
    pub chat: Option<Quota>,
}

impl RateLimitConfig {
    pub fn quota(&self, kind: BucketKind) -> Option<Quota> {
        match kind {
            BucketKind::General => self.general,
            BucketKind::Auth => self.auth,
            BucketKind::Chat => self.chat,
        }
    }
}

/// What a `/v1` request must show: one of the API keys, or a JWT signed with the secret.
#[derive(Clone)]
pub struct EdgeAuth {
    pub api_keys: Vec<String>,
    pub jwt_secret: Option<String>,
}

impl std::fmt::Debug for EdgeAuth {
    // Secrets never reach a log line, not even through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeAuth")
            .field(
                "api_keys",
                &format_args!("[{} redacted]", self.api_keys.len()),
            )
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "redacted"))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("{0}")]
    Missing(String),
}

/// The process environment, as a map so that tests can pass their own.
#[derive(Debug, Clone, Default)]
pub struct Environment(pub HashMap<String, String>);

impl Environment {
    pub fn from_process() -> Self {
        Environment(std::env::vars().collect())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// The TOML file's shape. Unknown keys are an error (serde names the key, toml the line).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<Spanned<String>>,
    workers: Option<u64>,
    health_all_timeout_ms: Option<u64>,
    max_body_bytes: Option<u64>,
    drain_timeout_ms: Option<u64>,
    trusted_proxies: Option<Vec<Spanned<String>>>,
    health_detail_networks: Option<Vec<Spanned<String>>>,
    health_all_cache_ms: Option<u64>,
    v1_streams_per_caller: Option<u64>,
    header_read_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_connections_per_ip: Option<u64>,
    api_keys: Option<Vec<String>>,
    jwt_secret: Option<String>,
    #[serde(default)]
    pools: FilePools,
    #[serde(default)]
    health_check: FileHealthCheck,
    #[serde(default)]
    rate_limits: FileRateLimits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePools {
    #[serde(default)]
    api: FilePool,
    #[serde(default)]
    inference: FilePool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePool {
    upstreams: Option<Vec<Spanned<String>>>,
    health_path: Option<Spanned<String>>,
    critical: Option<bool>,
    connect_timeout_ms: Option<u64>,
    response_timeout_ms: Option<u64>,
    upstream_key: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHealthCheck {
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    failures_to_eject: Option<u64>,
    successes_to_return: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRateLimits {
    general: Option<Spanned<String>>,
    auth: Option<Spanned<String>>,
    chat: Option<Spanned<String>>,
}

/// The file's path and text, to turn a span into "FILE line N, key K".
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn origin(&self, span: std::ops::Range<usize>, key: &str) -> String {
        let line = self.text[..span.start.min(self.text.len())]
            .matches('\n')
            .count()
            + 1;
        format!("{} line {line}, key `{key}`", self.path.display())
    }
}

/// Reads `GATEWAY_CONFIG` (when set) and the environment into a checked [`Config`].
pub fn load(env: &Environment) -> Result<Config, ConfigError> {
    match env.get("GATEWAY_CONFIG").filter(|p| !p.is_empty()) {
        Some(path) => {
            let path = Path::new(path);
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let file: FileConfig = toml::from_str(&text).map_err(|err| ConfigError::Syntax {
                path: path.to_owned(),
                message: err.to_string().trim_end().to_owned(),
            })?;
            resolve(env, &file, Some(&Source { path, text: &text }))
        }
        None => resolve(env, &FileConfig::default(), None),
    }
}

fn resolve(
    env: &Environment,
    file: &FileConfig,
    source: Option<&Source>,
) -> Result<Config, ConfigError> {
    let lookup = Lookup { env, source };
    let listen = lookup
        .text(
            "GATEWAY_LISTEN",
            file.listen.as_ref(),
            "listen",
            parse_listen,
        )?
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080)));
    let api = resolve_pool(
        &lookup,
        "API",
        "api",
        &file.pools.api,
        "/api/health",
        30_000,
        KeyRule::Refused(
            "the api pool takes no upstream key: the api authenticates each user by the \
             `Authorization` the client sent (a JWT), which the gateway forwards and a key would replace",
        ),
    )?;
    let inference = resolve_pool(
        &lookup,
        "INFERENCE",
        "inference",
        &file.pools.inference,
        "/health",
        120_000,
        KeyRule::Accepted,
    )?;
    let health_check = resolve_health_check(&lookup, &file.health_check)?;
    let rate_limits = RateLimitConfig {
        general: lookup.quota(
            "GATEWAY_RATE_GENERAL",
            file.rate_limits.general.as_ref(),
            "rate_limits.general",
            "100/s,burst=200",
        )?,
        auth: lookup.quota(
            "GATEWAY_RATE_AUTH",
            file.rate_limits.auth.as_ref(),
            "rate_limits.auth",
            "10/m,burst=5",
        )?,
        chat: lookup.quota(
            "GATEWAY_RATE_CHAT",
            file.rate_limits.chat.as_ref(),
            "rate_limits.chat",
            "60/m,burst=10",
        )?,
    };
    let trusted_proxies = lookup
        .list(
            "GATEWAY_TRUSTED_PROXIES",
            file.trusted_proxies.as_deref(),
            "trusted_proxies",
            parse_net,
        )?
        .unwrap_or_else(loopback);
    let health_detail_networks = lookup
        .list(
            "GATEWAY_HEALTH_DETAIL_NETWORKS",
            file.health_detail_networks.as_deref(),
            "health_detail_networks",
            parse_net,
        )?
        .unwrap_or_else(loopback);
    // 0 turns a count limit off.
    let limit = |var: &str, value: Option<u64>, default: u32| -> Result<Option<u32>, ConfigError> {
        let n = lookup.number(var, value)?.unwrap_or(u64::from(default));
        if n == 0 {
            return Ok(None);
        }
        u32::try_from(n)
            .map(Some)
            .map_err(|_| ConfigError::Invalid {
                origin: var.to_owned(),
                message: format!("{n} is larger than {}", u32::MAX),
            })
    };
    let connection_limits = ConnectionLimits {
        header_read_timeout: lookup.millis(
            "GATEWAY_HEADER_READ_TIMEOUT_MS",
            file.header_read_timeout_ms,
            10_000,
        )?,
        idle_timeout: lookup.millis("GATEWAY_IDLE_TIMEOUT_MS", file.idle_timeout_ms, 75_000)?,
        max_per_ip: limit(
            "GATEWAY_MAX_CONNECTIONS_PER_IP",
            file.max_connections_per_ip,
            256,
        )?,
    };
    let workers = match lookup.number("GATEWAY_WORKERS", file.workers)? {
        Some(0) => {
            return Err(ConfigError::Invalid {
                origin: "GATEWAY_WORKERS".into(),
                message: "must be at least 1".into(),
            });
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(1024),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    Ok(Config {
        listen,
        workers,
        api,
        inference,
        health_check,
        health_all_timeout: lookup.millis(
            "GATEWAY_HEALTH_ALL_TIMEOUT_MS",
            file.health_all_timeout_ms,
            1_000,
        )?,
        rate_limits,
        max_body_bytes: lookup
            .number("GATEWAY_MAX_BODY_BYTES", file.max_body_bytes)?
            .unwrap_or(10 * 1024 * 1024),
        drain_timeout: lookup.millis("GATEWAY_DRAIN_TIMEOUT_MS", file.drain_timeout_ms, 10_000)?,
        trusted_proxies,
        health_detail_networks,
        health_all_cache: lookup.millis(
            "GATEWAY_HEALTH_ALL_CACHE_MS",
            file.health_all_cache_ms,
            2_000,
        )?,
        v1_streams_per_caller: limit(
            "GATEWAY_V1_STREAMS_PER_CALLER",
            file.v1_streams_per_caller,
            4,
        )?,
        connection_limits,
        edge_auth: resolve_edge_auth(env, file)?,
    })
}

/// Whether a pool may be given an upstream key, and why not.
enum KeyRule {
    Accepted,
    Refused(&'static str),
}

fn resolve_pool(
    lookup: &Lookup,
    var: &str,
    key: &str,
    file: &FilePool,
    default_health_path: &str,
    default_response_ms: u64,
    key_rule: KeyRule,
) -> Result<PoolConfig, ConfigError> {
    let upstreams_var = format!("GATEWAY_{var}_UPSTREAMS");
    let upstreams = lookup
        .list(
            &upstreams_var,
            file.upstreams.as_deref(),
            &format!("pools.{key}.upstreams"),
            parse_upstream,
        )?
        .filter(|list| !list.is_empty())
        .ok_or_else(|| {
            ConfigError::Missing(format!(
                "no {key} upstreams: set {upstreams_var} (comma-separated http:// URLs) or pools.{key}.upstreams in GATEWAY_CONFIG"
            ))
        })?;
    let health_path = lookup
        .text(
            &format!("GATEWAY_{var}_HEALTH_PATH"),
            file.health_path.as_ref(),
            &format!("pools.{key}.health_path"),
            parse_path,
        )?
        .unwrap_or_else(|| default_health_path.to_owned());
    // Empty is unset, as for JWT_SECRET: compose renders an unset `${INFERENCE_API_KEY}` as "".
    let upstream_key = lookup
        .text(
            &format!("GATEWAY_{var}_UPSTREAM_KEY"),
            file.upstream_key.as_ref(),
            &format!("pools.{key}.upstream_key"),
            |value| match (&key_rule, value) {
                (_, "") => Ok(None),
                (KeyRule::Accepted, value) => UpstreamKey::parse(value).map(Some),
                (KeyRule::Refused(why), _) => Err((*why).to_owned()),
            },
        )?
        .flatten();
    Ok(PoolConfig {
        upstreams,
        health_path,
        critical: lookup
            .flag(&format!("GATEWAY_{var}_CRITICAL"), file.critical)?
            .unwrap_or(true),
        connect_timeout: lookup.millis(
            &format!("GATEWAY_{var}_CONNECT_TIMEOUT_MS"),
            file.connect_timeout_ms,
            2_000,
        )?,
        response_timeout: lookup.millis(
            &format!("GATEWAY_{var}_RESPONSE_TIMEOUT_MS"),
            file.response_timeout_ms,
            default_response_ms,
        )?,
        upstream_key,
    })
}

fn resolve_health_check(
    lookup: &Lookup,
    file: &FileHealthCheck,
) -> Result<HealthCheckConfig, ConfigError> {
    let count = |var: &str, value: Option<u64>, default: u32| -> Result<u32, ConfigError> {
        let n = lookup.number(var, value)?.unwrap_or(u64::from(default));
        u32::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ConfigError::Invalid {
                origin: var.to_owned(),
                message: format!("{n} must be between 1 and {}", u32::MAX),
            })
    };
    Ok(HealthCheckConfig {
        interval: lookup.millis("GATEWAY_HEALTH_INTERVAL_MS", file.interval_ms, 5_000)?,
        timeout: lookup.millis("GATEWAY_HEALTH_TIMEOUT_MS", file.timeout_ms, 1_000)?,
        failures_to_eject: count(
            "GATEWAY_HEALTH_FAILURES_TO_EJECT",
            file.failures_to_eject,
            2,
        )?,
        successes_to_return: count(
            "GATEWAY_HEALTH_SUCCESSES_TO_RETURN",
            file.successes_to_return,
            2,
        )?,
    })
}

fn resolve_edge_auth(env: &Environment, file: &FileConfig) -> Result<EdgeAuth, ConfigError> {
    let api_keys: Vec<String> = match env.get("GATEWAY_API_KEYS") {
        Some(keys) => split_list(keys).map(str::to_owned).collect(),
        None => file.api_keys.clone().unwrap_or_default(),
    };
    let jwt_secret = env
        .get("JWT_SECRET")
        .map(str::to_owned)
        .or_else(|| file.jwt_secret.clone())
        .filter(|secret| !secret.is_empty());
    if api_keys.is_empty() && jwt_secret.is_none() {
        return Err(ConfigError::Missing(
            "/v1 must never be open: set JWT_SECRET (the api's HS256 secret) and/or GATEWAY_API_KEYS (comma-separated)".into(),
        ));
    }
    Ok(EdgeAuth {
        api_keys,
        jwt_secret,
    })
}

/// Looks a setting up in the environment, then in the file, and parses it with its origin.
struct Lookup<'a> {
    env: &'a Environment,
    source: Option<&'a Source<'a>>,
}

impl Lookup<'_> {
    fn file_origin(&self, span: std::ops::Range<usize>, key: &str) -> String {
        match self.source {
            Some(source) => source.origin(span, key),
            None => key.to_owned(),
        }
    }

    fn text<T>(
        &self,
        var: &str,
        file: Option<&Spanned<String>>,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        if let Some(value) = self.env.get(var) {
            return parse(value)
                .map(Some)
                .map_err(|message| ConfigError::Invalid {
                    origin: var.to_owned(),
                    message,
                });
        }
        file.map(|value| {
            parse(value.get_ref()).map_err(|message| ConfigError::Invalid {
                origin: self.file_origin(value.span(), key),
                message,
            })
        })
        .transpose()
    }

    fn list<T>(
        &self,
        var: &str,
        file: Option<&[Spanned<String>]>,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<Vec<T>>, ConfigError> {
        if let Some(value) = self.env.get(var) {
            return split_list(value)
                .map(|item| {
                    parse(item).map_err(|message| ConfigError::Invalid {
                        origin: var.to_owned(),
                        message,
                    })
                })
                .collect::<Result<_, _>>()
                .map(Some);
        }
        file.map(|items| {
            items
                .iter()
                .map(|item| {
                    parse(item.get_ref().trim()).map_err(|message| ConfigError::Invalid {
                        origin: self.file_origin(item.span(), key),
                        message,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()
    }

    fn quota(
        &self,
        var: &str,
        file: Option<&Spanned<String>>,
        key: &str,
        default: &str,
    ) -> Result<Option<Quota>, ConfigError> {
        match self.text(var, file, key, Quota::parse)? {
            Some(quota) => Ok(quota),
            None => Quota::parse(default).map_err(|message| ConfigError::Invalid {
                origin: format!("default of {var}"),
                message,
            }),
        }
    }

    fn number(&self, var: &str, file: Option<u64>) -> Result<Option<u64>, ConfigError> {
        match self.env.get(var) {
            Some(value) => value
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| ConfigError::Invalid {
                    origin: var.to_owned(),
                    message: format!("`{value}` is not a whole number"),
                }),
            None => Ok(file),
        }
    }

    fn millis(&self, var: &str, file: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
        Ok(Duration::from_millis(
            self.number(var, file)?.unwrap_or(default),
        ))
    }

    fn flag(&self, var: &str, file: Option<bool>) -> Result<Option<bool>, ConfigError> {
        match self.env.get(var) {
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(other) => Err(ConfigError::Invalid {
                origin: var.to_owned(),
                message: format!("`{other}` is not true or false"),
            }),
            None => Ok(file),
        }
    }
}

/// Loopback only: the default of the trusted proxies and of the health-detail networks. A
/// private range is not a proxy: anyone on it (a client of nginx on the office network, another
/// container) could name any client in `X-Forwarded-For`. Deployments name nginx's address
/// (the rendered compose file pins it).
fn loopback() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|net| net.parse().ok())
        .collect()
}

fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not an address such as 0.0.0.0:8080"))
}

fn parse_net(value: &str) -> Result<IpNet, String> {
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{value}` is not an IP address or CIDR network"))
}

fn parse_path(value: &str) -> Result<String, String> {
    if value.starts_with('/') && value.parse::<Uri>().is_ok() {
        Ok(value.to_owned())
    } else {
        Err(format!("`{value}` is not an absolute path such as /health"))
    }
}

/// An upstream is `http://host[:port]` with no path: the gateway forwards paths unchanged.
pub fn parse_upstream(value: &str) -> Result<Upstream, String> {
    let uri: Uri = value
        .parse()
        .map_err(|err| format!("`{value}` is not a URL: {err}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "`{value}`: https upstreams are not supported (the gateway has no TLS stack; use http:// on the internal network)"
            ));
        }
        _ => return Err(format!("`{value}` is not an http:// URL")),
    }
    let authority = uri
        .authority()
        .filter(|a| !a.host().is_empty())
        .ok_or_else(|| format!("`{value}` has no host"))?
        .clone();
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "`{value}` has a path; upstreams are http://host:port and receive paths unchanged"
        ));
    }
    let authority = match authority.port_u16() {
        Some(_) => authority,
        None => format!("{}:80", authority.host())
            .parse()
            .map_err(|err| format!("`{value}`: {err}"))?,
    };
    Ok(Upstream { authority })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Environment {
        Environment(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    const MINIMAL: &[(&str, &str)] = &[
        ("GATEWAY_API_UPSTREAMS", "http://api:8000"),
        (
            "GATEWAY_INFERENCE_UPSTREAMS",
            "http://10.0.0.2:8001, http://10.0.0.3:8001",
        ),
        ("JWT_SECRET", "s3cret"),
    ];

    #[test]
    fn minimal_environment_gets_defaults() {
        let config = load(&env(MINIMAL)).expect("valid");
        assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(config.api.upstreams[0].url(), "http://api:8000");
        assert_eq!(config.inference.upstreams.len(), 2);
        assert_eq!(config.inference.health_path, "/health");
        assert_eq!(config.api.health_path, "/api/health");
        assert!(config.rate_limits.general.is_some());
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn bad_url_names_the_variable() {
        let mut e = env(MINIMAL);
        e.0.insert("GATEWAY_API_UPSTREAMS".into(), "http://a:1,ftp://b".into());
        let err = load(&e).expect_err("invalid").to_string();
        assert!(err.starts_with("GATEWAY_API_UPSTREAMS:"), "{err}");
        assert!(err.contains("ftp://b"), "{err}");
        assert!(parse_upstream("https://x").is_err());
        assert!(parse_upstream("http://x/api").is_err());
        assert_eq!(parse_upstream("http://x").expect("ok").url(), "http://x:80");
    }

    #[test]
    fn open_v1_is_refused() {
        let e = env(&MINIMAL[..2]);
        let err = load(&e).expect_err("no auth").to_string();
        assert!(err.contains("JWT_SECRET"), "{err}");
    }

    #[test]
    fn upstream_key_is_checked_and_never_shown() {
        let mut e = env(MINIMAL);
        e.0.insert("GATEWAY_INFERENCE_UPSTREAM_KEY".into(), "b-key-7f3e".into());
        let config = load(&e).expect("valid");
        let debug = format!("{config:?}");
        assert!(debug.contains("upstream_key: Some(redacted)"), "{debug}");
        assert!(!debug.contains("b-key-7f3e"), "{debug}");
        assert!(!format!("{:?}", config.api).contains("Some(redacted)"));
        // Empty is unset: compose renders an unset `${INFERENCE_API_KEY}` as "".
        e.0.insert("GATEWAY_INFERENCE_UPSTREAM_KEY".into(), String::new());
        let config = load(&e).expect("empty is unset");
        assert!(format!("{config:?}").contains("upstream_key: None"));
        for bad in ["two words", " lead", "trail\n", "caf\u{e9}", "nul\0"] {
            e.0.insert("GATEWAY_INFERENCE_UPSTREAM_KEY".into(), bad.into());
            let err = load(&e).expect_err(bad).to_string();
            assert!(err.starts_with("GATEWAY_INFERENCE_UPSTREAM_KEY:"), "{err}");
            assert!(!err.contains(bad.trim()), "the key is shown: {err}");
        }
    }

    #[test]
    fn the_api_pool_takes_no_upstream_key() {
        // The api reads the caller's own `Authorization` (a user's JWT); a key would replace it.
        let mut e = env(MINIMAL);
        e.0.insert("GATEWAY_API_UPSTREAM_KEY".into(), "k".into());
        let err = load(&e).expect_err("api key refused").to_string();
        assert!(err.starts_with("GATEWAY_API_UPSTREAM_KEY:"), "{err}");
        let path = write_file(
            "api-key.toml",
            "[pools.api]\nupstreams = [\"http://a:1\"]\nupstream_key = \"k\"\n",
        );
        let e = env(&[
            ("GATEWAY_CONFIG", path.to_str().expect("utf-8")),
            ("GATEWAY_INFERENCE_UPSTREAMS", "http://b:2"),
            ("JWT_SECRET", "x"),
        ]);
        let err = load(&e).expect_err("api key refused").to_string();
        assert!(
            err.contains("line 3, key `pools.api.upstream_key`"),
            "{err}"
        );
    }

    #[test]
    fn upstream_key_in_the_file_names_its_line() {
        let path = write_file(
            "inference-key.toml",
            "jwt_secret = \"x\"\n[pools.api]\nupstreams = [\"http://a:1\"]\n[pools.inference]\nupstreams = [\"http://b:2\"]\nupstream_key = \"has space\"\n",
        );
        let e = env(&[("GATEWAY_CONFIG", path.to_str().expect("utf-8"))]);
        let err = load(&e).expect_err("bad key").to_string();
        assert!(
            err.contains("line 6, key `pools.inference.upstream_key`"),
            "{err}"
        );
        assert!(!err.contains("has space"), "{err}");
        let e = env(&[
            ("GATEWAY_CONFIG", path.to_str().expect("utf-8")),
            ("GATEWAY_INFERENCE_UPSTREAM_KEY", "from-env"),
        ]);
        let config = load(&e).expect("env wins");
        assert!(format!("{config:?}").contains("upstream_key: Some(redacted)"));
    }

    fn write_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gateway-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let path = write_file(
            "unknown.toml",
            "listen = \"127.0.0.1:9000\"\n\n[pools.api]\nupstream = [\"http://a:1\"]\n",
        );
        let e = env(&[("GATEWAY_CONFIG", path.to_str().expect("utf-8"))]);
        let err = load(&e).expect_err("unknown key").to_string();
        assert!(err.contains(path.to_str().expect("utf-8")), "{err}");
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("upstream"), "{err}");
    }

    #[test]
    fn example_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.example.toml");
        let e = env(&[
            ("GATEWAY_CONFIG", path.to_str().expect("utf-8")),
            ("JWT_SECRET", "x"),
        ]);
        let config = load(&e).expect("the example is valid");
        assert_eq!(config.api.upstreams[0].url(), "http://api:8000");
        assert_eq!(config.inference.response_timeout, Duration::from_secs(120));
        assert_eq!(config.trusted_proxies, loopback());
        assert_eq!(config.connection_limits.max_per_ip, Some(256));
    }

    #[test]
    fn bad_value_in_file_names_line_and_key_and_env_wins() {
        let path = write_file(
            "values.toml",
            "jwt_secret = \"x\"\n[pools.api]\nupstreams = [\"http://a:1\"]\n[pools.inference]\nupstreams = [\"http://b:2\"]\n[rate_limits]\nchat = \"lots\"\n",
        );
        let e = env(&[("GATEWAY_CONFIG", path.to_str().expect("utf-8"))]);
        let err = load(&e).expect_err("bad quota").to_string();
        assert!(err.contains("line 7, key `rate_limits.chat`"), "{err}");
        let e = env(&[
            ("GATEWAY_CONFIG", path.to_str().expect("utf-8")),
            ("GATEWAY_RATE_CHAT", "off"),
        ]);
        let config = load(&e).expect("env overrides file");
        assert!(config.rate_limits.chat.is_none());
        assert_eq!(config.inference.upstreams[0].url(), "http://b:2");
    }
}
