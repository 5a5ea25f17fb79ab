//! cairn's gateway: the edge service nginx proxies to, in front of the `api` and `inference`
//! pools. It routes `/api/*` to the api and `/v1/*` to inference (paths unchanged), round-robin
//! over healthy instances with active and passive health checks; serves `/api/health`,
//! `/api/health/all` and `/metrics`; sets request ids and `X-Forwarded-*`; streams SSE and
//! tunnels WebSockets; rate-limits per client IP; protects `/v1` with an API key or the api's
//! JWT. There is no TLS stack: nginx terminates TLS.
//!
//! # Command line
//!
//! `gateway [serve]` runs the service; `gateway healthcheck` exits 0 only when the gateway
//! configured by the same environment answers `GET /api/health` on 127.0.0.1 (images carry no
//! curl; compose health checks call this).
//!
//! # Configuration
//!
//! Environment variables, optionally on top of a TOML file named by `GATEWAY_CONFIG` (the
//! environment wins). Unknown keys in the file are an error naming the file, line and key.
//! `services/gateway/gateway.example.toml` shows every key (a test keeps it valid).
//!
//! | Variable | TOML key | Default | Meaning |
//! |---|---|---|---|
//! | `GATEWAY_CONFIG` | | unset | Path of the optional TOML file. |
//! | `GATEWAY_LISTEN` | `listen` | `0.0.0.0:8080` | Address to listen on. |
//! | `GATEWAY_WORKERS` | `workers` | CPU count | Worker threads, each with its own single-threaded runtime (set it to the container's CPU limit). |
//! | `GATEWAY_API_UPSTREAMS` | `pools.api.upstreams` | required | Comma-separated `http://host:port` of the api instances. |
//! | `GATEWAY_INFERENCE_UPSTREAMS` | `pools.inference.upstreams` | required | Comma-separated `http://host:port` of the inference instances. |
//! | `GATEWAY_API_HEALTH_PATH` | `pools.api.health_path` | `/api/health` | Path probed on each api instance. |
//! | `GATEWAY_INFERENCE_HEALTH_PATH` | `pools.inference.health_path` | `/health` | Path probed on each inference instance. |
//! | `GATEWAY_API_CRITICAL` | `pools.api.critical` | `true` | A critical service that is down makes `/api/health/all` answer 503. |
//! | `GATEWAY_INFERENCE_CRITICAL` | `pools.inference.critical` | `true` | Same, for inference. |
//! | `GATEWAY_API_CONNECT_TIMEOUT_MS` | `pools.api.connect_timeout_ms` | `2000` | TCP connect timeout to an api instance (timeout: 504). |
//! | `GATEWAY_INFERENCE_CONNECT_TIMEOUT_MS` | `pools.inference.connect_timeout_ms` | `2000` | Same, for inference. |
//! | `GATEWAY_API_RESPONSE_TIMEOUT_MS` | `pools.api.response_timeout_ms` | `30000` | Time until the api's response headers (504 after); bodies and streams are not bounded. |
//! | `GATEWAY_INFERENCE_RESPONSE_TIMEOUT_MS` | `pools.inference.response_timeout_ms` | `120000` | Same, for inference. |
//! | `GATEWAY_HEALTH_INTERVAL_MS` | `health_check.interval_ms` | `5000` | Active health check period. |
//! | `GATEWAY_HEALTH_TIMEOUT_MS` | `health_check.timeout_ms` | `1000` | Timeout of one active probe. |
//! | `GATEWAY_HEALTH_FAILURES_TO_EJECT` | `health_check.failures_to_eject` | `2` | Consecutive failed probes that take an instance out. |
//! | `GATEWAY_HEALTH_SUCCESSES_TO_RETURN` | `health_check.successes_to_return` | `2` | Consecutive good probes that bring it back. |
//! | `GATEWAY_HEALTH_ALL_TIMEOUT_MS` | `health_all_timeout_ms` | `1000` | Per-instance timeout of `/api/health/all`. |
//! | `GATEWAY_RATE_GENERAL` | `rate_limits.general` | `100/s,burst=200` | Per-client-IP quota of every proxied request (`N/s`, `N/m`, `N/h`, optional `,burst=B`, or `off`). |
//! | `GATEWAY_RATE_AUTH` | `rate_limits.auth` | `10/m,burst=5` | Extra quota of `/api/auth/*`. |
//! | `GATEWAY_RATE_CHAT` | `rate_limits.chat` | `60/m,burst=10` | Extra quota of `/v1/chat/completions` and `/v1/completions`. |
//! | `GATEWAY_MAX_BODY_BYTES` | `max_body_bytes` | `10485760` | Largest request body (413 beyond). |
//! | `GATEWAY_DRAIN_TIMEOUT_MS` | `drain_timeout_ms` | `10000` | After SIGTERM, how long open requests and streams may finish. |
//! | `GATEWAY_TRUSTED_PROXIES` | `trusted_proxies` | loopback and private ranges | Comma-separated IPs/CIDRs (nginx) whose `X-Forwarded-For` names the client; the default trusts `127.0.0.0/8, ::1, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7` because the gateway is reachable only through nginx on an internal network. |
//! | `GATEWAY_API_KEYS` | `api_keys` | unset | Comma-separated keys accepted as `Authorization: Bearer KEY` on `/v1`. |
//! | `JWT_SECRET` | `jwt_secret` | unset | The api's HS256 secret; its tokens are accepted on `/v1`. At least one of the two must be set. |
//! | `RUST_LOG` | | `info` | Log filter. |
//! | `LOG_FORMAT` | | `json` | `pretty` for humans. |
//!
//! Upstreams receive `X-Request-Id`, `X-Forwarded-For`/`-Proto`/`-Host`, `X-Real-IP`, and on
//! `/v1` `x-cairn-user` (the JWT's `sub`, or `api-key:N`); any `x-cairn-*` header a client sends
//! is dropped, and `Authorization` is not forwarded to inference.

pub mod app;
pub mod client_body;
pub mod config;
pub mod dispatch;
pub mod edge_auth;
pub mod error;
pub mod forwarding;
pub mod health;
pub mod health_check;
pub mod observe;
pub mod pool;
pub mod proxy;
pub mod rate_limit;
pub mod response_timer;
pub mod server;
pub mod upstream;
