//! An image reference as a topology writes it, `[HOST[:PORT]/]PATH:TAG[@sha256:HEX]`, and where
//! it lives: the registry host to talk to (Docker Hub's short names expanded the way `docker
//! pull` does) and the repository path inside it.
//!
//! Pure parsing; it never talks to a registry.

use anyhow::{Result, bail};

use super::target::{check_name_component, check_tag};

/// Docker Hub: the name a reference uses, and the host its API answers on.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// One parsed reference. `name` keeps the spelling of the file (`docker.io/library/postgres`
/// stays as written), so rewriting a pin changes only the digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    /// Everything before `:TAG`, as written.
    pub name: String,
    pub tag: String,
    /// `sha256:<64 hex>` when pinned.
    pub digest: Option<String>,
    /// The host the registry API answers on.
    pub api_host: String,
    /// The repository path on that host (`library/postgres` for Docker Hub's `postgres`).
    pub repository: String,
}

impl ImageReference {
    pub fn parse(text: &str) -> Result<ImageReference> {
        let (name_tag, digest) = match text.split_once('@') {
            Some((name_tag, digest)) => (name_tag, Some(digest)),
            None => (text, None),
        };
        if let Some(digest) = digest
            && !is_sha256_digest(digest)
        {
            bail!("{text:?}: the digest must be sha256:<64 lowercase hex>, not {digest:?}");
        }
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let Some(colon) = name_tag[last_slash..].rfind(':').map(|i| i + last_slash) else {
            bail!("{text:?} has no tag: write NAME:TAG (pin resolves the tag to its digest)");
        };
        let (name, tag) = (&name_tag[..colon], &name_tag[colon + 1..]);
        check_tag(tag).map_err(|err| anyhow::anyhow!("{text:?}: {err}"))?;
        let (host, path) = split_host(name);
        if path.is_empty() {
            bail!("{text:?} names no repository");
        }
        for component in path.split('/') {
            check_name_component(component).map_err(|err| anyhow::anyhow!("{text:?}: {err}"))?;
        }
        let (api_host, repository) = match host {
            None | Some(DOCKER_HUB) | Some("index.docker.io") => (
                DOCKER_HUB_API.to_owned(),
                if path.contains('/') {
                    path.to_owned()
                } else {
                    format!("library/{path}")
                },
            ),
            Some(host) => (host.to_owned(), path.to_owned()),
        };
        Ok(ImageReference {
            name: name.to_owned(),
            tag: tag.to_owned(),
            digest: digest.map(str::to_owned),
            api_host,
            repository,
        })
    }

    /// `NAME:TAG@DIGEST`: the reference pinned to `digest`.
    pub fn pinned(&self, digest: &str) -> String {
        format!("{}:{}@{digest}", self.name, self.tag)
    }

    /// `NAME:TAG`, for messages.
    pub fn name_tag(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }
}

/// The registry host of a name, when its first component is one (has a dot or a port, or is
/// `localhost`), and the repository path after it; Docker's rule.
fn split_host(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

/// `sha256:` and 64 lowercase hex digits.
pub fn is_sha256_digest(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:65e3e85dbaed8ba248841d9d58a899b6197106c23cb0ff1a132b7bfe0547e4c0";

    #[test]
    fn docker_hub_names_expand_like_docker_pull() {
        let short = ImageReference::parse("postgres:16-alpine").expect("valid");
        assert_eq!(short.api_host, "registry-1.docker.io");
        assert_eq!(short.repository, "library/postgres");
        assert_eq!(short.digest, None);
        let long = ImageReference::parse(&format!(
            "docker.io/nginxinc/nginx-unprivileged:1.27-alpine@{DIGEST}"
        ))
        .expect("valid");
        assert_eq!(long.repository, "nginxinc/nginx-unprivileged");
        assert_eq!(long.name, "docker.io/nginxinc/nginx-unprivileged");
        assert_eq!(long.digest.as_deref(), Some(DIGEST));
        assert_eq!(
            long.pinned("sha256:ab"),
            "docker.io/nginxinc/nginx-unprivileged:1.27-alpine@sha256:ab"
        );
    }

    #[test]
    fn a_host_with_a_port_is_a_registry() {
        let local = ImageReference::parse("127.0.0.1:5000/team/web:1.0").expect("valid");
        assert_eq!(local.api_host, "127.0.0.1:5000");
        assert_eq!(local.repository, "team/web");
        assert_eq!(local.tag, "1.0");
        let localhost = ImageReference::parse("localhost/web:1").expect("valid");
        assert_eq!(localhost.api_host, "localhost");
    }

    #[test]
    fn malformed_references_are_refused_with_the_reason() {
        for (text, reason) in [
            ("127.0.0.1:5000/team/web", "no tag"),
            ("web:1@sha256:abc", "64 lowercase hex"),
            ("Web:1", "repository name component"),
            ("web:-x", "not valid"),
        ] {
            let err = ImageReference::parse(text).expect_err(text).to_string();
            assert!(err.contains(reason), "{text}: {err}");
        }
    }
}
