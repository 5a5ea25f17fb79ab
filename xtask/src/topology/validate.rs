//! The rules a parsed topology must follow beyond its syntax: every reference resolves (servers,
//! images, secrets, networks, services), no two services publish the same host port on one
//! server, GPUs are asked for only where they exist, `depends_on` has no cycle, and every image
//! is either built by cairn or pinned by tag and a digest that is not a placeholder. The first broken rule is reported, with
//! the byte offset of the field at fault.

use std::collections::{BTreeMap, BTreeSet};

use serde_spanned::Spanned;
use sha2::{Digest as _, Sha256};

use super::model::{Image, Service, Topology};

/// The images `cargo xtask image` builds (their names in the OCI layout).
pub const BUILT_IMAGES: &[&str] = &[
    "gateway",
    "api",
    "inference",
    "inference-cuda",
    "postgres",
    "nginx",
    "garage",
];

/// A broken rule: what is wrong, and where in the file.
#[derive(Debug)]
pub struct Problem {
    pub offset: Option<usize>,
    pub message: String,
}

fn at<T>(field: &Spanned<T>, message: String) -> Problem {
    Problem {
        offset: Some(field.span().start),
        message,
    }
}

pub fn check(topology: &Topology) -> Result<(), Problem> {
    check_images(topology)?;
    for (name, network) in &topology.networks {
        if let Some(subnet) = &network.subnet {
            check_subnet(name, subnet)?;
        }
    }
    for (name, service) in &topology.services {
        check_service(topology, name, service)?;
    }
    check_site(topology)?;
    check_ports(topology)?;
    check_cycles(topology)?;
    check_settings(topology)
}

/// The fields that may name per-deployment settings (`${NAME}` of `[settings]`), and the rule
/// for a server's private address: an IP address or exactly one setting.
fn check_settings(topology: &Topology) -> Result<(), Problem> {
    for (name, setting) in &topology.settings {
        if topology.secrets.contains_key(name) {
            return Err(Problem {
                offset: None,
                message: format!("settings.{name}: also declared under [secrets]; pick one"),
            });
        }
        if !is_variable_name(name) {
            return Err(Problem {
                offset: None,
                message: format!(
                    "settings.{name}: not a variable name (A-Z, 0-9 and _, not starting with a digit)"
                ),
            });
        }
        if let Some(default) = &setting.default
            && !is_env_value(default)
        {
            return Err(Problem {
                offset: None,
                message: format!(
                    "settings.{name}.default: {default:?} holds a character a .env line cannot carry as is (space, quote, $, # or \\)"
                ),
            });
        }
    }
    for (key, server) in &topology.servers {
        let address = server.private_address.get_ref();
        let field = format!("servers.{key}.private_address");
        if secret_references(address).is_empty() {
            if address.parse::<std::net::IpAddr>().is_err() {
                return Err(at(
                    &server.private_address,
                    format!("{field}: {address:?} is neither an IP address nor ${{SETTING}}"),
                ));
            }
        } else {
            check_setting_references(topology, &field, address, Some(&server.private_address))?;
        }
    }
    let site = &topology.site;
    check_setting_references::<()>(
        topology,
        "site.certificates_dir",
        &site.certificates_dir,
        None,
    )?;
    if let Some(webroot) = &site.acme_webroot {
        check_setting_references::<()>(topology, "site.acme_webroot", webroot, None)?;
    }
    for (name, service) in &topology.services {
        for (index, volume) in service.volumes.iter().enumerate() {
            let field = format!("services.{name}.volumes[{index}].source");
            check_setting_references::<()>(topology, &field, &volume.source, None)?;
        }
        if let Some(gpu) = &service.gpu {
            let field = format!("services.{name}.gpu.model_dir");
            check_setting_references(topology, &field, &gpu.get_ref().model_dir, Some(gpu))?;
        }
    }
    Ok(())
}

fn check_setting_references<T>(
    topology: &Topology,
    field: &str,
    value: &str,
    location: Option<&Spanned<T>>,
) -> Result<(), Problem> {
    for reference in secret_references(value) {
        if !topology.settings.contains_key(reference) {
            let message = format!(
                "{field}: refers to ${{{reference}}}, which is not declared under [settings] (settings: {})",
                keys(&topology.settings)
            );
            return Err(match location {
                Some(field) => at(field, message),
                None => Problem {
                    offset: None,
                    message,
                },
            });
        }
    }
    Ok(())
}

