//! The registry's authentication challenge, parsed: which scheme a `WWW-Authenticate` header
//! asks for and, for Bearer, where to get a token (realm, service) and for which scope.
//!
//! Pure functions only: no HTTP, no credentials. Token fetching lives in `client`.

use std::collections::BTreeMap;

/// What a 401 answer asks the client to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Send `Authorization: Basic` with the user's credentials.
    Basic,
    /// Fetch a token from `realm` for `service` and `scopes`, then send `Authorization: Bearer`.
    Bearer {
        realm: String,
        service: Option<String>,
        scopes: Vec<String>,
    },
}

/// Parses a `WWW-Authenticate` header value; `None` for a scheme cairn does not speak.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    let params = parse_params(rest);
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let realm = params.get("realm")?.clone();
    let scopes = params
        .get("scope")
        .map(|scope| {
            scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Some(Challenge::Bearer {
        realm,
        service: params.get("service").cloned(),
        scopes,
    })
}

/// `key=value` and `key="quoted, value"` pairs separated by commas (RFC 7235 auth-params).
fn parse_params(text: &str) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return params;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    other => value.push(other),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
}

/// The access a request needs on one repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Pull,
    PullPush,
}

/// The token scope string for `repository` with `access`, as the distribution spec writes it.
pub fn scope(repository: &str, access: Access) -> String {
    match access {
        Access::Pull => format!("repository:{repository}:pull"),
        Access::PullPush => format!("repository:{repository}:pull,push"),
    }
}

/// The scopes to ask for: ours plus the ones the challenge names, sorted and without repeats.
pub fn merge_scopes(ours: &[String], challenged: &[String]) -> Vec<String> {
    let mut all: Vec<String> = ours.iter().chain(challenged).cloned().collect();
    all.sort();
    all.dedup();
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_with_scope() {
        let header = r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:cairn/api:pull,push""#;
        assert_eq!(
            parse_challenge(header),
            Some(Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
                scopes: vec!["repository:cairn/api:pull,push".into()],
            })
        );
    }

    #[test]
    fn parses_bearer_with_several_scopes_and_escapes() {
        let header = r#"bearer realm="http://127.0.0.1:9/t\"x", scope="repository:a:pull repository:b:pull,push", error="insufficient_scope""#;
        let Some(Challenge::Bearer {
            realm,
            service,
            scopes,
        }) = parse_challenge(header)
        else {
            panic!("not bearer");
        };
        assert_eq!(realm, "http://127.0.0.1:9/t\"x");
        assert_eq!(service, None);
        assert_eq!(scopes, vec!["repository:a:pull", "repository:b:pull,push"]);
    }

    #[test]
    fn parses_basic_and_rejects_unknown() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(
            parse_challenge(r#"Bearer service="x""#),
            None,
            "bearer without realm"
        );
    }

    #[test]
    fn unquoted_values() {
        let Some(Challenge::Bearer { realm, service, .. }) =
            parse_challenge("Bearer realm=https://a/token,service=reg")
        else {
            panic!("not bearer");
        };
        assert_eq!(
            (realm.as_str(), service.as_deref()),
            ("https://a/token", Some("reg"))
        );
    }

    #[test]
    fn scopes_merge_sorted() {
        let ours = vec![
            scope("ns/api", Access::PullPush),
            scope("ns/gateway", Access::Pull),
        ];
        let challenged = vec![scope("ns/api", Access::PullPush)];
        assert_eq!(
            merge_scopes(&ours, &challenged),
            vec!["repository:ns/api:pull,push", "repository:ns/gateway:pull"]
        );
    }
}
