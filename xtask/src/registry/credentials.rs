//! Where the user's registry credentials come from: the environment
//! (`CAIRN_REGISTRY_USERNAME` + `CAIRN_REGISTRY_PASSWORD`), else Docker's `config.json`
//! (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`): `credHelpers` for the host, then
//! `credsStore`, then the inline `auths` entry, the order Docker itself uses.
//!
//! It owns finding the secret and must never print it: `Credentials`' Debug hides the secret,
//! and errors name the file, the host and the helper, never the value.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde::Deserialize;

pub const USERNAME_VAR: &str = "CAIRN_REGISTRY_USERNAME";
pub const PASSWORD_VAR: &str = "CAIRN_REGISTRY_PASSWORD";

/// A user name and its secret. The secret never reaches Debug output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("secret", &"<hidden>")
            .finish()
    }
}

/// Where a set of credentials was found (for the log line; never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Environment,
    DockerConfig(PathBuf),
    Helper(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    username: String,
    secret: String,
}

/// The credentials for `host` (as `HOST[:PORT]`), or `None` to push anonymously.
pub fn resolve(host: &str) -> Result<Option<(Credentials, Source)>> {
    if let Some(credentials) = from_environment()? {
        return Ok(Some((credentials, Source::Environment)));
    }
    let Some(path) = docker_config_path() else {
        return Ok(None);
    };
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let config: DockerConfig =
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
    from_docker_config(&config, &path, host)
}

fn from_environment() -> Result<Option<Credentials>> {
    let username = std::env::var(USERNAME_VAR).ok();
    let password = std::env::var(PASSWORD_VAR).ok();
    match (username, password) {
        (Some(username), Some(secret)) => Ok(Some(Credentials { username, secret })),
        (None, None) => Ok(None),
        _ => bail!("set both {USERNAME_VAR} and {PASSWORD_VAR}, or neither"),
    }
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker").join("config.json"))
}

fn from_docker_config(
    config: &DockerConfig,
    path: &Path,
    host: &str,
) -> Result<Option<(Credentials, Source)>> {
    if let Some(helper) = config.cred_helpers.get(host) {
        return from_helper(helper, host);
    }
    if let Some(helper) = &config.creds_store
        && let Some(found) = from_helper(helper, host)?
    {
        return Ok(Some(found));
    }
    let entry = config
        .auths
        .iter()
        .find(|(key, _)| registry_host(key) == host)
        .map(|(_, entry)| entry);
    let Some(entry) = entry else {
        return Ok(None);
    };
    let credentials = decode_entry(entry)
        .with_context(|| format!("{}: auths entry for {host}", path.display()))?;
    Ok(credentials.map(|c| (c, Source::DockerConfig(path.to_path_buf()))))
}

/// `https://host:5000/v1/` → `host:5000`: Docker writes auths keys with and without a scheme.
fn registry_host(key: &str) -> &str {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    without_scheme.split('/').next().unwrap_or(without_scheme)
}

fn decode_entry(entry: &AuthEntry) -> Result<Option<Credentials>> {
    if let (Some(username), Some(secret)) = (&entry.username, &entry.password) {
        return Ok(Some(Credentials {
            username: username.clone(),
            secret: secret.clone(),
        }));
    }
    let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .context("field \"auth\" is not base64")?;
    let decoded = String::from_utf8(decoded).context("field \"auth\" is not UTF-8")?;
    let (username, secret) = decoded
        .split_once(':')
        .context("field \"auth\" is not base64 of user:password")?;
    Ok(Some(Credentials {
        username: username.to_owned(),
        secret: secret.to_owned(),
    }))
}

/// Runs `docker-credential-<helper> get` with the host on stdin.
fn from_helper(helper: &str, host: &str) -> Result<Option<(Credentials, Source)>> {
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting credential helper {program} for {host}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(host.as_bytes())
            .with_context(|| format!("writing to {program}"))?;
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        let message = String::from_utf8_lossy(&output.stdout);
        if message.contains("credentials not found") {
            return Ok(None);
        }
        bail!("{program} get for {host} failed with {}", output.status);
    }
    let answer: HelperAnswer = serde_json::from_slice(&output.stdout).with_context(|| {
        format!("{program} get for {host}: answer is not {{Username, Secret}} JSON")
    })?;
    Ok(Some((
        Credentials {
            username: answer.username,
            secret: answer.secret,
        },
        Source::Helper(program),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> DockerConfig {
        serde_json::from_str(json).expect("test config parses")
    }

    #[test]
    fn reads_inline_auth_for_host_with_or_without_scheme() {
        let config = config(
            r#"{"auths":{"https://reg.example:5000/v1/":{"auth":"dXNlcjpwYTpzcw=="},"other":{}}}"#,
        );
        let (credentials, source) =
            from_docker_config(&config, Path::new("c.json"), "reg.example:5000")
                .expect("resolves")
                .expect("found");
        assert_eq!(credentials.username, "user");
        assert_eq!(credentials.secret, "pa:ss");
        assert_eq!(source, Source::DockerConfig(PathBuf::from("c.json")));
        assert!(
            from_docker_config(&config, Path::new("c.json"), "reg.example")
                .expect("resolves")
                .is_none()
        );
    }

    #[test]
    fn bad_auth_names_file_and_host() {
        let config = config(r#"{"auths":{"reg":{"auth":"***"}}}"#);
        let err = from_docker_config(&config, Path::new("/x/config.json"), "reg")
            .expect_err("bad base64");
        let text = format!("{err:#}");
        assert!(
            text.contains("/x/config.json") && text.contains("reg"),
            "{text}"
        );
    }

    #[test]
    fn missing_helper_is_an_error_naming_it() {
        let config = config(r#"{"credHelpers":{"reg":"cairn-no-such-helper"}}"#);
        let err = from_docker_config(&config, Path::new("c.json"), "reg").expect_err("no helper");
        assert!(format!("{err:#}").contains("docker-credential-cairn-no-such-helper"));
    }

    #[test]
    fn debug_hides_the_secret() {
        let credentials = Credentials {
            username: "u".into(),
            secret: "hunter2".into(),
        };
        assert!(!format!("{credentials:?}").contains("hunter2"));
    }
}
