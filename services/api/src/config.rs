//! The api's configuration: every environment variable it reads, parsed once at start-up into
//! [`Config`]. A missing or bad variable is an error that names it. This module must never read
//! the environment after start-up, and never print a secret.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The JWT secret used only under `API_DEV_MODE=1` when `JWT_SECRET` is unset.
const DEV_JWT_SECRET: &str = "cairn-dev-only-secret-do-not-deploy";
/// Shorter secrets make HS256 tokens brute-forceable.
const MIN_SECRET_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("environment variable {0} is required but not set")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("environment variables {0} and {1} are both set: set only one")]
    Conflict(&'static str, &'static str),
}

/// Where the database is and the password to log in with.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    /// `DATABASE_URL`, as given: it may hold a password of its own.
    pub url: String,
    /// `DATABASE_PASSWORD`, or the contents of `DATABASE_PASSWORD_FILE`: when set, the password
    /// used to log in, whatever `url` says. Handed to the driver as it is, never put into a URL,
    /// so any character may appear in it.
    pub password: Option<String>,
}

impl DatabaseConfig {
    /// Reads only the database's variables from the process environment (for `api migrate`,
    /// which needs nothing else).
    pub fn from_env() -> Result<DatabaseConfig, ConfigError> {
        database(&Env(&|name| std::env::var(name).ok()))
    }
}

/// The URL and the password may both be secret: neither is shown.
impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &"<redacted>")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Where uploaded files live.
#[derive(Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// A directory on the local filesystem (the embedded default).
    Local { dir: PathBuf },
    /// An S3-compatible server (Garage, SeaweedFS, s3s-fs, AWS).
    S3 {
        endpoint: String,
        bucket: String,
        region: String,
        access_key_id: String,
        secret_access_key: String,
    },
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageConfig::Local { dir } => f.debug_struct("Local").field("dir", dir).finish(),
            StorageConfig::S3 {
                endpoint, bucket, ..
            } => f
                .debug_struct("S3")
                .field("endpoint", endpoint)
                .field("bucket", bucket)
                .finish_non_exhaustive(),
        }
    }
}

/// The OpenAI-compatible endpoint the chat streams from, and how long to wait on it.
#[derive(Clone)]
pub struct LlmConfig {
    /// Base URL including `/v1`, e.g. `http://inference:8001/v1`.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub connect_timeout: Duration,
    pub first_token_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_tokens: u32,
    /// The model's context window in tokens (the inference server's `MAX_MODEL_LEN`): the
    /// prompt gets what is left after `max_tokens`.
    pub context_tokens: u32,
    /// Bytes of text counted as one token when estimating a prompt's size; small enough that
    /// the estimate stays above what the tokenizer really produces.
    pub bytes_per_token: u32,
}

impl std::fmt::Debug for LlmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Request and resource limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest JSON request body, bytes.
    pub json_body_bytes: usize,
    /// Largest uploaded file, bytes.
    pub upload_bytes: usize,
    /// Longest chat message, characters.
    pub message_chars: usize,
    /// LLM streams one user may have open at once.
    pub streams_per_user: usize,
    /// Messages of earlier conversation sent with each prompt.
    pub history_messages: usize,
    /// Content types an upload may have.
    pub upload_types: Vec<String>,
    /// Password hashes (Argon2, about 19 MiB each) computed at once.
    pub password_hashes: usize,
    /// How long a login or register waits for a hashing slot before a 503.
    pub password_wait: Duration,
    /// How long a readiness answer is reused before the dependencies are asked again.
    pub ready_cache: Duration,
}

#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database: DatabaseConfig,
    pub jwt_secret: String,
    pub token_ttl: Duration,
    pub dev_mode: bool,
    pub llm: LlmConfig,
    pub storage: StorageConfig,
    pub limits: Limits,
    pub system_prompt: String,
    /// How often an idle chat stream gets a keep-alive comment.
    pub keepalive: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("database", &self.database)
            .field("dev_mode", &self.dev_mode)
            .field("llm", &self.llm)
            .field("storage", &self.storage)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

const DEFAULT_SYSTEM_PROMPT: &str = "You are a patient in a simulated clinic consultation. \
Answer the clinician's questions in character, briefly and consistently.";

