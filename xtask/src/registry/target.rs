//! Where a push goes and what its names may be: `HOST[:PORT]/NAMESPACE`, repository name
//! components and tags, checked against the distribution grammar before any request is sent.
//!
//! Pure parsing and validation; it never talks to a registry.

use anyhow::{Context, Result, bail};

/// `HOST[:PORT]/NAMESPACE`: where images go. Image `api` lands in `NAMESPACE/api`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryTarget {
    pub host: String,
    pub namespace: String,
}

impl RegistryTarget {
    pub fn parse(text: &str) -> Result<RegistryTarget> {
        if text.contains("://") {
            bail!(
                "--registry {text:?}: write HOST[:PORT]/NAMESPACE without a scheme (use --plain-http for http)"
            );
        }
        let (host, namespace) = text.split_once('/').unwrap_or((text, ""));
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '@') {
            bail!("--registry {text:?}: the host is empty or malformed");
        }
        let namespace = namespace.trim_end_matches('/');
        for component in namespace.split('/').filter(|_| !namespace.is_empty()) {
            check_name_component(component)
                .with_context(|| format!("--registry {text:?}: namespace"))?;
        }
        Ok(RegistryTarget {
            host: host.to_owned(),
            namespace: namespace.to_owned(),
        })
    }

    /// The repository an image named `name` is pushed to.
    pub fn repository(&self, name: &str) -> String {
        if self.namespace.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.namespace)
        }
    }
}

pub fn check_name_component(component: &str) -> Result<()> {
    let valid = !component.is_empty()
        && component
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && component
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if !valid {
        bail!("{component:?} is not a repository name component ([a-z0-9] then [a-z0-9._-])");
    }
    Ok(())
}

/// Checks a tag against the distribution grammar `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn check_tag(tag: &str) -> Result<()> {
    let valid = (1..=128).contains(&tag.len())
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !tag.starts_with(['.', '-']);
    if !valid {
        bail!("tag {tag:?} is not valid ([A-Za-z0-9_][A-Za-z0-9._-]{{0,127}})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_target_parses_host_port_and_namespace() {
        let target = RegistryTarget::parse("127.0.0.1:5000/cairn/prod").expect("valid");
        assert_eq!(target.host, "127.0.0.1:5000");
        assert_eq!(target.repository("api"), "cairn/prod/api");
        let bare = RegistryTarget::parse("registry.example").expect("valid");
        assert_eq!(bare.repository("api"), "api");
    }

    #[test]
    fn registry_target_rejects_schemes_and_bad_names() {
        assert!(RegistryTarget::parse("http://x/ns").is_err());
        assert!(RegistryTarget::parse("x/Upper").is_err());
        assert!(RegistryTarget::parse("/ns").is_err());
    }

    #[test]
    fn tags_follow_the_grammar() {
        assert!(check_tag("v1.2.3_rc-1").is_ok());
        assert!(check_tag("-x").is_err());
        assert!(check_tag("a:b").is_err());
        assert!(check_tag(&"a".repeat(129)).is_err());
    }
}
