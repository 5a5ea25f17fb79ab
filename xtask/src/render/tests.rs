//! Rendering tested against the real consumers: the committed examples are what the default
//! topology renders today, the compose files pass the compose schema, cairn's cross-reference
//! checks and docker-compose's own `config -q`, and nginx itself accepts both configs (`nginx
//! -t` in fresh mount and network namespaces, as the field notes describe).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use expect_test::expect;
use serde_json::Value;

use super::*;
use crate::topology::{self, Topology};

fn root() -> PathBuf {
    project::root()
}

fn default_topology() -> Topology {
    topology::load(&root().join(topology::DEFAULT_PATH)).expect("default topology")
}

fn default_rendering() -> Rendering {
    let topology = default_topology();
    let pieces = read_pieces(&root(), &root().join(topology::DEFAULT_PATH)).expect("pieces");
    render(
        &topology,
        topology::DEFAULT_PATH,
        &ImagePins::placeholders(&topology),
        &pieces,
    )
    .expect("render")
}

/// The CPU variant renders too (it mounts the model folder as a volume, not a GPU's model_dir):
/// the README's main job releases it.
#[test]
fn the_cpu_topology_renders_and_mounts_its_model_folder_from_a_setting() {
    let path = root().join("deploy/topology-cpu.toml");
    let topology = topology::load(&path).expect("the CPU topology loads");
    let pieces = read_pieces(&root(), &path).expect("pieces");
    let rendering = render(
        &topology,
        "deploy/topology-cpu.toml",
        &ImagePins::placeholders(&topology),
        &pieces,
    )
    .expect("render");
    let compose = &rendering.files[std::path::Path::new("server-b/compose.yaml")];
    assert!(
        compose.contains(&format!(
            "{}:/models:ro",
            super::env::required("MODEL_HOST_DIR")
        )),
        "{compose}"
    );
    assert!(
        !compose.contains("\nvolumes:"),
        "no named volume: {compose}"
    );
}