const DEFAULT_UPLOAD_TYPES: &str =
    "text/plain,text/markdown,text/csv,application/json,application/pdf,image/png,image/jpeg";

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Parses configuration from any variable lookup (pure: tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let env = Env(&get);
        let dev_mode = env.flag("API_DEV_MODE")?;
        Config {
            listen: env.parsed("API_LISTEN", "0.0.0.0:8000")?,
            database: database(&env)?,
            jwt_secret: jwt_secret(&env, dev_mode)?,
            token_ttl: Duration::from_secs(env.parsed("JWT_TTL_SECONDS", "86400")?),
            dev_mode,
            llm: LlmConfig {
                base_url: env
                    .required("LLM_BASE_URL")?
                    .trim_end_matches('/')
                    .to_owned(),
                model: env.required("LLM_MODEL")?,
                api_key: env.optional("LLM_API_KEY"),
                connect_timeout: env.millis("LLM_CONNECT_TIMEOUT_MS", "5000")?,
                first_token_timeout: env.millis("LLM_FIRST_TOKEN_TIMEOUT_MS", "60000")?,
                idle_timeout: env.millis("LLM_IDLE_TIMEOUT_MS", "30000")?,
                max_tokens: env.parsed("LLM_MAX_TOKENS", "512")?,
                context_tokens: env.parsed("LLM_CONTEXT_TOKENS", "8192")?,
                bytes_per_token: env.positive("LLM_BYTES_PER_TOKEN", "3")?,
            },
            storage: storage(&env)?,
            limits: Limits {
                json_body_bytes: env.parsed("API_MAX_BODY_BYTES", "65536")?,
                upload_bytes: env.parsed("API_MAX_UPLOAD_BYTES", "10485760")?,
                message_chars: env.parsed("API_MAX_MESSAGE_CHARS", "8000")?,
                streams_per_user: env.parsed("API_STREAMS_PER_USER", "2")?,
                history_messages: env.parsed("API_HISTORY_MESSAGES", "20")?,
                upload_types: env
                    .or("API_UPLOAD_TYPES", DEFAULT_UPLOAD_TYPES)
                    .split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .filter(|t| !t.is_empty())
                    .collect(),
                password_hashes: env.positive("API_PASSWORD_HASHES", &default_password_hashes())?,
                password_wait: env.millis("API_PASSWORD_WAIT_MS", "2000")?,
                ready_cache: env.millis("API_READY_CACHE_MS", "3000")?,
            },
            system_prompt: env.or("API_SYSTEM_PROMPT", DEFAULT_SYSTEM_PROMPT),
            keepalive: env.millis("API_SSE_KEEPALIVE_MS", "15000")?,
        }
        .checked()
    }

    /// Rejects settings that parse one by one but contradict each other.
    fn checked(self) -> Result<Config, ConfigError> {
        if self.llm.context_tokens <= self.llm.max_tokens {
            return Err(ConfigError::Invalid {
                name: "LLM_CONTEXT_TOKENS",
                reason: format!(
                    "{} leaves no room for a prompt next to LLM_MAX_TOKENS {}",
                    self.llm.context_tokens, self.llm.max_tokens
                ),
            });
        }
        Ok(self)
    }
}

/// Two hashing slots per CPU: enough to keep every core busy, bounded in memory.
fn default_password_hashes() -> String {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    (2 * cpus).to_string()
}

fn jwt_secret(env: &Env<'_>, dev_mode: bool) -> Result<String, ConfigError> {
    match env.optional("JWT_SECRET") {
        Some(secret) if secret.len() >= MIN_SECRET_LEN => Ok(secret),
        Some(_) => Err(ConfigError::Invalid {
            name: "JWT_SECRET",
            reason: format!("must be at least {MIN_SECRET_LEN} bytes"),
        }),
        None if dev_mode => {
            tracing::warn!(
                "API_DEV_MODE is on and JWT_SECRET is unset: using the PUBLIC development secret. \
                 Tokens are forgeable by anyone. NEVER run this in production."
            );
            Ok(DEV_JWT_SECRET.to_owned())
        }
        None => Err(ConfigError::Missing("JWT_SECRET")),
    }
}

fn database(env: &Env<'_>) -> Result<DatabaseConfig, ConfigError> {
    let url = env.required("DATABASE_URL")?;
    let password = match (
        env.optional("DATABASE_PASSWORD"),
        env.optional("DATABASE_PASSWORD_FILE"),
    ) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Conflict(
                "DATABASE_PASSWORD",
                "DATABASE_PASSWORD_FILE",
            ));
        }
        (Some(password), None) => Some(password),
        (None, Some(path)) => Some(password_file(&path)?),
        (None, None) => None,
    };
    Ok(DatabaseConfig { url, password })
}

