//! `cargo xtask release` end to end on the smallest topology (nginx in front of the gateway, so
//! only the gateway image is built): without a registry the bundle holds everything a server
//! needs (compose, nginx, .env example, OCI layout, docker archive, SBOM, release.json), and
//! `docker load` + `docker-compose up` of it runs the gateway; with a
//! real local registry the digests pinned in compose.yaml are the ones `skopeo inspect` reports,
//! and a second release packs and uploads nothing.

mod image_support;
#[allow(dead_code)] // shared with tests/push.rs; these tests use only its registry
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use image_support::{ComposeProject, docker_tools, stderr};
use serde_json::Value;
use sha2::Digest;
use support::{Registry, RegistryAuth, RegistryTls};

/// How long a container may take to answer and to turn healthy (its first health check runs
/// after compose's `start_period`).
const DEADLINE: Duration = Duration::from_secs(60);

fn topology() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/release_support/gateway.toml")
}

/// Runs `cargo xtask release ARGS` and returns its stderr; panics with it on failure.
fn release(out: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("release")
        .arg("--topology")
        .arg(topology())
        .arg("--out")
        .arg(out)
        // The images carry the tests' own CA bundle: no host /etc/ssl (a Nix sandbox has none).
        .arg("--ca-bundle")
        .arg(image_support::test_ca_bundle())
        .args(args)
        .output()
        .expect("run xtask release");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "release failed:\n{stderr}");
    stderr
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("valid JSON")
}

/// The `image:` of the gateway service in a rendered compose file.
fn pinned_gateway(bundle: &Path) -> String {
    let text = std::fs::read_to_string(bundle.join("server-a/compose.yaml")).expect("compose.yaml");
    let compose: Value = serde_norway::from_str(&text).expect("compose YAML");
    compose["services"]["gateway"]["image"]
        .as_str()
        .expect("gateway image")
        .to_owned()
}

#[test]
fn release_without_registry_writes_a_complete_bundle() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("bundle");
    release(&out, &[]);
    let again = release(&out, &[]);
    assert!(again.contains("(0 layers compressed"), "{again}");

    for file in [
        "server-a/compose.yaml",
        "server-a/.env.example",
        "server-a/nginx/nginx.conf",
        "server-a/nginx/nginx-local.conf",
        "oci/index.json",
        "oci/oci-layout",
        "images/gateway.tar",
        "sbom/gateway.cdx.json",
        "topology.toml",
    ] {
        assert!(out.join(file).is_file(), "bundle lacks {file}");
    }
    let manifest = read_json(&out.join("release.json"));
    let image = &manifest["images"][0];
    assert_eq!(manifest["images"].as_array().map(Vec::len), Some(1));
    assert_eq!(image["name"], "gateway");
    assert!(manifest["revision"].as_str().is_some_and(|r| !r.is_empty()));
    // The compiler that built the gateway: the one cargo picks in the workspace.
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let rustc_v = Command::new(rustc)
        .arg("-V")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("rustc -V");
    assert_eq!(
        manifest["toolchain"],
        String::from_utf8_lossy(&rustc_v.stdout).trim()
    );
    assert!(image["size"].as_u64().is_some_and(|s| s > 0));
    let digest = image["digest"].as_str().expect("digest");
    assert_eq!(
        pinned_gateway(&out),
        format!("cairn/gateway:manifest-{}", &digest[7..]),
        "compose pins the content tag the archive gives the image: its manifest digest"
    );
    assert_eq!(image["reference"], pinned_gateway(&out));
    let topology_bytes = std::fs::read(topology()).expect("the released topology");
    assert_eq!(
        std::fs::read(out.join("topology.toml")).expect("topology.toml"),
        topology_bytes,
        "the bundle carries the topology it was rendered from, byte for byte"
    );
    assert_eq!(manifest["topology_file"], "topology.toml");
    let topology_sha256: String = sha2::Sha256::digest(&topology_bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        manifest["topology_sha256"],
        format!("sha256:{topology_sha256}")
    );
    let index = read_json(&out.join("oci/index.json"));
    assert_eq!(index["manifests"][0]["digest"], digest);
    let env = std::fs::read_to_string(out.join("server-a/.env.example")).expect("env");
    assert!(env.contains("JWT_SECRET="), "{env}");

    let sbom = read_json(&out.join("sbom/gateway.cdx.json"));
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    let names: Vec<&str> = sbom["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for expected in ["gateway", "axum", "tokio", "lifecycle"] {
        assert!(
            names.contains(&expected),
            "SBOM lacks {expected}: {names:?}"
        );
    }
    assert!(
        !names.contains(&"expect-test"),
        "dev dependency in the SBOM"
    );
    let libc = sbom["components"]
        .as_array()
        .expect("components")
        .iter()
        .find(|c| c["name"].as_str().is_some_and(|n| n.contains("libc.so")))
        .expect("libc packed and listed");
    assert!(
        libc["purl"]
            .as_str()
            .is_some_and(|p| p.starts_with("pkg:deb/debian/libc6@")),
        "{libc}"
    );
}

