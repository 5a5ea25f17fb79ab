//! The compose file of one server, as a JSON value (YAML is written from it): every service of
//! that server hardened the same way (read-only root with tmpfs, non-root user, all capabilities
//! dropped, no new privileges, `restart: unless-stopped`, a memory limit, a health check, start
//! order gated on `service_healthy`), cairn images pinned by digest, credentials required from
//! the environment, the GPU reservation for GPU services and the nginx mounts for the site.

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};

use super::env;
use super::images::ImagePins;
use crate::topology::{Bind, Service, Topology, validate::split_link};

/// Where the nginx container finds what the site needs.
pub const NGINX_CERTS: &str = "/etc/nginx/certs";
pub const NGINX_SPA_ROOT: &str = "/srv/www";
/// Where nginx finds the ACME http-01 challenges certbot writes (`site.acme_webroot`).
pub const NGINX_ACME_ROOT: &str = "/srv/acme";

pub fn render_compose(topology: &Topology, server: &str, pins: &ImagePins) -> Result<Value> {
    let mut services = Map::new();
    let mut volumes = Map::new();
    let mut networks = Map::new();
    for (name, service) in on_server(topology, server) {
        services.insert(
            name.to_owned(),
            render_service(topology, name, service, pins)?,
        );
        for volume in service.volumes.iter().filter(|v| v.is_named()) {
            volumes.insert(volume.source.clone(), json!({}));
        }
        for network in &service.networks {
            let declared = &topology.networks[network.get_ref()];
            let mut value = Map::new();
            if declared.internal {
                value.insert("internal".into(), json!(true));
            }
            if let Some(subnet) = &declared.subnet {
                value.insert(
                    "ipam".into(),
                    json!({"config": [{"subnet": subnet.get_ref()}]}),
                );
            }
            networks.insert(network.get_ref().clone(), Value::Object(value));
        }
    }
    let mut document = Map::new();
    document.insert("services".into(), Value::Object(services));
    if !networks.is_empty() {
        document.insert("networks".into(), Value::Object(networks));
    }
    if !volumes.is_empty() {
        document.insert("volumes".into(), Value::Object(volumes));
    }
    Ok(Value::Object(document))
}

fn on_server<'t>(
    topology: &'t Topology,
    server: &'t str,
) -> impl Iterator<Item = (&'t str, &'t Service)> {
    topology
        .services
        .iter()
        .filter(move |(_, service)| service.server.get_ref() == server)
        .map(|(name, service)| (name.as_str(), service))
}

/// File names bind-mounted from the server folder (`./NAME` volume sources) on `server`.
pub fn server_files(topology: &Topology, server: &str) -> Vec<String> {
    on_server(topology, server)
        .flat_map(|(_, service)| service.volumes.iter())
        .filter_map(|volume| volume.source.strip_prefix("./").map(str::to_owned))
        .collect()
}

fn render_service(
    topology: &Topology,
    name: &str,
    service: &Service,
    pins: &ImagePins,
) -> Result<Value> {
    let mut out = Map::new();
    out.insert(
        "image".into(),
        json!(pins.reference(service.image.get_ref())),
    );
    if !service.command.is_empty() {
        out.insert("command".into(), json!(service.command));
    }
    out.insert("user".into(), json!(service.user.get_ref()));
    out.insert("restart".into(), json!("unless-stopped"));
    out.insert("read_only".into(), json!(true));
    out.insert("tmpfs".into(), json!(service.tmpfs));
    out.insert("cap_drop".into(), json!(["ALL"]));
    out.insert("security_opt".into(), json!(["no-new-privileges:true"]));
    let environment = environment(topology, name, service)?;
    if !environment.is_empty() {
        out.insert("environment".into(), Value::Object(environment));
    }
    let ports = ports(topology, service);
    if !ports.is_empty() {
        out.insert("ports".into(), json!(ports));
    }
    let volumes = volumes(topology, name, service);
    if !volumes.is_empty() {
        out.insert("volumes".into(), json!(volumes));
    }
    if !service.networks.is_empty() {
        let names: Vec<&str> = service
            .networks
            .iter()
            .map(|n| n.get_ref().as_str())
            .collect();
        out.insert("networks".into(), json!(names));
    }
    if !service.depends_on.is_empty() {
        let gates: Map<String, Value> = service
            .depends_on
            .iter()
            .map(|d| (d.get_ref().clone(), json!({"condition": "service_healthy"})))
            .collect();
        out.insert("depends_on".into(), Value::Object(gates));
    }
    out.insert("healthcheck".into(), healthcheck(service));
    out.insert("deploy".into(), deploy(service));
    Ok(Value::Object(out))
}