/// The password in `DATABASE_PASSWORD_FILE` (a Docker secret): the file's contents less one
/// trailing newline (`\n` or `\r\n`). Errors name the variable and the path, never the contents.
fn password_file(path: &str) -> Result<String, ConfigError> {
    const NAME: &str = "DATABASE_PASSWORD_FILE";
    let invalid = |reason: String| ConfigError::Invalid { name: NAME, reason };
    let bytes = std::fs::read(path).map_err(|err| invalid(format!("reading {path}: {err}")))?;
    let mut text =
        String::from_utf8(bytes).map_err(|_| invalid(format!("{path} is not UTF-8 text")))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(invalid(format!("{path} holds no password")));
    }
    Ok(text)
}

fn storage(env: &Env<'_>) -> Result<StorageConfig, ConfigError> {
    match env.or("STORAGE_BACKEND", "local").as_str() {
        "local" => Ok(StorageConfig::Local {
            dir: PathBuf::from(env.or("STORAGE_DIR", "./data/files")),
        }),
        "s3" => Ok(StorageConfig::S3 {
            endpoint: env.required("S3_ENDPOINT")?,
            bucket: env.required("S3_BUCKET")?,
            region: env.or("S3_REGION", "garage"),
            access_key_id: env.required("AWS_ACCESS_KEY_ID")?,
            secret_access_key: env.required("AWS_SECRET_ACCESS_KEY")?,
        }),
        other => Err(ConfigError::Invalid {
            name: "STORAGE_BACKEND",
            reason: format!("{other:?} is neither \"local\" nor \"s3\""),
        }),
    }
}