/// What a shell and compose accept as a variable name.
pub fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// A value a `.env` line carries literally under compose v1 and v2 alike: no quoting, no
/// interpolation, no comment.
pub fn is_env_value(value: &str) -> bool {
    value
        .chars()
        .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '$' | '#' | '\\' | '`'))
}

/// `A.B.C.D/N` with N between 8 and 30, the address being the network's first (no host bits).
fn check_subnet(network: &str, subnet: &Spanned<String>) -> Result<(), Problem> {
    let parsed = subnet
        .get_ref()
        .split_once('/')
        .and_then(|(address, length)| {
            let address: std::net::Ipv4Addr = address.parse().ok()?;
            let length: u32 = length.parse().ok().filter(|n| (8..=30).contains(n))?;
            let host_bits = u32::from(address) & (u32::MAX >> length);
            (host_bits == 0).then_some(())
        });
    parsed.ok_or_else(|| {
        at(
            subnet,
            format!(
                "networks.{network}.subnet: {:?} is not an IPv4 network such as \"172.31.250.0/29\" (prefix 8 to 30, no host bits)",
                subnet.get_ref()
            ),
        )
    })
}

fn check_images(topology: &Topology) -> Result<(), Problem> {
    for (name, image) in &topology.images {
        match image {
            Image::Build(build) if !BUILT_IMAGES.contains(&build.get_ref().as_str()) => {
                return Err(at(
                    build,
                    format!(
                        "images.{name}.build: no cairn build produces an image named {:?} (built: {})",
                        build.get_ref(),
                        BUILT_IMAGES.join(", ")
                    ),
                ));
            }
            Image::Reference(reference) if !is_pinned(reference.get_ref()) => {
                return Err(at(
                    reference,
                    format!(
                        "images.{name}.reference: {:?} must be pinned by tag and digest (name:tag@sha256:<64 hex>; `cargo xtask pin` writes it)",
                        reference.get_ref()
                    ),
                ));
            }
            Image::Reference(reference) => {
                if let Some(why) = placeholder(name, reference.get_ref()) {
                    return Err(at(
                        reference,
                        format!(
                            "images.{name}.reference: {:?} is pinned to a placeholder digest ({why}), not to an image: run `cargo xtask pin` or build the image with cairn",
                            reference.get_ref()
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Why the digest of a pinned `reference` (image `name`) is a placeholder rather than an image:
/// the sha256 of "cairn placeholder NAME" (NAME the image's key or its repository's last
/// component; cairn's topologies once carried such digests), or one hex digit repeated 64 times
/// (`sha256:000…`, the usual stand-in). None for a digest that may name a real image.
pub fn placeholder(name: &str, reference: &str) -> Option<String> {
    let (name_tag, digest) = reference.split_once("@sha256:")?;
    let repository = name_tag
        .rsplit('/')
        .next()
        .and_then(|last| last.split(':').next())
        .unwrap_or(name);
    for candidate in [name, repository] {
        let text = format!("cairn placeholder {candidate}");
        if format!("{:x}", Sha256::digest(text.as_bytes())) == digest {
            return Some(format!("the sha256 of {text:?}"));
        }
    }
    let first = digest.bytes().next()?;
    digest
        .bytes()
        .all(|b| b == first)
        .then(|| format!("{:?} repeated", char::from(first)))
}

/// `name:tag@sha256:<64 lowercase hex>`.
fn is_pinned(reference: &str) -> bool {
    let Some((name_tag, digest)) = reference.split_once("@sha256:") else {
        return false;
    };
    let last_segment = name_tag.rsplit('/').next().unwrap_or(name_tag);
    last_segment.contains(':')
        && digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_service(topology: &Topology, name: &str, service: &Service) -> Result<(), Problem> {
    let field = |key: &str| format!("services.{name}.{key}");
    let Some(server) = topology.servers.get(service.server.get_ref()) else {
        return Err(at(
            &service.server,
            format!(
                "{}: unknown server {:?} (servers: {})",
                field("server"),
                service.server.get_ref(),
                keys(&topology.servers)
            ),
        ));
    };
    if !topology.images.contains_key(service.image.get_ref()) {
        return Err(at(
            &service.image,
            format!(
                "{}: no image {:?} is declared under [images] (declared: {})",
                field("image"),
                service.image.get_ref(),
                keys(&topology.images)
            ),
        ));
    }
    check_user(&field("user"), &service.user)?;
    check_secrets(topology, name, service)?;
    for network in &service.networks {
        if !topology.networks.contains_key(network.get_ref()) {
            return Err(at(
                network,
                format!(
                    "{}: unknown network {:?} (networks: {})",
                    field("networks"),
                    network.get_ref(),
                    keys(&topology.networks)
                ),
            ));
        }
    }
    for dependency in &service.depends_on {
        check_dependency(topology, name, service, dependency)?;
    }
    for (variable, target) in &service.links {
        check_link(
            topology,
            &field(&format!("links.{variable}")),
            service,
            target,
        )?;
    }
    if let Some(gpu) = &service.gpu {
        check_gpu(&field("gpu"), service.server.get_ref(), server.gpus, gpu)?;
    }
    Ok(())
}

fn check_user(field: &str, user: &Spanned<String>) -> Result<(), Problem> {
    let uid = user.get_ref().split(':').next().unwrap_or_default();
    if uid == "0" || uid == "root" || uid.is_empty() {
        return Err(at(
            user,
            format!(
                "{field}: services must run as a non-root user, not {:?}",
                user.get_ref()
            ),
        ));
    }
    Ok(())
}

fn check_secrets(topology: &Topology, name: &str, service: &Service) -> Result<(), Problem> {
    for secret in &service.secrets {
        if !topology.secrets.contains_key(secret.get_ref()) {
            return Err(at(
                secret,
                format!(
                    "services.{name}.secrets: secret {:?} is not declared under [secrets]",
                    secret.get_ref()
                ),
            ));
        }
    }
    for (variable, value) in &service.env {
        for reference in secret_references(value.get_ref()) {
            let declared_here = service.secrets.iter().any(|s| s.get_ref() == reference);
            if !declared_here && !topology.settings.contains_key(reference) {
                return Err(at(
                    value,
                    format!(
                        "services.{name}.env.{variable}: refers to {reference:?}, which is neither a secret the service lists in `secrets` nor a declared setting"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The names inside `${…}` in an environment value.
pub fn secret_references(value: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        names.push(&after[..end]);
        rest = &after[end + 1..];
    }
    names
}

fn check_dependency(
    topology: &Topology,
    name: &str,
    service: &Service,
    dependency: &Spanned<String>,
) -> Result<(), Problem> {
    let field = format!("services.{name}.depends_on");
    let Some(target) = topology.services.get(dependency.get_ref()) else {
        return Err(at(
            dependency,
            format!("{field}: unknown service {:?}", dependency.get_ref()),
        ));
    };
    if target.server.get_ref() != service.server.get_ref() {
        return Err(at(
            dependency,
            format!(
                "{field}: {:?} runs on server {:?}, not {:?}; start order can only be enforced on one server (use `links`)",
                dependency.get_ref(),
                target.server.get_ref(),
                service.server.get_ref()
            ),
        ));
    }
    Ok(())
}

fn check_link(
    topology: &Topology,
    field: &str,
    from: &Service,
    target: &Spanned<String>,
) -> Result<(), Problem> {
    let (service, _path) = split_link(target.get_ref());
    match topology.services.get(service) {
        None => Err(at(target, format!("{field}: unknown service {service:?}"))),
        Some(linked) if linked.port.is_none() => Err(at(
            target,
            format!("{field}: service {service:?} has no `port`"),
        )),
        Some(linked)
            if linked.server.get_ref() != from.server.get_ref()
                && !linked
                    .publish
                    .iter()
                    .any(|p| Some(p.get_ref().container) == linked.port) =>
        {
            Err(at(
                target,
                format!(
                    "{field}: service {service:?} runs on server {:?} but publishes no host port for its port, so server {:?} cannot reach it",
                    linked.server.get_ref(),
                    from.server.get_ref()
                ),
            ))
        }
        Some(_) => Ok(()),
    }
}

/// A link is `SERVICE` or `SERVICE/PATH`; the path (with its slash) is appended to the URL.
pub fn split_link(link: &str) -> (&str, &str) {
    match link.find('/') {
        Some(slash) => (&link[..slash], &link[slash..]),
        None => (link, ""),
    }
}

fn check_gpu(
    field: &str,
    server: &str,
    gpus: u32,
    gpu: &Spanned<super::model::Gpu>,
) -> Result<(), Problem> {
    let need = gpu.get_ref();
    if gpus == 0 {
        return Err(at(
            gpu,
            format!("{field}: server {server:?} has no GPU (gpus = 0)"),
        ));
    }
    let wanted = match (need.count, &need.device_ids) {
        (Some(count), None) => count,
        (None, Some(ids)) => ids.len() as u32,
        _ => {
            return Err(at(
                gpu,
                format!("{field}: give exactly one of `count` and `device_ids`"),
            ));
        }
    };
    if wanted == 0 || wanted > gpus {
        return Err(at(
            gpu,
            format!("{field}: asks for {wanted} GPUs; server {server:?} has {gpus}"),
        ));
    }
    if !(need.memory_utilization > 0.0 && need.memory_utilization <= 1.0) {
        return Err(at(
            gpu,
            format!(
                "{field}.memory_utilization: {} is not in (0, 1]",
                need.memory_utilization
            ),
        ));
    }
    Ok(())
}

fn check_site(topology: &Topology) -> Result<(), Problem> {
    let site = &topology.site;
    for (key, service) in [("service", &site.service), ("upstream", &site.upstream)] {
        if !topology.services.contains_key(service.get_ref()) {
            return Err(at(
                service,
                format!("site.{key}: unknown service {:?}", service.get_ref()),
            ));
        }
    }
    let upstream = &topology.services[site.upstream.get_ref()];
    if upstream.port.is_none() {
        return Err(at(
            &site.upstream,
            format!(
                "site.upstream: service {:?} has no `port`",
                site.upstream.get_ref()
            ),
        ));
    }
    Ok(())
}

/// Two services on one server publishing the same host port cannot both start.
fn check_ports(topology: &Topology) -> Result<(), Problem> {
    let mut taken: BTreeMap<(&str, u16), &str> = BTreeMap::new();
    for (name, service) in &topology.services {
        for publish in &service.publish {
            let key = (service.server.get_ref().as_str(), publish.get_ref().host);
            if let Some(other) = taken.insert(key, name) {
                return Err(at(
                    publish,
                    format!(
                        "services.{name}.publish: host port {} on server {:?} is already published by service {other:?}",
                        key.1, key.0
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Depth-first search over `depends_on`; the first cycle found is reported as a path.
fn check_cycles(topology: &Topology) -> Result<(), Problem> {
    let mut done = BTreeSet::new();
    for name in topology.services.keys() {
        let mut path = Vec::new();
        visit(topology, name, &mut path, &mut done)?;
    }
    Ok(())
}

fn visit<'t>(
    topology: &'t Topology,
    name: &'t str,
    path: &mut Vec<&'t str>,
    done: &mut BTreeSet<&'t str>,
) -> Result<(), Problem> {
    if done.contains(name) {
        return Ok(());
    }
    if let Some(start) = path.iter().position(|&seen| seen == name) {
        let mut cycle: Vec<&str> = path[start..].to_vec();
        cycle.push(name);
        let from = path[path.len() - 1];
        let edge = topology.services[from]
            .depends_on
            .iter()
            .find(|d| d.get_ref() == name);
        return Err(Problem {
            offset: edge.map(|e| e.span().start),
            message: format!("services.{from}.depends_on: cycle {}", cycle.join(" -> ")),
        });
    }
    path.push(name);
    for dependency in &topology.services[name].depends_on {
        visit(topology, dependency.get_ref(), path, done)?;
    }
    path.pop();
    done.insert(name);
    Ok(())
}

fn keys<V>(map: &BTreeMap<String, V>) -> String {
    let names: Vec<&str> = map.keys().map(String::as_str).collect();
    names.join(", ")
}
