//! The bundle's `README.md`: a complete first deployment, in the order an operator does it
//! (DNS, firewall, `.env`, server B with its model, server A with its certificate, checks), then
//! what running it takes (renewals, backups, what `down -v` deletes, upgrades). Everything
//! deployment-specific comes from the topology (servers, services, settings, volumes, ports)
//! and the release (how each image reaches its server). Pure text; `xtask/tests/servers.rs`
//! deploys both servers by following it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::render::{certbot, init_env};
use crate::topology::{Bind, Image, Topology};

/// How a built image reaches its server.
#[derive(Debug, Clone)]
pub struct Shipped {
    /// The image's name in the topology and the layout (`api`).
    pub name: String,
    /// What compose runs: `cairn/api:<tag>` for a loaded archive, `host/ns/api@sha256:…` for
    /// a pushed one.
    pub reference: String,
    /// `images/api.tar` when the image travels in the bundle.
    pub archive: Option<String>,
}

/// `images`: every built image as it is shipped; `registry`: where they were pushed, if they
/// were; `variables`: what each server's compose file requires from its `.env` (the rendering's).
pub fn render_guide(
    topology: &Topology,
    topology_source: &str,
    images: &[Shipped],
    registry: Option<&str>,
    variables: &BTreeMap<String, BTreeSet<String>>,
) -> String {
    let edge = topology.services[topology.site.service.get_ref()]
        .server
        .get_ref()
        .clone();
    let per_server = images_per_server(topology, images);
    let mut text = String::new();
    let _ = write!(
        text,
        "# cairn release bundle: deploying it

Written by `cargo xtask release` from `{topology_source}` (copied here as `topology.toml`).
Everything the servers run is here: one folder per server (`compose.yaml` and what it mounts),
`init-env.sh`, which writes every server's `.env`, and {images}. `release.json` lists each
image's digest, size and SBOM (`sbom/`).

| server | runs | images |
| --- | --- | --- |
",
        images = match registry {
            Some(registry) => format!("the images' references in `{registry}` (pinned by digest)"),
            None =>
                "the images as `docker load` archives (`images/`) and as one OCI layout (`oci/`)"
                    .to_owned(),
        },
    );
    for (server, shipped) in &per_server {
        let services: Vec<&str> = services_on(topology, server).collect();
        let names: Vec<&str> = shipped.iter().map(|s| s.name.as_str()).collect();
        let _ = writeln!(
            text,
            "| server-{server} ({}) | {} | {} |",
            topology.servers[server].description,
            services.join(", "),
            names.join(", ")
        );
    }

    let _ = write!(
        text,
        "
## Before you start

- Two Linux servers with Docker Engine and the Compose plugin (`docker compose`, v2). Compose v2
  is the supported client on current engines; the old `docker-compose` 1.29 still works on
  engines before 25 with the classic image store, and is what cairn's own CI uses on Docker 20.10.
- A private network between them. Server B's private address is a setting (`SERVER_B_ADDRESS`):
  B publishes its inference port on that address only, and A's gateway connects to it there.
- A domain name: an `A` (and `AAAA`) record pointing at server A's public address. Nothing in
  these files names the domain; only the certificate does.
- Firewall: server A takes its published ports from everyone ({edge_ports}). Server B takes
  {b_ports} from server A only. **Docker's published ports bypass ufw and firewalld**: Docker
  inserts its own iptables rules ahead of theirs. B's port is bound to the private address only,
  so it is not on the public interface at all; to restrict it further, filter in the
  `DOCKER-USER` chain, which Docker leaves to you, e.g. on server B:
  `iptables -I DOCKER-USER -p tcp --dport 8001 ! -s SERVER_A_PRIVATE_ADDRESS -j DROP`.

## 1. Secrets and settings: `init-env.sh`

Run it once, here, before copying anything: it writes `server-a/.env` and `server-b/.env`
(mode 0600) with every secret generated at random in the format its service needs, the same
value on both servers where both need it (the key A presents to B), and the settings you give:

```sh
./{init_env} SERVER_B_ADDRESS=10.0.0.2
```

| setting | what | default |
| --- | --- | --- |
",
        edge_ports = published(topology, &edge),
        b_ports = per_server
            .keys()
            .filter(|server| **server != edge)
            .map(|server| published(topology, server))
            .reduce(|all, ports| format!("{all}, {ports}"))
            .unwrap_or_else(|| "no port".to_owned()),
        init_env = init_env::FILE,
    );
    // The settings some server's files use; a declared one nothing renders is not asked for.
    let used: BTreeSet<&String> = variables
        .values()
        .flatten()
        .filter(|name| topology.settings.contains_key(*name))
        .collect();
    for name in used {
        let setting = &topology.settings[name];
        let _ = writeln!(
            text,
            "| `{name}` | {} | {} |",
            setting.description,
            setting
                .default
                .as_deref()
                .map_or("(give it)".to_owned(), |d| format!("`{d}`"))
        );
    }
    let _ = write!(
        text,
        "
It never replaces a value already in a `.env`, so it is safe to run again (it adds what a newer
bundle needs). The `.env` files are the deployment's secrets: keep a copy somewhere safe (the
database and the object store were set up with them), never commit them. Each variable is
described in the server's `.env.example`.

## 2. Copy each server its folder and images

"
    );
    for (server, shipped) in &per_server {
        let archives: Vec<String> = shipped
            .iter()
            .filter_map(|s| s.archive.as_ref().map(|a| format!("`{a}`")))
            .collect();
        let _ = writeln!(
            text,
            "- server {server}: `server-{server}/` (with its `.env`){}",
            if archives.is_empty() {
                String::new()
            } else {
                format!(", {}", archives.join(", "))
            }
        );
    }
    text.push_str("\ne.g. `rsync -a server-a images/ root@SERVER_A:/srv/cairn/`. The commands below run in the\nfolder that holds them on each server.\n");

    for (server, shipped) in &per_server {
        if *server == edge {
            continue;
        }
        let _ = write!(
            text,
            "
## 3. Server {upper}

The model: the files of the model the topology serves, in the folder `MODEL_HOST_DIR` names
(readable by the containers' user, e.g. `chmod -R a+rX`):

```sh
pip install -U huggingface_hub
huggingface-cli download Qwen/Qwen2.5-1.5B-Instruct --local-dir /srv/cairn/models/qwen2.5-1.5b-instruct    # MODEL_HOST_DIR
```

Then the images and the services:

```sh
{loads}cd server-{server}
docker compose up -d
docker compose ps    # healthy once the model is loaded
```
",
            loads = load_lines(shipped),
            upper = server.to_uppercase(),
        );
    }

    let shipped = per_server.get(&edge).map(Vec::as_slice).unwrap_or_default();
    let nginx = topology.site.service.get_ref();
    let _ = write!(
        text,
        "
## 4. Server {edge_upper}

The certificate. nginx runs as a non-root user and cannot read Let's Encrypt's `live/` folder
(symlinks into `../../archive`, a key only root reads), so `{hook}` copies a certificate
into `CERTIFICATES_DIR` as plain files nginx's user owns, and reloads nginx. nginx needs a
certificate to start, and Let's Encrypt needs nginx to answer its http-01 challenge on port 80:
start with a self-signed certificate, placed by the same hook, then ask for the real one:

```sh
mkdir -p /tmp/selfsigned
openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj /CN=DOMAIN \\
  -keyout /tmp/selfsigned/privkey.pem -out /tmp/selfsigned/fullchain.pem
sudo RENEWED_LINEAGE=/tmp/selfsigned server-{edge}/{hook}
```

The images and the services (Garage sets itself up on its first start: layout, the api's key,
the bucket; the api starts once the bucket exists):

```sh
{loads}cd server-{edge}
docker compose up -d
docker compose ps    # every service healthy
```

The real certificate, through the challenge folder nginx serves on port 80 (`ACME_WEBROOT`):

```sh
sudo certbot certonly --webroot -w /srv/cairn/acme -d DOMAIN \\
  --deploy-hook \"$PWD/{hook}\"
```

certbot remembers the hook: every renewal (its timer runs `certbot renew`) copies the new
certificate and reloads {nginx} (`docker compose kill -s HUP {nginx}`) without dropping a
connection.

## 5. Check

```sh
curl -fsS https://DOMAIN/api/health/all    # {{\"status\":\"ok\"}}: api and inference up
```

Open `https://DOMAIN/`, register, and chat.

## Running it

**Logs**: `docker compose logs -f SERVICE` (one JSON line per request).

**Backups**: what matters lives in named volumes: {volumes}. Docker names them
`PROJECT_VOLUME` (the project is the folder name, `server-{edge}`); `docker volume inspect` gives
each one's folder. The database, consistently while it runs:
`docker compose exec -T postgres /usr/lib/postgresql/15/bin/pg_dump -h /var/lib/postgresql/data -U cairn cairn > cairn.sql`.
The object store: `docker compose stop garage`, copy its two volumes' folders, `docker compose
start garage`. Keep the `.env` files with the backups.

**`down` and `down -v`**: `docker compose down` removes the containers and keeps the volumes;
`up -d` brings everything back with its data. `docker compose down -v` **deletes the volumes**:
every user, chat and file. Never run it on a server you want to keep.

**Upgrades**: copy the new bundle's server folder over the old one, keeping `.env` (e.g.
`rsync -a --exclude .env`), run the new `init-env.sh` where both `.env` files are (it only adds
variables the new release needs), load the new images, and `docker compose up -d`: compose
recreates the services whose image or settings changed, B before A. `docker image prune` then
removes the images no container uses.
",
        hook = certbot::FILE,
        edge_upper = edge.to_uppercase(),
        loads = load_lines(shipped),
        volumes = named_volumes(topology, &edge),
    );
    if registry.is_none() {
        text.push_str(
            "
## Images in this bundle

Without a registry, compose runs each cairn image by a tag derived from its content, written
into its archive: `docker load` gives the image that name on the classic image store and on the
containerd store alike. Without the load, compose tries to pull the tag and fails.

| image | archive | what compose runs |
| --- | --- | --- |
",
        );
        for image in images {
            let _ = writeln!(
                text,
                "| {} | {} | `{}` |",
                image.name,
                image.archive.as_deref().unwrap_or("-"),
                image.reference
            );
        }
        text.push_str(
            "\nTo run from a registry instead, release with `--registry`, or push the layout:\n\
             `skopeo copy oci:oci:NAME docker://HOST/cairn/NAME:TAG`.\n",
        );
    }
    text
}