fn environment(topology: &Topology, name: &str, service: &Service) -> Result<Map<String, Value>> {
    let mut environment = Map::new();
    for (variable, value) in &service.env {
        environment.insert(variable.clone(), json!(env::interpolate(value.get_ref())));
    }
    for secret in &service.secrets {
        let secret = secret.get_ref();
        if !service
            .env
            .values()
            .any(|v| v.get_ref().contains(&format!("${{{secret}}}")))
        {
            environment.insert(secret.clone(), json!(env::required(secret)));
        }
    }
    for (variable, link) in &service.links {
        let url = link_url(topology, service, link.get_ref())
            .with_context(|| format!("services.{name}.links.{variable}"))?;
        environment.insert(variable.clone(), json!(url));
    }
    if let Some(variable) = &service.body_limit_env {
        let bytes = u64::from(topology.site.body_limit_mib) * 1024 * 1024;
        environment.insert(variable.clone(), json!(bytes.to_string()));
    }
    if let Some(gpu) = &service.gpu {
        let gpu = gpu.get_ref();
        environment.insert("MODEL_DIR".into(), json!(gpu.model_target));
        environment.insert(
            "GPU_MEMORY_UTILIZATION".into(),
            json!(gpu.memory_utilization.to_string()),
        );
        environment.insert("MAX_MODEL_LEN".into(), json!(gpu.max_model_len.to_string()));
    }
    environment.sort_keys();
    Ok(environment)
}

/// `http://NAME:PORT` on the same server; across servers the linked service's private address
/// and the host port that publishes its container port.
fn link_url(topology: &Topology, from: &Service, link: &str) -> Result<String> {
    let (target_name, path) = split_link(link);
    let target = &topology.services[target_name];
    let port = target.port.context("the linked service has no port")?;
    if target.server.get_ref() == from.server.get_ref() {
        return Ok(format!("http://{target_name}:{port}{path}"));
    }
    let server = &topology.servers[target.server.get_ref()];
    let published = target
        .publish
        .iter()
        .map(|p| p.get_ref())
        .find(|p| p.container == port)
        .with_context(|| {
            format!(
                "{target_name:?} runs on server {:?} but publishes no host port for its port {port}",
                target.server.get_ref()
            )
        })?;
    Ok(format!(
        "http://{}:{}{path}",
        env::interpolate(server.private_address.get_ref()),
        published.host
    ))
}

fn ports(topology: &Topology, service: &Service) -> Vec<String> {
    let address = env::interpolate(
        topology.servers[service.server.get_ref()]
            .private_address
            .get_ref(),
    );
    service
        .publish
        .iter()
        .map(|publish| {
            let publish = publish.get_ref();
            match publish.bind {
                Bind::Public => format!("{}:{}", publish.host, publish.container),
                Bind::Private => format!("{address}:{}:{}", publish.host, publish.container),
            }
        })
        .collect()
}

fn volumes(topology: &Topology, name: &str, service: &Service) -> Vec<String> {
    let mut volumes: Vec<String> = service
        .volumes
        .iter()
        .map(|v| mount(&v.source, &v.target, v.read_only))
        .collect();
    if let Some(gpu) = &service.gpu {
        let gpu = gpu.get_ref();
        volumes.push(mount(&gpu.model_dir, &gpu.model_target, true));
    }
    let site = &topology.site;
    if site.service.get_ref() == name {
        volumes.push(mount("./nginx/nginx.conf", "/etc/nginx/nginx.conf", true));
        volumes.push(mount("./nginx/snippets", "/etc/nginx/snippets", true));
        volumes.push(mount(&site.certificates_dir, NGINX_CERTS, true));
        if let Some(webroot) = &site.acme_webroot {
            volumes.push(mount(webroot, NGINX_ACME_ROOT, true));
        }
        if let Some(spa_root) = &site.spa_root {
            volumes.push(mount(spa_root, NGINX_SPA_ROOT, true));
        }
    }
    volumes
}

/// `SOURCE:TARGET[:ro]`, a `${SETTING}` in the source required from `.env`.
fn mount(source: &str, target: &str, read_only: bool) -> String {
    let source = env::interpolate(source);
    if read_only {
        format!("{source}:{target}:ro")
    } else {
        format!("{source}:{target}")
    }
}

fn healthcheck(service: &Service) -> Value {
    let health = &service.health;
    let mut test = vec!["CMD".to_owned()];
    test.extend(health.command.iter().cloned());
    json!({
        "test": test,
        "interval": health.interval,
        "timeout": health.timeout,
        "retries": health.retries,
        "start_period": health.start_period,
    })
}

fn deploy(service: &Service) -> Value {
    let mut resources = Map::new();
    resources.insert("limits".into(), json!({"memory": service.memory}));
    if let Some(gpu) = &service.gpu {
        let gpu = gpu.get_ref();
        let mut device = Map::new();
        device.insert("driver".into(), json!("nvidia"));
        match (&gpu.device_ids, gpu.count) {
            (Some(ids), _) => device.insert("device_ids".into(), json!(ids)),
            (None, count) => device.insert("count".into(), json!(count.unwrap_or(1))),
        };
        device.insert("capabilities".into(), json!(["gpu"]));
        resources.insert("reservations".into(), json!({"devices": [device]}));
    }
    let mut deploy = Map::new();
    if service.replicas != 1 {
        deploy.insert("replicas".into(), json!(service.replicas));
    }
    deploy.insert("resources".into(), Value::Object(resources));
    Value::Object(deploy)
}
