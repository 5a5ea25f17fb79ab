//! `cargo xtask release` end to end on the smallest topology (nginx in front of the gateway, so
//! only the gateway image is built): without a registry the bundle holds everything a server
//! needs (compose, nginx, .env example, OCI layout, docker archive, SBOM, release.json); with a
//! real local registry the digests pinned in compose.yaml are the ones `skopeo inspect` reports,
//! and a second release packs and uploads nothing.

#[allow(dead_code)] // shared with tests/push.rs; these tests use only its registry
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::{Registry, RegistryAuth, RegistryTls};

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
    ] {
        assert!(out.join(file).is_file(), "bundle lacks {file}");
    }
    let manifest = read_json(&out.join("release.json"));
    let image = &manifest["images"][0];
    assert_eq!(manifest["images"].as_array().map(Vec::len), Some(1));
    assert_eq!(image["name"], "gateway");
    assert!(manifest["revision"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(
        manifest["toolchain"]
            .as_str()
            .is_some_and(|t| t.starts_with("rustc "))
    );
    assert!(image["size"].as_u64().is_some_and(|s| s > 0));
    let digest = image["digest"].as_str().expect("digest");
    assert_eq!(
        pinned_gateway(&out),
        format!("cairn/gateway@{digest}"),
        "compose pins the built digest"
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