/// Built images per server key, in the order of their names.
fn images_per_server<'i>(
    topology: &Topology,
    images: &'i [Shipped],
) -> BTreeMap<String, Vec<&'i Shipped>> {
    let mut per_server: BTreeMap<String, Vec<&Shipped>> = topology
        .servers
        .keys()
        .map(|server| (server.clone(), Vec::new()))
        .collect();
    for service in topology.services.values() {
        let Some(Image::Build(name)) = topology.images.get(service.image.get_ref()) else {
            continue;
        };
        let Some(shipped) = images.iter().find(|i| i.name == *name.get_ref()) else {
            continue;
        };
        let list = per_server
            .entry(service.server.get_ref().clone())
            .or_default();
        if !list.iter().any(|s| s.name == shipped.name) {
            list.push(shipped);
        }
    }
    for list in per_server.values_mut() {
        list.sort_by(|a, b| a.name.cmp(&b.name));
    }
    per_server
}

fn services_on<'t>(topology: &'t Topology, server: &'t str) -> impl Iterator<Item = &'t str> {
    topology
        .services
        .iter()
        .filter(move |(_, s)| s.server.get_ref() == server)
        .map(|(name, _)| name.as_str())
}

/// `80 and 443` style list of the host ports `server` publishes.
fn published(topology: &Topology, server: &str) -> String {
    let ports: Vec<String> = topology
        .services
        .values()
        .filter(|s| s.server.get_ref() == server)
        .flat_map(|s| s.publish.iter().map(|p| *p.get_ref()))
        .map(|p| match p.bind {
            Bind::Public => format!("{} (public)", p.host),
            Bind::Private => format!("{} (private address only)", p.host),
        })
        .collect();
    if ports.is_empty() {
        "no port".to_owned()
    } else {
        ports.join(", ")
    }
}