fn committed(relative: &str) -> String {
    let path = root().join(DEFAULT_OUT).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

#[test]
fn committed_examples_are_fresh() {
    check_fresh(&default_rendering(), &root().join(DEFAULT_OUT))
        .expect("run `cargo xtask render` and commit deploy/rendered");
}

#[test]
fn a_stale_file_is_named_by_check() {
    let out = tempfile::tempdir().expect("temp dir");
    let rendering = default_rendering();
    write(&rendering, out.path()).expect("write");
    check_fresh(&rendering, out.path()).expect("just written");
    let compose = out.path().join("server-b/compose.yaml");
    std::fs::write(&compose, "services: {}\n").expect("overwrite");
    let err = check_fresh(&rendering, out.path()).expect_err("stale");
    assert!(err.to_string().contains("server-b/compose.yaml"), "{err}");
}

#[test]
fn every_rendered_file_starts_with_the_command_that_writes_it() {
    for (path, text) in &default_rendering().files {
        let text = text.strip_prefix("#!/bin/sh\n").unwrap_or(text);
        assert!(
            text.starts_with("# Written by `cargo xtask render` from "),
            "{}",
            path.display()
        );
    }
}

fn committed_compose(server: &str) -> Value {
    let text = committed(&format!("server-{server}/compose.yaml"));
    serde_norway::from_str(&text).expect("compose.yaml is YAML")
}

#[test]
fn committed_compose_files_pass_the_schema_and_the_cross_checks() {
    for server in ["a", "b"] {
        let document = committed_compose(server);
        schema::validate(&document).unwrap_or_else(|err| panic!("server {server}: {err:#}"));
        crosscheck::check(&document).unwrap_or_else(|err| panic!("server {server}: {err:#}"));
    }
}

#[test]
fn the_schema_rejects_what_compose_rejects() {
    let mut document = committed_compose("b");
    document["services"]["inference"]["deploy"]["resources"]["reservations"]["devices"][0]
        .as_object_mut()
        .expect("device")
        .remove("capabilities");
    let err = schema::validate(&document).expect_err("capabilities is required");
    assert!(format!("{err:#}").contains("capabilities"), "{err:#}");
}

#[test]
fn the_gpu_service_reserves_its_gpu_and_reads_its_model_read_only() {
    let document = committed_compose("b");
    let inference = &document["services"]["inference"];
    let device = &inference["deploy"]["resources"]["reservations"]["devices"][0];
    assert_eq!(device["driver"], "nvidia");
    assert_eq!(device["capabilities"][0], "gpu");
    // Server B's private address is the operator's, in .env: nothing baked in.
    assert_eq!(
        inference["ports"][0],
        format!("{}:8001:8001", super::env::required("SERVER_B_ADDRESS"))
    );
    assert!(
        inference["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v.as_str().is_some_and(|v| v.ends_with(":/models:ro")))
    );
}

#[test]
fn data_services_publish_nothing_and_every_credential_is_required() {
    let document = committed_compose("a");
    for name in ["postgres", "garage", "api", "gateway"] {
        assert!(
            document["services"][name].get("ports").is_none(),
            "{name} publishes a port"
        );
    }
    let env_example = committed("server-a/.env.example");
    let yaml = committed("server-a/compose.yaml");
    for line in env_example.lines().filter(|l| l.ends_with('=')) {
        let name = line.trim_end_matches('=');
        assert!(
            yaml.contains(&format!("${{{name}:?")),
            "{name} not required"
        );
    }
}

#[test]
fn image_pins_come_from_the_built_map() {
    let topology = default_topology();
    let digest = "0".repeat(64);
    let mut built: BTreeMap<String, String> = ["gateway", "api"]
        .into_iter()
        .map(|name| (name.to_owned(), format!("r.example/{name}@sha256:{digest}")))
        .collect();
    let err = ImagePins::from_map(&topology, &built).expect_err("inference-cuda missing");
    expect![[r#"image "garage" was not built: it is missing from the map (has: api, gateway)"#]]
        .assert_eq(&err.to_string());
    for name in ["garage", "inference-cuda", "nginx", "postgres"] {
        built.insert(name.into(), format!("r.example/{name}@sha256:{digest}"));
    }
    let pins = ImagePins::from_map(&topology, &built).expect("complete map");
    assert_eq!(pins.reference("inference"), built["inference-cuda"]);
    assert_eq!(pins.origin(), PinOrigin::Registry);
    built.insert("api".into(), "r.example/api:latest".into());
    assert!(ImagePins::from_map(&topology, &built).is_err());
}

/// The images the default topology builds.
const BUILT_BY_DEFAULT: [&str; 6] = [
    "api",
    "garage",
    "gateway",
    "inference-cuda",
    "nginx",
    "postgres",
];

/// The content tag of a loaded archive for `name`, with `digit` as every hex digit.
fn content_tag(name: &str, digit: char) -> String {
    format!("cairn/{name}:manifest-{}", digit.to_string().repeat(64))
}

#[test]
fn loaded_archives_are_pinned_by_content_tag() {
    let topology = default_topology();
    let built = BUILT_BY_DEFAULT;
    let tags: BTreeMap<String, String> = built
        .iter()
        .zip('a'..)
        .map(|(name, digit)| (name.to_string(), content_tag(name, digit)))
        .collect();
    let pins = ImagePins::from_loaded_archives(&topology, &tags).expect("every image tagged");
    assert_eq!(pins.origin(), PinOrigin::LoadedArchives);
    let pieces = read_pieces(&root(), &root().join(topology::DEFAULT_PATH)).expect("pieces");
    let rendering = render(&topology, topology::DEFAULT_PATH, &pins, &pieces).expect("render");
    let compose = &rendering.files[Path::new("server-a/compose.yaml")];
    let pinned: Vec<&str> = compose
        .lines()
        .filter(|line| line.starts_with('#') || line.trim_start().starts_with("image: "))
        .collect();
    expect![[r#"
        # Written by `cargo xtask render` from deploy/topology.toml; edit that file, not this one.
        # cairn images are pinned by their archive's content tag (cairn/NAME:manifest-<digest>): load them first, `docker load -i ../images/NAME.tar` for each (README.md).
            image: cairn/api:manifest-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
            image: cairn/garage:manifest-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb
            image: cairn/gateway:manifest-cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc
            image: cairn/nginx:manifest-eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee
            image: cairn/postgres:manifest-ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff
    "#]]
    .assert_eq(&(pinned.join("\n") + "\n"));
    for (server, document) in [
        ("a", compose),
        ("b", &rendering.files[Path::new("server-b/compose.yaml")]),
    ] {
        let document: Value = serde_norway::from_str(document).expect("compose YAML");
        crosscheck::check(&document).unwrap_or_else(|err| panic!("server {server}: {err:#}"));
    }
}

#[test]
fn loaded_archive_pins_refuse_ids_moving_tags_and_other_names() {
    let topology = default_topology();
    let built = BUILT_BY_DEFAULT;
    let complete: BTreeMap<String, String> = built
        .iter()
        .map(|name| (name.to_string(), content_tag(name, '0')))
        .collect();
    let refused = |name: &str, reference: String| {
        let mut tags = complete.clone();
        tags.insert(name.to_owned(), reference);
        ImagePins::from_loaded_archives(&topology, &tags)
            .expect_err("refused")
            .to_string()
    };
    expect![[r#"image "gateway": "sha256:0000000000000000000000000000000000000000000000000000000000000000" is not cairn/gateway:manifest-<64 hex>"#]]
        .assert_eq(&refused("gateway", format!("sha256:{}", "0".repeat(64))));
    expect![[r#"image "gateway": "cairn/gateway:latest" is not cairn/gateway:manifest-<64 hex>"#]]
        .assert_eq(&refused("gateway", "cairn/gateway:latest".into()));
    expect![[r#"image "gateway": "cairn/api:manifest-0000000000000000000000000000000000000000000000000000000000000000" is not cairn/gateway:manifest-<64 hex>"#]]
        .assert_eq(&refused("gateway", content_tag("api", '0')));
    expect![[
        r#"image "gateway": "cairn/gateway:manifest-000" is not cairn/gateway:manifest-<64 hex>"#
    ]]
    .assert_eq(&refused("gateway", "cairn/gateway:manifest-000".into()));
    let mut missing = complete.clone();
    missing.remove("gateway");
    expect![[r#"image "gateway" was not built: no docker-archive holds it"#]].assert_eq(
        &ImagePins::from_loaded_archives(&topology, &missing)
            .expect_err("missing")
            .to_string(),
    );
}

#[test]
fn the_local_variant_moves_to_the_ports_it_is_given() {
    let topology = default_topology();
    let standard = nginx::render_nginx(&topology.site, 8080, nginx::Variant::Local);
    let moved = nginx::render_local_nginx(
        &topology.site,
        9088,
        "127.0.0.1:9080",
        Path::new("/work/cairn/web"),
    );
    assert_ne!(moved, standard);
    assert_eq!(
        moved,
        standard
            .replace("listen 127.0.0.1:8088;", "listen 127.0.0.1:9088;")
            .replace("server 127.0.0.1:8080;", "server 127.0.0.1:9080;")
            .replace("root www;", "root /work/cairn/web;")
    );
}

#[test]
fn the_local_variant_streams_without_tls() {
    let topology = default_topology();
    let text = nginx::render_nginx(&topology.site, 8080, nginx::Variant::Local);
    let server = &text[text.find("    server {").expect("server block")..];
    expect![[r#"
            server {
                listen 127.0.0.1:8088;
                server_name localhost;
                root www;

                # The web app: its files keep their names between versions, so the browser revalidates
                # them (ETag, 304) instead of caching them for a fixed time.
                location / {
                    include snippets/security-headers.conf;
                    add_header Cache-Control "no-cache" always;
                    try_files $uri $uri/ /index.html;
                }

                # Its modules: a missing one is a 404, never the page in its place.
                location /js/ {
                    include snippets/security-headers.conf;
                    add_header Cache-Control "no-cache" always;
                    try_files $uri =404;
                }

                location /assets/ {
                    include snippets/security-headers.conf;
                    expires 1y;
                    try_files $uri =404;
                }

                location /api/ {
                    include snippets/security-headers.conf;
                    include snippets/proxy.conf;
                    proxy_pass http://gateway;
                }

                # Uploads stream to the gateway as they arrive (it enforces the size limit): buffered
                # whole, each would sit in /tmp, a tmpfs charged to nginx's memory limit, until it ended.
                location /api/files {
                    include snippets/security-headers.conf;
                    include snippets/proxy.conf;
                    proxy_request_buffering off;
                    proxy_pass http://gateway;
                }

                # Server-sent events: every event reaches the client as it is written.
                location /api/chat {
                    include snippets/security-headers.conf;
                    include snippets/proxy.conf;
                    include snippets/stream.conf;
                    proxy_pass http://gateway;
                }

                # The OpenAI-compatible API: only through the gateway, which checks the caller.
                location /v1/ {
                    include snippets/security-headers.conf;
                    include snippets/proxy.conf;
                    include snippets/stream.conf;
                    proxy_pass http://gateway;
                }
            }
        }
    "#]]
    .assert_eq(server);
    assert!(text.contains("server 127.0.0.1:8080;"));
}

/// Issue 17, item 5: nginx's /tmp is a tmpfs counted as its memory.
#[test]
fn uploads_stream_to_the_gateway_and_nothing_spills_into_tmp() {
    for file in [
        "server-a/nginx/nginx.conf",
        "server-a/nginx/nginx-local.conf",
    ] {
        let conf = committed(file);
        let files = &conf[conf
            .find("location /api/files {")
            .expect("the upload location")..];
        let files = &files[..files.find('}').expect("its end")];
        assert!(
            files.contains("proxy_request_buffering off;"),
            "{file}: {files}"
        );
        assert!(conf.contains("client_max_body_size 25m;"), "{file}");
        assert!(conf.contains("proxy_max_temp_file_size 0;"), "{file}");
    }
}

#[test]
fn no_location_loses_the_security_headers_and_streams_are_never_gzipped() {
    let conf = committed("server-a/nginx/nginx.conf");
    let tls_server = &conf[conf.find("ssl http2").expect("TLS server")..];
    let locations = tls_server.matches("location ").count();
    let with_headers = tls_server
        .matches("include snippets/security-headers.conf;")
        .count();
    assert_eq!(locations, 7, "{conf}");
    assert_eq!(with_headers, locations, "{conf}");
    let gzip_types = conf
        .lines()
        .find(|line| line.trim_start().starts_with("gzip_types"))
        .expect("gzip_types");
    assert!(!gzip_types.contains("text/event-stream"), "{gzip_types}");
    let stream = committed("server-a/nginx/snippets/stream.conf");
    assert!(stream.contains("proxy_buffering off;") && stream.contains("gzip off;"));
}

/// Copies the server-A nginx folder and what the container image provides (mime.types) plus a
/// self-signed certificate into one folder laid out like the container's /etc/nginx.
fn etc_nginx(openssl: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let rendering = default_rendering();
    for (relative, text) in &rendering.files {
        if let Ok(inside) = relative.strip_prefix("server-a/nginx") {
            let path = dir.path().join(inside);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
    }
    testkit::nginx_container::add_mime_types_and_certificate(
        openssl,
        dir.path(),
        "cairn.example.com",
    );
    dir
}

#[test]
fn nginx_accepts_both_rendered_configs() {
    let (Some(nginx), Some(unshare), Some(openssl)) = (
        testkit::require_tool("nginx", "apt-get install nginx"),
        testkit::require_tool("unshare", "apt-get install util-linux"),
        testkit::require_tool("openssl", "apt-get install openssl"),
    ) else {
        return;
    };
    if !testkit::require_root("nginx -t in fresh namespaces") {
        return;
    }
    let etc = etc_nginx(&openssl);
    // The container's layout (`mount_prelude`), and loopback up for the local variant's listen
    // address.
    let script = format!(
        "{prelude}ip link set lo up
mkdir /tmp/local
{nginx} -q -e stderr -t -p /etc/nginx/ -c /etc/nginx/nginx.conf
{nginx} -q -e stderr -t -p /tmp/local/ -c /etc/nginx/nginx-local.conf",
        prelude = testkit::nginx_container::mount_prelude(etc.path(), etc.path()),
        nginx = nginx.display(),
    );
    let output = Command::new(unshare)
        .args(["-mn", "sh", "-c", &script])
        .output()
        .expect("unshare");
    assert!(
        output.status.success(),
        "nginx -t failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn nginx_rejects_a_config_that_names_an_unknown_upstream() {
    // The same run as above with the upstream missing from /etc/hosts must fail, or the test
    // above proves nothing.
    let (Some(nginx), Some(unshare), Some(openssl)) = (
        testkit::require_tool("nginx", "apt-get install nginx"),
        testkit::require_tool("unshare", "apt-get install util-linux"),
        testkit::require_tool("openssl", "apt-get install openssl"),
    ) else {
        return;
    };
    if !testkit::require_root("nginx -t in fresh namespaces") {
        return;
    }
    let etc = etc_nginx(&openssl);
    let hosts = etc.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").expect("hosts");
    let script = format!(
        "mount --bind {} /etc/hosts && mount --bind {} /etc/nginx && mount -t tmpfs tmpfs /tmp && {} -q -e stderr -t -p /etc/nginx/ -c /etc/nginx/nginx.conf",
        hosts.display(),
        etc.path().display(),
        nginx.display()
    );
    let output = Command::new(unshare)
        .args(["-mn", "sh", "-c", &script])
        .output()
        .expect("unshare");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("gateway"));
}

/// The bundle's own first step: `init-env.sh` writes each server's `.env`, and compose then
/// accepts both files; before it, compose refuses, naming the variable and the script.
#[test]
fn docker_compose_accepts_the_files_with_the_env_init_env_writes() {
    let Some(docker_compose) =
        testkit::require_tool("docker-compose", "apt-get install docker-compose")
    else {
        return;
    };
    let bundle = tempfile::tempdir().expect("temp dir");
    write(&default_rendering(), bundle.path()).expect("write the rendering");
    let config = |server: &str| {
        Command::new(&docker_compose)
            .current_dir(bundle.path().join(format!("server-{server}")))
            .args(["config", "-q"])
            .output()
            .expect("docker-compose")
    };
    for server in ["a", "b"] {
        let output = config(server);
        assert!(
            !output.status.success(),
            "server {server} started without .env"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("in .env: run init-env.sh"), "{stderr}");
    }
    let init = Command::new(bundle.path().join(super::init_env::FILE))
        .arg("SERVER_B_ADDRESS=10.0.0.2")
        .output()
        .expect("init-env.sh runs (written executable)");
    assert!(init.status.success(), "{init:?}");
    for server in ["a", "b"] {
        let output = config(server);
        assert!(
            output.status.success(),
            "server {server}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