#[test]
fn release_to_a_registry_pins_what_the_registry_serves_and_repeats_as_a_no_op() {
    if !support::tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let registry = Registry::start(dir.path(), RegistryAuth::None, RegistryTls::Plain);
    let target = format!("{}/cairn", registry.host());
    let out = dir.path().join("bundle");
    let args = ["--registry", target.as_str(), "--plain-http"];
    release(&out, &args);

    let pinned = pinned_gateway(&out);
    let inspect = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{target}/gateway:latest"))
        .output()
        .expect("run skopeo");
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let served: Value = serde_json::from_slice(&inspect.stdout).expect("skopeo JSON");
    let digest = served["Digest"].as_str().expect("Digest");
    assert_eq!(pinned, format!("{target}/gateway@{digest}"));
    assert!(
        !out.join("oci").exists(),
        "a pushed release carries no layout"
    );

    let again = release(&out, &args);
    assert!(again.contains("(0 layers compressed"), "{again}");
    assert!(again.contains(": 0 blobs uploaded"), "{again}");
    assert_eq!(pinned_gateway(&out), pinned);
}

/// Every variable `.env.example` lists, with a test value (the gateway wants 32+ bytes).
fn test_env(env_example: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(env_example)
        .expect(".env.example")
        .lines()
        .filter_map(|line| line.strip_suffix('='))
        .filter(|name| !name.starts_with('#'))
        .map(|name| {
            (
                name.to_owned(),
                "release-test-value-0123456789abcdef".to_owned(),
            )
        })
        .collect()
}

/// What a user does with a bundle released without a registry: `docker load` its archive, then
/// `docker-compose up` the rendered server folder. The gateway comes up from the loaded image
/// (compose pins the content tag `docker load` gave it, which names the built config's image, so
/// nothing is pulled), answers its health route and turns healthy.
#[test]
fn release_without_registry_runs_after_docker_load() {
    let Some((docker, compose)) = docker_tools() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("bundle");
    release(&out, &[]);
    let pinned = pinned_gateway(&out);
    let manifest = read_json(&out.join("release.json"));
    assert_eq!(manifest["images"][0]["reference"], pinned.as_str());
    let compose_text =
        std::fs::read_to_string(out.join("server-a/compose.yaml")).expect("compose.yaml");
    assert!(
        compose_text.contains("docker load -i ../images/NAME.tar"),
        "the header says how to load:\n{compose_text}"
    );
    let readme = std::fs::read_to_string(out.join("README.md")).expect("bundle README.md");
    assert!(
        readme.contains("docker load -i images/gateway.tar")
            && readme.contains(&pinned)
            && readme.contains("`topology.toml`"),
        "{readme}"
    );
    let digest = manifest["images"][0]["digest"].as_str().expect("digest");
    let config =
        read_json(&out.join(format!("oci/blobs/sha256/{}", &digest[7..])))["config"]["digest"]
            .as_str()
            .expect("config digest")
            .to_owned();

    let project = ComposeProject {
        docker,
        compose,
        file: out.join("server-a/compose.yaml"),
        name: format!("cairnrelease{}", std::process::id()),
        env: test_env(&out.join("server-a/.env.example")),
        images: vec![pinned.clone(), "cairn/gateway:latest".to_owned()],
    };
    if project.inspect("{{.Id}}", &pinned).is_empty() {
        let before_load = project.command(&["up", "-d", "--no-deps", "gateway"]);
        assert!(
            !before_load.status.success(),
            "compose ran an image that was never loaded"
        );
    }

    let load = project.docker(&[
        "load",
        "--input",
        &out.join("images/gateway.tar").display().to_string(),
    ]);
    assert!(load.status.success(), "docker load: {}", stderr(&load));
    assert_eq!(
        project.inspect("{{.Id}}", &pinned),
        config,
        "the tag compose pins names the image that was built"
    );
    assert_eq!(project.inspect("{{.Id}}", "cairn/gateway:latest"), config);

    let up = project.command(&["up", "-d", "--no-deps", "gateway"]);
    assert!(up.status.success(), "docker-compose up: {}", stderr(&up));
    let ps = project.command(&["ps", "--quiet", "gateway"]);
    let container = String::from_utf8_lossy(&ps.stdout).trim().to_owned();
    assert!(
        !container.is_empty(),
        "no gateway container: {}",
        stderr(&ps)
    );
    assert_eq!(project.inspect("{{.Image}}", &container), config);
    let address = project.inspect(
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &container,
    );
    let health = format!("http://{address}:8080/api/health");
    testkit::wait_until("the gateway's health route", DEADLINE, || {
        reqwest::blocking::get(&health).is_ok_and(|r| r.status().is_success())
    });
    testkit::wait_until("the gateway's health check", DEADLINE, || {
        let status = project.inspect("{{.State.Health.Status}}", &container);
        assert_ne!(status, "unhealthy", "the gateway's healthcheck failed");
        status == "healthy"
    });
    let down = project.command(&["down"]);
    assert!(
        down.status.success(),
        "docker-compose down: {}",
        stderr(&down)
    );
}
