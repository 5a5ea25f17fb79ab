//! cairn's own checks of a compose document, for what the JSON schema cannot see: every
//! network, named volume and secret a service uses is declared at the top level (and every
//! declared one is used), `depends_on` names existing services without a cycle, every image is
//! pinned by digest (or by a loaded archive's content tag), and every variable the file interpolates is required (`${NAME:?…}`), never
//! defaulted. It reads any compose document (short or long syntax), not only cairn's own output,
//! so tests can run it on the committed files.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

/// The first broken reference in `document`, named by its path in the file.
pub fn check(document: &Value) -> Result<()> {
    let services = document
        .get("services")
        .and_then(Value::as_object)
        .context("no `services` mapping")?;
    let declared = |key: &str| -> BTreeSet<String> {
        document
            .get(key)
            .and_then(Value::as_object)
            .map(|map| map.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut used = Used::default();
    let mut graph = BTreeMap::new();
    for (name, service) in services {
        let service = service
            .as_object()
            .with_context(|| format!("services.{name} is not a mapping"))?;
        check_service(name, service, &mut used)?;
        let dependencies = names(service.get("depends_on"));
        for dependency in &dependencies {
            if !services.contains_key(dependency) || dependency == name {
                bail!(
                    "services.{name}.depends_on: {dependency:?} is not another service of this file"
                );
            }
        }
        graph.insert(name.clone(), dependencies);
    }
    compare("networks", &used.networks, &declared("networks"))?;
    compare("volumes", &used.volumes, &declared("volumes"))?;
    compare("secrets", &used.secrets, &declared("secrets"))?;
    find_cycle(&graph)
}

#[derive(Default)]
struct Used {
    networks: BTreeMap<String, String>,
    volumes: BTreeMap<String, String>,
    secrets: BTreeMap<String, String>,
}

fn check_service(name: &str, service: &Map<String, Value>, used: &mut Used) -> Result<()> {
    let image = service
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // `repo@sha256:…` from a registry, or `repo:manifest-<hex>`, the content tag of a loaded
    // docker-archive.
    if !image.contains("@sha256:") && !super::images::is_content_tag(image) {
        bail!("services.{name}.image: {image:?} is not pinned by digest or content tag");
    }
    for network in names(service.get("networks")) {
        if network != "default" {
            used.networks
                .insert(network, format!("services.{name}.networks"));
        }
    }
    for volume in named_volumes(service.get("volumes")) {
        used.volumes
            .insert(volume, format!("services.{name}.volumes"));
    }
    for secret in sources(service.get("secrets")) {
        used.secrets
            .insert(secret, format!("services.{name}.secrets"));
    }
    for (variable, value) in environment(service.get("environment")) {
        if let Some(problem) = unrequired_interpolation(&value) {
            bail!("services.{name}.environment.{variable}: {problem}");
        }
    }
    Ok(())
}

/// Each used name must be declared, and each declared name used.
fn compare(kind: &str, used: &BTreeMap<String, String>, declared: &BTreeSet<String>) -> Result<()> {
    if let Some((name, place)) = used.iter().find(|(name, _)| !declared.contains(*name)) {
        bail!("{place}: {kind} {name:?} is not declared under top-level `{kind}`");
    }
    if let Some(name) = declared.iter().find(|name| !used.contains_key(*name)) {
        bail!("{kind}.{name}: declared but no service uses it");
    }
    Ok(())
}

/// Names from a list of strings or the keys of a mapping (`networks`, `depends_on`).
fn names(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// `secrets` entries: a name, or a mapping with `source`.
fn sources(value: Option<&Value>) -> Vec<String> {
    let Some(Value::Array(items)) = value else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::String(name) => Some(name.clone()),
            Value::Object(map) => map.get("source").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        })
        .collect()
}

/// Named volumes (not host paths) from short (`src:dst[:mode]`) or long syntax.
fn named_volumes(value: Option<&Value>) -> Vec<String> {
    let Some(Value::Array(items)) = value else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::String(short) => short
                .split_once(':')
                .map(|(source, _)| source.to_owned())
                .filter(|source| !source.starts_with(['/', '.', '~', '$'])),
            Value::Object(map) if map.get("type").and_then(Value::as_str) == Some("volume") => {
                map.get("source").and_then(Value::as_str).map(str::to_owned)
            }
            _ => None,
        })
        .collect()
}