fn named_volumes(topology: &Topology, server: &str) -> String {
    let mut volumes: Vec<String> = topology
        .services
        .iter()
        .filter(|(_, s)| s.server.get_ref() == server)
        .flat_map(|(name, s)| {
            s.volumes
                .iter()
                .filter(|v| v.is_named())
                .map(move |v| format!("`{}` ({name})", v.source))
        })
        .collect();
    volumes.sort();
    volumes.join(", ")
}

fn load_lines(shipped: &[&Shipped]) -> String {
    shipped
        .iter()
        .map(|s| match &s.archive {
            Some(archive) => format!("docker load -i {archive}\n"),
            None => format!("docker pull {}\n", s.reference),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_topology() -> Topology {
        let path = crate::project::root().join("deploy/topology-cpu.toml");
        crate::topology::load(&path).expect("the CPU topology loads")
    }

    fn variables() -> BTreeMap<String, BTreeSet<String>> {
        BTreeMap::from([
            (
                "a".to_owned(),
                BTreeSet::from(["SERVER_B_ADDRESS".to_owned(), "JWT_SECRET".to_owned()]),
            ),
            (
                "b".to_owned(),
                BTreeSet::from(["MODEL_HOST_DIR".to_owned()]),
            ),
        ])
    }

    fn shipped(topology: &Topology) -> Vec<Shipped> {
        super::super::built_images(topology, std::path::Path::new("topology.toml"))
            .expect("cairn's images")
            .into_iter()
            .map(|name| Shipped {
                reference: format!("cairn/{name}:sha256-{}", "0".repeat(64)),
                archive: Some(format!("images/{name}.tar")),
                name,
            })
            .collect()
    }

    #[test]
    fn the_guide_walks_each_server_in_order_with_its_own_images() {
        let topology = default_topology();
        let guide = render_guide(
            &topology,
            "deploy/topology-cpu.toml",
            &shipped(&topology),
            None,
            &variables(),
        );
        let b = guide.find("## 3. Server B").expect("server B first");
        let a = guide.find("## 4. Server A").expect("then server A");
        assert!(b < a);
        let b_section = &guide[b..a];
        assert!(
            b_section
                .contains("docker load -i images/inference.tar\ncd server-b\ndocker compose up -d"),
            "{b_section}"
        );
        let a_section = &guide[a..guide.find("## 5. Check").expect("checks")];
        for image in ["api", "garage", "gateway", "nginx", "postgres"] {
            assert!(
                a_section.contains(&format!("docker load -i images/{image}.tar\n")),
                "{image}"
            );
        }
        assert!(
            !a_section.contains("images/inference.tar"),
            "only what A runs"
        );
        assert!(guide.contains("./init-env.sh SERVER_B_ADDRESS="));
        assert!(guide.contains("RENEWED_LINEAGE=/tmp/selfsigned server-a/certbot-deploy-hook.sh"));
        assert!(guide.contains("bypass ufw"));
        assert!(guide.contains("**deletes the volumes**"));
        assert!(
            guide.contains("`pgdata` (postgres)"),
            "backups name the volumes"
        );
        assert!(guide.contains("| `SERVER_B_ADDRESS` |"));
        assert!(
            !guide.contains("SERVER_A_ADDRESS"),
            "a setting no file uses is not asked for"
        );
        assert!(guide.contains(&format!("`cairn/api:sha256-{}`", "0".repeat(64))));
    }

    #[test]
    fn a_registry_bundle_pulls_instead_of_loading() {
        let topology = default_topology();
        let images: Vec<Shipped> = shipped(&topology)
            .into_iter()
            .map(|s| Shipped {
                reference: format!(
                    "registry.example/cairn/{}@sha256:{}",
                    s.name,
                    "1".repeat(64)
                ),
                archive: None,
                ..s
            })
            .collect();
        let guide = render_guide(
            &topology,
            "t.toml",
            &images,
            Some("registry.example/cairn"),
            &variables(),
        );
        assert!(guide.contains(&format!(
            "docker pull registry.example/cairn/api@sha256:{}",
            "1".repeat(64)
        )));
        assert!(!guide.contains("docker load"));
        assert!(!guide.contains("## Images in this bundle"));
    }
}
