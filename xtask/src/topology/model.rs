//! The topology's data, exactly as the TOML file spells it. Unknown keys are errors
//! (`deny_unknown_fields`) and fields that validation may complain about keep their position in
//! the file (`Spanned`) so the error can name the line.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_spanned::Spanned;

/// A whole deployment. Maps are ordered so every rendering is deterministic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub site: Site,
    pub servers: BTreeMap<String, Server>,
    #[serde(default)]
    pub networks: BTreeMap<String, Network>,
    #[serde(default)]
    pub secrets: BTreeMap<String, Secret>,
    /// Per-deployment values only the operator knows (a domain, an address, a host folder):
    /// `${NAME}` in the fields that allow it, a variable of the server's `.env`.
    #[serde(default)]
    pub settings: BTreeMap<String, Setting>,
    pub images: BTreeMap<String, Image>,
    pub services: BTreeMap<String, Service>,
}

/// The public web site nginx serves on the edge server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// The service that runs nginx; its server is the edge.
    pub service: Spanned<String>,
    /// The service `/api/` and `/v1/` are proxied to.
    pub upstream: Spanned<String>,
    /// `server_name`s; left out, nginx answers for any host (`_`), which needs no domain baked
    /// into the config of a one-site server.
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Host directory with the certificate files, mounted read-only into nginx (`${SETTING}`
    /// allowed).
    pub certificates_dir: String,
    /// Host directory the operator's certbot writes http-01 challenges into (`certbot certonly
    /// --webroot -w DIR`); nginx serves `/.well-known/acme-challenge/` from it on port 80.
    #[serde(default)]
    pub acme_webroot: Option<String>,
    /// File names inside `certificates_dir`.
    pub certificate: String,
    pub certificate_key: String,
    /// Host directory with a single-page app mounted read-only over the site built into the
    /// nginx image; left out, nginx serves the image's own site (the workspace's `web/`).
    #[serde(default)]
    pub spa_root: Option<String>,
    /// Largest request body, in MiB; every service with `body_limit_env` gets the same limit.
    pub body_limit_mib: u32,
    /// Ports nginx listens on inside its container (non-root: above 1024).
    pub http_port: u16,
    pub https_port: u16,
    /// Port of the plain-HTTP variant for the local stack, and where it finds the upstream.
    pub local_port: u16,
    pub local_upstream: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub description: String,
    /// The address other servers reach this one on (a private network); private ports bind here.
    /// An IP address, or `${SETTING}` for one the operator gives in `.env`.
    pub private_address: Spanned<String>,
    /// GPUs this server has; a service asking for a GPU must run where this is above zero.
    #[serde(default)]
    pub gpus: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// No route outside the host: for data services only.
    #[serde(default)]
    pub internal: bool,
    /// A fixed IPv4 subnet (`A.B.C.D/N`) instead of one Docker picks: for a network whose
    /// members another service trusts by address (nginx, for the gateway's
    /// `GATEWAY_TRUSTED_PROXIES`).
    #[serde(default)]
    pub subnet: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// What the operator must put in the variable; goes into `.env.example`.
    pub description: String,
    /// How `init-env.sh` makes a value; left out, the operator must supply it.
    #[serde(default)]
    pub generate: Option<Generate>,
}

/// Random value formats `init-env.sh` can generate (from `/dev/urandom`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Generate {
    /// 32 random bytes as 64 lowercase hex characters (keys, passwords, tokens; also Garage's
    /// RPC secret and S3 secret key format).
    Hex32,
    /// A Garage access key id: `GK` and 12 random bytes as 24 hex characters.
    GarageKeyId,
}

/// A value the operator gives per deployment; goes into `.env` like a secret but is never
/// generated.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setting {
    pub description: String,
    /// Written into a new `.env` when the operator gives no value.
    #[serde(default)]
    pub default: Option<String>,
    /// Shown in `.env.example` and the guide.
    #[serde(default)]
    pub example: Option<String>,
}

/// An image a service runs: one cairn builds (pinned at render time by the digest of the build)
/// or a third-party one pinned here by tag and digest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Image {
    /// Built by `cargo xtask image`; the value names the image in the OCI layout.
    Build(Spanned<String>),
    /// `name:tag@sha256:…`.
    Reference(Spanned<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub server: Spanned<String>,
    pub image: Spanned<String>,
    /// Arguments after the image's entrypoint.
    #[serde(default)]
    pub command: Vec<String>,
    /// The port the service listens on inside its container (what `links` point at).
    pub port: Option<u16>,
    /// Ports published on the host.
    #[serde(default)]
    pub publish: Vec<Spanned<Publish>>,
    /// `uid:gid`; never root.
    pub user: Spanned<String>,
    /// Memory limit, e.g. `256m`, `2g`.
    pub memory: String,
    #[serde(default = "one")]
    pub replicas: u32,
    pub health: Health,
    #[serde(default)]
    pub depends_on: Vec<Spanned<String>>,
    #[serde(default)]
    pub networks: Vec<Spanned<String>>,
    /// Plain values; `${NAME}` inside a value refers to a secret the service declares.
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<String>>,
    /// Secrets passed as environment variables of the same name.
    #[serde(default)]
    pub secrets: Vec<Spanned<String>>,
    /// Environment variables whose value is the URL of another service (`http://host:port`),
    /// reached by name on the same server or by private address across servers.
    #[serde(default)]
    pub links: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// Writable in-memory paths; the root file system is read-only.
    #[serde(default)]
    pub tmpfs: Vec<String>,
    pub gpu: Option<Spanned<Gpu>>,
    /// The largest request body this service accepts comes from the site (`body_limit_mib`),
    /// passed in this environment variable.
    pub body_limit_env: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    pub host: u16,
    pub container: u16,
    /// `public` (all interfaces) or `private` (only the server's private address).
    #[serde(default)]
    pub bind: Bind,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Bind {
    #[default]
    Public,
    Private,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Run inside the container without a shell, e.g. `["/gateway", "healthcheck"]`.
    pub command: Vec<String>,
    #[serde(default = "Health::default_interval")]
    pub interval: String,
    #[serde(default = "Health::default_timeout")]
    pub timeout: String,
    #[serde(default = "Health::default_retries")]
    pub retries: u32,
    #[serde(default = "Health::default_start_period")]
    pub start_period: String,
}

impl Health {
    fn default_interval() -> String {
        "10s".to_owned()
    }
    fn default_timeout() -> String {
        "3s".to_owned()
    }
    fn default_retries() -> u32 {
        5
    }
    fn default_start_period() -> String {
        "10s".to_owned()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// A named volume, or a host path (starting with `/` or `.`) for a bind mount.
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

impl Volume {
    /// A named volume, not a bind mount of a host path: a path starts with `/` or `.`, or is a
    /// `${SETTING}` the operator gives.
    pub fn is_named(&self) -> bool {
        !(self.source.starts_with('/')
            || self.source.starts_with('.')
            || self.source.starts_with("${"))
    }
}

/// What a GPU service needs. The model directory is mounted read-only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    /// How many GPUs; exclusive with `device_ids`.
    pub count: Option<u32>,
    pub device_ids: Option<Vec<String>>,
    /// Fraction of GPU memory the model server may use, in (0, 1].
    pub memory_utilization: f64,
    pub max_model_len: u32,
    /// Host directory with the model files, and where it appears in the container.
    pub model_dir: String,
    pub model_target: String,
}
