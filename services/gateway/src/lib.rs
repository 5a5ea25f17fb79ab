//! cairn's gateway: the edge service nginx proxies to, in front of the `api` and `inference`
//! pools. It routes `/api/*` to the api and `/v1/*` to inference (paths unchanged), round-robin
//! over healthy instances with active and passive health checks; serves `/api/health`,
//! `/api/health/all` and `/metrics`; sets request ids and `X-Forwarded-*`; streams SSE and
//! tunnels WebSockets; rate-limits per client (address, or on `/v1` the authenticated caller)
//! and bounds each `/v1` caller's open streams; protects `/v1` with an API key or the api's JWT;
//! bounds slow and idle connections and connections per address. There is no TLS stack: nginx
//! terminates TLS.
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
//! | `GATEWAY_INFERENCE_UPSTREAM_KEY` | `pools.inference.upstream_key` | unset | Inference's `INFERENCE_API_KEY`: every request forwarded to inference carries `Authorization: Bearer <key>` (health probes do not: `/health` is open). Visible ASCII, no spaces; empty is unset; never logged. An inference 401 becomes a 502 `upstream_unauthorized`. |
//! | `GATEWAY_API_UPSTREAM_KEY` | `pools.api.upstream_key` | unset | Refused at start-up: the api reads the caller's own `Authorization` (a user's JWT), which a key would replace. |
//! | `GATEWAY_HEALTH_INTERVAL_MS` | `health_check.interval_ms` | `5000` | Active health check period. |
//! | `GATEWAY_HEALTH_TIMEOUT_MS` | `health_check.timeout_ms` | `1000` | Timeout of one active probe. |
//! | `GATEWAY_HEALTH_FAILURES_TO_EJECT` | `health_check.failures_to_eject` | `2` | Consecutive failed probes that take an instance out. |
//! | `GATEWAY_HEALTH_SUCCESSES_TO_RETURN` | `health_check.successes_to_return` | `2` | Consecutive good probes that bring it back. |
//! | `GATEWAY_HEALTH_ALL_TIMEOUT_MS` | `health_all_timeout_ms` | `1000` | Per-instance timeout of `/api/health/all`. |
//! | `GATEWAY_RATE_GENERAL` | `rate_limits.general` | `100/s,burst=200` | Per-client quota of every proxied request and of outside `/api/health/all` callers (`N/s`, `N/m`, `N/h`, optional `,burst=B`, or `off`); a client is its address (IPv6: /64), on `/v1` the authenticated caller. |
//! | `GATEWAY_RATE_AUTH` | `rate_limits.auth` | `10/m,burst=5` | Extra quota of `/api/auth/*`. |
//! | `GATEWAY_RATE_CHAT` | `rate_limits.chat` | `60/m,burst=10` | Extra quota of `/v1/chat/completions` and `/v1/completions`. |
//! | `GATEWAY_V1_STREAMS_PER_CALLER` | `v1_streams_per_caller` | `4` | Open `/v1` responses per caller (until the body ends or is dropped); `0` is no limit. |
//! | `GATEWAY_MAX_BODY_BYTES` | `max_body_bytes` | `10485760` | Largest request body (413 beyond). |
//! | `GATEWAY_DRAIN_TIMEOUT_MS` | `drain_timeout_ms` | `10000` | After SIGTERM, how long open requests and streams may finish. |
//! | `GATEWAY_TRUSTED_PROXIES` | `trusted_proxies` | `127.0.0.0/8, ::1` | Comma-separated IPs/CIDRs (nginx) whose `X-Forwarded-For` names the client (its right-most entry that is not a trusted proxy). A private range is not a proxy: name nginx's address (compose: the `ingress` subnet). |
//! | `GATEWAY_HEALTH_DETAIL_NETWORKS` | `health_detail_networks` | `127.0.0.0/8, ::1` | Direct callers (no `X-Forwarded-For`/`Forwarded`) from here see `/api/health/all` in detail; others get `{"status"}`. |
//! | `GATEWAY_HEALTH_ALL_CACHE_MS` | `health_all_cache_ms` | `2000` | How long one round of `/api/health/all` probes is reused. |
//! | `GATEWAY_HEADER_READ_TIMEOUT_MS` | `header_read_timeout_ms` | `10000` | Time for a request head, from its first byte (or the accept). |
//! | `GATEWAY_IDLE_TIMEOUT_MS` | `idle_timeout_ms` | `75000` | A keep-alive connection with nothing in flight is closed after this. |
//! | `GATEWAY_MAX_CONNECTIONS_PER_IP` | `max_connections_per_ip` | `256` | Connections per client address (IPv6: /64); trusted proxies exempt; `0` is no cap. |
//! | `GATEWAY_API_KEYS` | `api_keys` | unset | Comma-separated keys accepted as `Authorization: Bearer KEY` on `/v1`. |
//! | `JWT_SECRET` | `jwt_secret` | unset | The api's HS256 secret; its tokens are accepted on `/v1`. At least one of the two must be set. |
//! | `RUST_LOG` | | `info` | Log filter. |
//! | `LOG_FORMAT` | | `json` | `pretty` for humans. |
//!
//! Upstreams receive `X-Request-Id`, `X-Forwarded-For`/`-Proto`/`-Host`, `X-Real-IP`, and on
//! `/v1` `x-cairn-user` (the JWT's `sub`, `api-key:N`, or `api-key:N/user:ID` when an API key
//! holder names its end user in `X-Cairn-End-User`); any `x-cairn-*` header a client sends is
//! dropped, and the caller's `Authorization` is not forwarded to inference (the gateway's own
//! `GATEWAY_INFERENCE_UPSTREAM_KEY` is, when set).

pub mod app;
pub mod client_body;
pub mod config;
pub mod connection_cap;
pub mod connection_timeouts;
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
pub mod stream_limit;
pub mod upstream;