/// The variable lookup with the parsing rules every variable shares.
struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    fn optional(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|value| !value.is_empty())
    }

    fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.optional(name).ok_or(ConfigError::Missing(name))
    }

    fn or(&self, name: &str, default: &str) -> String {
        self.optional(name).unwrap_or_else(|| default.to_owned())
    }

    fn parsed<T>(&self, name: &'static str, default: &str) -> Result<T, ConfigError>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        let raw = self.or(name, default);
        raw.parse().map_err(|err| ConfigError::Invalid {
            name,
            reason: format!("{raw:?}: {err}"),
        })
    }

    /// A number of at least 1.
    fn positive<T>(&self, name: &'static str, default: &str) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + From<u8>,
        T::Err: std::fmt::Display,
    {
        let value: T = self.parsed(name, default)?;
        if value < T::from(1) {
            return Err(ConfigError::Invalid {
                name,
                reason: "must be at least 1".to_owned(),
            });
        }
        Ok(value)
    }

    fn millis(&self, name: &'static str, default: &str) -> Result<Duration, ConfigError> {
        self.parsed(name, default).map(Duration::from_millis)
    }

    fn flag(&self, name: &'static str) -> Result<bool, ConfigError> {
        match self.or(name, "0").as_str() {
            "1" | "true" => Ok(true),
            "0" | "false" => Ok(false),
            other => Err(ConfigError::Invalid {
                name,
                reason: format!("{other:?} is not one of 1, true, 0, false"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    const BASE: &[(&str, &str)] = &[
        ("DATABASE_URL", "postgres://db/app"),
        ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ("LLM_BASE_URL", "http://inference:8001/v1/"),
        ("LLM_MODEL", "qwen"),
    ];

    #[test]
    fn minimal_environment_parses_with_defaults() {
        let config = parse(BASE).expect("valid");
        assert_eq!(config.listen.port(), 8000);
        assert_eq!(config.llm.base_url, "http://inference:8001/v1");
        assert!(matches!(config.storage, StorageConfig::Local { .. }));
    }

    #[test]
    fn missing_variable_is_named() {
        let vars: Vec<_> = BASE
            .iter()
            .copied()
            .filter(|(k, _)| *k != "LLM_MODEL")
            .collect();
        assert_eq!(
            parse(&vars).expect_err("missing"),
            ConfigError::Missing("LLM_MODEL")
        );
    }

    #[test]
    fn no_default_secret_outside_dev_mode() {
        let vars: Vec<_> = BASE
            .iter()
            .copied()
            .filter(|(k, _)| *k != "JWT_SECRET")
            .collect();
        assert_eq!(
            parse(&vars).expect_err("no secret"),
            ConfigError::Missing("JWT_SECRET")
        );
        let mut dev = vars.clone();
        dev.push(("API_DEV_MODE", "1"));
        assert_eq!(parse(&dev).expect("dev").jwt_secret, DEV_JWT_SECRET);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let mut vars = BASE.to_vec();
        vars.push(("API_LISTEN", "nowhere"));
        let err = parse(&vars).expect_err("bad");
        assert!(err.to_string().contains("API_LISTEN"), "{err}");
        let mut vars = BASE.to_vec();
        vars.push(("STORAGE_BACKEND", "s3"));
        assert_eq!(
            parse(&vars).expect_err("s3 needs endpoint"),
            ConfigError::Missing("S3_ENDPOINT")
        );
        let mut vars: Vec<_> = BASE
            .iter()
            .copied()
            .filter(|(k, _)| *k != "JWT_SECRET")
            .collect();
        vars.push(("JWT_SECRET", "short"));
        let err = parse(&vars).expect_err("short secret");
        assert!(err.to_string().contains("JWT_SECRET"), "{err}");
    }

    #[test]
    fn the_context_must_leave_room_for_a_prompt() {
        let mut vars = BASE.to_vec();
        vars.push(("LLM_CONTEXT_TOKENS", "512"));
        let err = parse(&vars).expect_err("no room");
        assert!(err.to_string().contains("LLM_CONTEXT_TOKENS"), "{err}");
        let mut vars = BASE.to_vec();
        vars.push(("API_PASSWORD_HASHES", "0"));
        let err = parse(&vars).expect_err("no hashing at all");
        assert!(err.to_string().contains("API_PASSWORD_HASHES"), "{err}");
        let config = parse(BASE).expect("defaults");
        assert_eq!(config.llm.context_tokens, 8192);
        assert!(config.limits.password_hashes >= 2);
    }

    #[test]
    fn debug_output_hides_secrets() {
        let mut vars = BASE.to_vec();
        vars.push(("LLM_API_KEY", "sk-very-secret"));
        vars.push(("DATABASE_PASSWORD", "pg-very-secret"));
        let shown = format!("{:?}", parse(&vars).expect("valid"));
        assert!(!shown.contains("sk-very-secret"), "{shown}");
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(!shown.contains("pg-very-secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn database_password_is_taken_as_it_is() {
        assert_eq!(parse(BASE).expect("no password").database.password, None);
        let mut vars = BASE.to_vec();
        vars.push(("DATABASE_PASSWORD", "p@ss:w/rd?#%$ word"));
        let database = parse(&vars).expect("valid").database;
        assert_eq!(database.url, "postgres://db/app");
        assert_eq!(database.password.as_deref(), Some("p@ss:w/rd?#%$ word"));
    }

    #[test]
    fn database_password_file_loses_one_trailing_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("password");
        let path = file.to_str().expect("utf-8");
        for (contents, expected) in [
            ("p@ss word\n", "p@ss word"),
            ("p@ss word\r\n", "p@ss word"),
            ("p@ss word", "p@ss word"),
            ("p@ss word\n\n", "p@ss word\n"),
            (" spaced ", " spaced "),
        ] {
            std::fs::write(&file, contents).expect("write");
            let mut vars = BASE.to_vec();
            vars.push(("DATABASE_PASSWORD_FILE", path));
            let database = parse(&vars).expect("valid").database;
            assert_eq!(database.password.as_deref(), Some(expected), "{contents:?}");
        }
    }

    #[test]
    fn database_password_errors_name_the_variables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("password");
        std::fs::write(&file, "from-the-file\n").expect("write");
        let path = file.to_str().expect("utf-8");
        let mut vars = BASE.to_vec();
        vars.push(("DATABASE_PASSWORD", "from-the-variable"));
        vars.push(("DATABASE_PASSWORD_FILE", path));
        let err = parse(&vars).expect_err("both");
        assert_eq!(
            err,
            ConfigError::Conflict("DATABASE_PASSWORD", "DATABASE_PASSWORD_FILE")
        );
        assert!(err.to_string().contains("DATABASE_PASSWORD_FILE"), "{err}");

        let missing = dir.path().join("absent");
        let missing = missing.to_str().expect("utf-8");
        let mut vars = BASE.to_vec();
        vars.push(("DATABASE_PASSWORD_FILE", missing));
        let err = parse(&vars).expect_err("no file").to_string();
        assert!(
            err.contains("DATABASE_PASSWORD_FILE") && err.contains(missing),
            "{err}"
        );

        std::fs::write(&file, "\n").expect("write");
        let mut vars = BASE.to_vec();
        vars.push(("DATABASE_PASSWORD_FILE", path));
        let err = parse(&vars).expect_err("empty").to_string();
        assert!(err.contains("DATABASE_PASSWORD_FILE"), "{err}");
    }
}