/// `(name, value)` pairs from mapping or `NAME=value` list syntax.
fn environment(value: Option<&Value>) -> Vec<(String, String)> {
    let text = |value: &Value| match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match value {
        Some(Value::Object(map)) => map.iter().map(|(k, v)| (k.clone(), text(v))).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (item.to_owned(), String::new()),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// An interpolation other than `${NAME:?message}` (a default, or an optional variable).
fn unrequired_interpolation(value: &str) -> Option<String> {
    let mut rest = value;
    while let Some(dollar) = rest.find('$') {
        let after = &rest[dollar + 1..];
        if let Some(escaped) = after.strip_prefix('$') {
            rest = escaped;
            continue;
        }
        let Some(inner) = after.strip_prefix('{') else {
            return Some("a bare `$NAME` interpolation; use ${NAME:?message}".to_owned());
        };
        let end = inner.find('}').unwrap_or(inner.len());
        let expression = &inner[..end];
        if !expression.contains(":?") {
            return Some(format!(
                "`${{{expression}}}` is not required; use ${{NAME:?message}} with no default"
            ));
        }
        rest = &inner[end..];
    }
    None
}

fn find_cycle(graph: &BTreeMap<String, Vec<String>>) -> Result<()> {
    let mut done = BTreeSet::new();
    for start in graph.keys() {
        let mut path = Vec::new();
        walk(graph, start, &mut path, &mut done)?;
    }
    Ok(())
}

fn walk<'g>(
    graph: &'g BTreeMap<String, Vec<String>>,
    name: &'g str,
    path: &mut Vec<&'g str>,
    done: &mut BTreeSet<&'g str>,
) -> Result<()> {
    if done.contains(name) {
        return Ok(());
    }
    if let Some(start) = path.iter().position(|&seen| seen == name) {
        let mut cycle = path[start..].to_vec();
        cycle.push(name);
        bail!("depends_on has a cycle: {}", cycle.join(" -> "));
    }
    path.push(name);
    for next in graph.get(name).into_iter().flatten() {
        walk(graph, next, path, done)?;
    }
    path.pop();
    done.insert(name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DIGEST: &str =
        "x@sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn a_depends_on_cycle_is_found() {
        let document = json!({"services": {
            "a": {"image": DIGEST, "depends_on": {"b": {"condition": "service_healthy"}}},
            "b": {"image": DIGEST, "depends_on": ["a"]},
        }});
        let err = check(&document).expect_err("cycle");
        assert_eq!(err.to_string(), "depends_on has a cycle: a -> b -> a");
    }

    #[test]
    fn undeclared_and_unused_references_are_found() {
        let network = json!({"services": {"a": {"image": DIGEST, "networks": ["data"]}}});
        assert_eq!(
            check(&network).expect_err("network").to_string(),
            "services.a.networks: networks \"data\" is not declared under top-level `networks`"
        );
        let volume =
            json!({"services": {"a": {"image": DIGEST, "volumes": ["pg:/data", "/host:/x:ro"]}}});
        assert!(
            check(&volume)
                .expect_err("volume")
                .to_string()
                .contains("volumes \"pg\"")
        );
        let secret = json!({"services": {"a": {"image": DIGEST, "secrets": [{"source": "key"}]}}});
        assert!(
            check(&secret)
                .expect_err("secret")
                .to_string()
                .contains("secrets \"key\"")
        );
        let unused = json!({"services": {"a": {"image": DIGEST}}, "volumes": {"pg": {}}});
        assert_eq!(
            check(&unused).expect_err("unused").to_string(),
            "volumes.pg: declared but no service uses it"
        );
    }

    #[test]
    fn images_must_be_pinned_and_credentials_required() {
        let tag = json!({"services": {"a": {"image": "postgres:16"}}});
        assert!(
            check(&tag)
                .expect_err("tag")
                .to_string()
                .contains("not pinned by digest")
        );
        let default =
            json!({"services": {"a": {"image": DIGEST, "environment": {"PW": "${PW:-secret}"}}}});
        assert!(
            check(&default)
                .expect_err("default")
                .to_string()
                .contains("services.a.environment.PW")
        );
        let fine = json!({"services": {"a": {"image": DIGEST, "environment": ["PW=${PW:?set PW}", "X=$$1"]}}});
        check(&fine).expect("required variables and escaped dollars pass");
        let tag = format!("cairn/a:manifest-{}", "a".repeat(64));
        check(&json!({"services": {"a": {"image": tag}}})).expect("a content tag is pinned");
        let short = json!({"services": {"a": {"image": "cairn/a:manifest-abc"}}});
        assert!(check(&short).is_err(), "a short content tag pins nothing");
        let id = format!("sha256:{}", "a".repeat(64));
        let id = json!({"services": {"a": {"image": id}}});
        assert!(
            check(&id).is_err(),
            "an image ID is found by Docker's classic image store only"
        );
    }
}
