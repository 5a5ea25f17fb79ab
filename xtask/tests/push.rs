//! `cargo xtask push` against the real distribution registry (Debian `docker-registry`):
//! plain HTTP on loopback, htpasswd Basic over TLS with a test CA, and the Bearer token flow
//! with a token server the test runs; idempotence counted by a recording proxy; and faults
//! (503s, a connection dropped in the middle of a large blob) injected by that proxy.

mod support;

use std::process::Command;

use hyper::Method;
use support::proxy::{Fault, FaultKind, Proxy};
use support::{ConfigExtras, MIB, Registry, RegistryAuth, RegistryTls, SkopeoAccess};

fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("cairn-push-{name}-"))
        .tempdir()
        .expect("temp dir")
}

fn plain_access() -> SkopeoAccess {
    SkopeoAccess {
        flags: vec!["--tls-verify=false".into()],
    }
}

#[test]
fn plain_http_push_round_trips_mounts_shared_layers_and_repush_sends_nothing() {
    if !support::tools_present() {
        return;
    }
    let dir = scratch("plain");
    let layout = support::build_layout(dir.path(), 8);
    let registry = Registry::start(dir.path(), RegistryAuth::None, RegistryTls::Plain);
    let proxy = Proxy::start(registry.port, Vec::new());
    let target = format!("{}/cairn", proxy.addr);
    let args = ["--plain-http", "--tag", "v1", "--tag", "latest"];

    let first = support::push(&layout, &target, &args, &[]);
    assert_eq!(first["images"][0]["outcome"], "pushed");
    assert_eq!(
        first["blobs_mounted"], 1,
        "the shared layer is mounted, not uploaded twice: {first}"
    );
    for name in ["gateway", "api"] {
        let image = first["images"]
            .as_array()
            .expect("images")
            .iter()
            .find(|i| i["name"] == name)
            .expect("image reported");
        assert_eq!(
            image["digest"],
            support::layout_digest(&layout, name).as_str()
        );
        for tag in ["v1", "latest"] {
            support::assert_round_trip(&layout, &target, name, tag, &plain_access(), dir.path());
        }
    }

    proxy.clear();
    let again = support::push(&layout, &target, &args, &[]);
    let seen = proxy.seen();
    let body_bytes: u64 = seen.iter().map(|s| s.body_bytes).sum();
    assert_eq!(body_bytes, 0, "re-push uploads nothing: {seen:?}");
    let outside_ping: Vec<_> = seen.iter().filter(|s| s.path != "/v2/").collect();
    assert!(
        outside_ping.len() <= 2 * 2,
        "at most one request per image and tag: {outside_ping:?}"
    );
    assert!(
        outside_ping.iter().all(|s| s.method == Method::HEAD),
        "{outside_ping:?}"
    );
    assert!(
        again["images"]
            .as_array()
            .expect("images")
            .iter()
            .all(|i| i["outcome"] == "unchanged")
    );
}

#[test]
fn basic_auth_over_tls_with_a_test_ca() {
    if !support::tools_present() {
        return;
    }
    let dir = scratch("basic");
    let layout = support::build_layout(dir.path(), 1);
    let pki = support::pki::server_pki(dir.path());
    let htpasswd = dir.path().join("htpasswd");
    let output = Command::new("htpasswd")
        .args(["-Bbn", "-C", "4", "pusher", "s3cret-pw"])
        .output()
        .expect("run htpasswd");
    assert!(output.status.success());
    std::fs::write(&htpasswd, output.stdout).expect("write htpasswd");
    let registry = Registry::start(
        dir.path(),
        RegistryAuth::Htpasswd { file: &htpasswd },
        RegistryTls::Tls {
            cert: &pki.server_cert,
            key: &pki.server_key,
        },
    );
    let target = format!("{}/team", registry.host());
    let ca = pki.ca_pem.to_str().expect("utf-8");

    let refused = support::push_command(
        &layout,
        &target,
        &["--ca-file", ca, "--retries", "0"],
        &[
            ("CAIRN_REGISTRY_USERNAME", "pusher"),
            ("CAIRN_REGISTRY_PASSWORD", "wrong-pw"),
        ],
    )
    .output()
    .expect("run push");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains(&registry.host())
            && stderr.contains("401")
            && stderr.contains("UNAUTHORIZED"),
        "the error names the registry, the status and the registry's error body: {stderr}"
    );
    assert!(
        !stderr.contains("wrong-pw"),
        "secrets never printed: {stderr}"
    );

    let untrusted = support::push_command(&layout, &target, &["--retries", "0"], &[])
        .output()
        .expect("run push");
    assert!(
        !untrusted.status.success(),
        "the test CA is not a system root"
    );

    let env_credentials = [
        ("CAIRN_REGISTRY_USERNAME", "pusher"),
        ("CAIRN_REGISTRY_PASSWORD", "s3cret-pw"),
    ];
    let gateway = support::push(
        &layout,
        &target,
        &["--ca-file", ca, "gateway"],
        &env_credentials,
    );
    assert_eq!(gateway["images"].as_array().expect("images").len(), 1);
    // Pushed alone later, api mounts the layer it shares with gateway from team/gateway.
    let api = support::push(
        &layout,
        &target,
        &["--ca-file", ca, "api"],
        &env_credentials,
    );
    assert_eq!(api["blobs_mounted"], 1, "{api}");

    // Again, with the secret from a Docker credential helper: nothing changed, nothing sent.
    let helpers = dir.path().join("helpers");
    std::fs::create_dir_all(&helpers).expect("helpers dir");
    let helper = helpers.join("docker-credential-cairntest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread host\n[ \"$host\" = \"{}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\necho '{{\"Username\":\"pusher\",\"Secret\":\"s3cret-pw\"}}'\n",
            registry.host()
        ),
    )
    .expect("write helper");
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod helper");
    let docker_config = dir.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).expect("docker config dir");
    std::fs::write(
        docker_config.join("config.json"),
        format!(r#"{{"credHelpers":{{"{}":"cairntest"}}}}"#, registry.host()),
    )
    .expect("write config.json");
    let path = format!(
        "{}:{}",
        helpers.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let again = support::push(
        &layout,
        &target,
        &["--ca-file", ca],
        &[
            ("PATH", path.as_str()),
            ("DOCKER_CONFIG", docker_config.to_str().expect("utf-8")),
        ],
    );
    assert!(
        again["images"]
            .as_array()
            .expect("images")
            .iter()
            .all(|i| i["outcome"] == "unchanged"),
        "{again}"
    );
    let access = SkopeoAccess {
        flags: vec![
            format!("--cert-dir={}", pki.cert_dir.display()),
            "--creds=pusher:s3cret-pw".into(),
        ],
    };
    for name in ["gateway", "api"] {
        support::assert_round_trip(&layout, &target, name, "latest", &access, dir.path());
    }
}

#[test]
fn bearer_tokens_from_a_trusted_token_server_with_mount_scopes() {
    if !support::tools_present() {
        return;
    }
    let dir = scratch("bearer");
    let layout = support::build_layout(dir.path(), 1);
    let issuer = support::pki::token_issuer(dir.path());
    let tokens = support::token::TokenServer::start(&issuer, "robot", "t0ken-pw");
    let realm = tokens.realm();
    let registry = Registry::start(
        dir.path(),
        RegistryAuth::Token {
            realm: &realm,
            rootcertbundle: &issuer.cert_pem_path,
        },
        RegistryTls::Plain,
    );
    let target = format!("{}/cairn", registry.host());
    // Credentials from a Docker config.json, as `docker login` writes them.
    let docker_config = dir.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).expect("docker config dir");
    std::fs::write(
        docker_config.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"cm9ib3Q6dDBrZW4tcHc="}}}}}}"#,
            registry.host()
        ),
    )
    .expect("write config.json");
    let report = support::push(
        &layout,
        &target,
        &["--plain-http"],
        &[
            ("DOCKER_CONFIG", docker_config.to_str().expect("utf-8")),
            // The token server has an origin of its own: the user trusts it by name.
            ("CAIRN_REGISTRY_TOKEN_REALMS", &token_origin(&realm)),
        ],
    );
    assert_eq!(report["blobs_mounted"], 1, "{report}");
    let scopes = tokens.scopes.lock().expect("scopes").clone();
    assert!(
        scopes.contains(&"repository:cairn/api:pull,push".to_owned()),
        "{scopes:?}"
    );
    assert!(
        scopes.contains(&"repository:cairn/gateway:pull,push".to_owned()),
        "{scopes:?}"
    );
    let mount_source_pull = scopes
        .iter()
        .any(|s| s == "repository:cairn/gateway:pull" || s == "repository:cairn/api:pull");
    assert!(
        mount_source_pull,
        "pull on the mount's source repository: {scopes:?}"
    );
    let access = SkopeoAccess {
        flags: vec!["--tls-verify=false".into(), "--creds=robot:t0ken-pw".into()],
    };
    for name in ["gateway", "api"] {
        support::assert_round_trip(&layout, &target, name, "latest", &access, dir.path());
    }
}

#[test]
fn faults_503_and_a_dropped_connection_resume_the_large_blob() {
    if !support::tools_present() {
        return;
    }
    let dir = scratch("faults");
    let big_mib = 24;
    let chunk_mib = 4;
    let layout = support::build_layout(dir.path(), big_mib);
    // Relative Location headers, as registries behind some proxies answer.
    let registry = Registry::start_with(
        dir.path(),
        RegistryAuth::None,
        RegistryTls::Plain,
        ConfigExtras {
            http: "  relativeurls: true\n",
            ..ConfigExtras::default()
        },
    );
    let faults = vec![
        Fault {
            method: Method::PATCH,
            path_part: "/uploads/",
            nth: 2,
            kind: FaultKind::DropMidBody,
        },
        Fault {
            method: Method::PATCH,
            path_part: "/uploads/",
            nth: 4,
            kind: FaultKind::Unavailable,
        },
        Fault {
            method: Method::HEAD,
            path_part: "/manifests/",
            nth: 1,
            kind: FaultKind::Unavailable,
        },
        Fault {
            method: Method::POST,
            path_part: "/uploads/",
            nth: 2,
            kind: FaultKind::Unavailable,
        },
        Fault {
            method: Method::PUT,
            path_part: "/manifests/",
            nth: 1,
            kind: FaultKind::Unavailable,
        },
        // A blob PUT (a monolithic upload or the final PUT of the chunked one).
        Fault {
            method: Method::PUT,
            path_part: "/blobs/uploads/",
            nth: 2,
            kind: FaultKind::Unavailable,
        },
    ];
    let proxy = Proxy::start(registry.port, faults);
    let target = format!("{}/cairn", proxy.addr);
    let chunk = chunk_mib.to_string();
    let report = support::push(
        &layout,
        &target,
        &["--plain-http", "--chunk-mib", &chunk],
        &[],
    );

    let seen = proxy.seen();
    let injected = seen.iter().filter(|s| s.fault.is_some()).count();
    assert_eq!(injected, 6, "every fault fired: {seen:?}");
    assert!(
        report["resumes"].as_u64().expect("resumes") >= 2,
        "{report}"
    );
    assert_eq!(report["restarts"], 0, "{report}");
    let uploaded = report["bytes_uploaded"].as_u64().expect("bytes");
    let received: u64 = seen
        .iter()
        .filter(|s| s.path.contains("/blobs/uploads/"))
        .map(|s| s.body_bytes)
        .sum();
    let resent = received - uploaded;
    let upload_faults = 3;
    assert!(
        resent <= upload_faults * chunk_mib * MIB,
        "bytes sent again: {resent}, more than one chunk per failure"
    );
    assert!(registry.assert_blobs_intact() >= 5);
    for name in ["gateway", "api"] {
        support::assert_round_trip(
            &layout,
            &target,
            name,
            "latest",
            &plain_access(),
            dir.path(),
        );
    }
}

#[test]
fn a_partial_chunk_left_in_the_registry_restarts_the_blob_and_leaves_nothing_corrupt() {
    if !support::tools_present() {
        return;
    }
    let dir = scratch("partial");
    let layout = support::build_layout(dir.path(), 12);
    let registry = Registry::start(dir.path(), RegistryAuth::None, RegistryTls::Plain);
    let faults = vec![Fault {
        method: Method::PATCH,
        path_part: "/uploads/",
        nth: 2,
        kind: FaultKind::DropMidBodyForwarded,
    }];
    let proxy = Proxy::start(registry.port, faults);
    let target = format!("{}/cairn", proxy.addr);
    let report = support::push(&layout, &target, &["--plain-http", "--chunk-mib", "4"], &[]);
    // distribution 2.8 holds the partial bytes, refuses the stale upload state and cancels
    // the session: the blob starts again in a new session, and the registry stays clean.
    assert_eq!(report["restarts"], 1, "{report}");
    assert!(registry.assert_blobs_intact() >= 5);
    for name in ["gateway", "api"] {
        support::assert_round_trip(
            &layout,
            &target,
            name,
            "latest",
            &plain_access(),
            dir.path(),
        );
    }
}

#[test]
fn an_image_index_goes_up_with_its_exact_bytes_after_its_children() {
    if !support::tools_present() {
        return;
    }
    let dir = scratch("index");
    let layout = support::build_layout(dir.path(), 1);
    let child = support::layout_digest(&layout, "gateway");
    let child_path = layout
        .join("blobs/sha256")
        .join(child.trim_start_matches("sha256:"));
    let child_bytes = std::fs::read(&child_path).expect("child manifest");
    // Valid but unusual formatting: the registry must get these bytes, not a re-serialisation.
    let index = format!(
        "{{\n   \"schemaVersion\" : 2,\n \"mediaType\": \"application/vnd.oci.image.index.v1+json\",\n  \"manifests\": [ {{ \"mediaType\": \"application/vnd.oci.image.manifest.v1+json\", \"digest\": \"{child}\", \"size\": {}, \"platform\": {{ \"os\": \"linux\", \"architecture\": \"amd64\" }} }} ]\n}}\n",
        child_bytes.len()
    );
    let digest = support::hex_sha256(index.as_bytes());
    std::fs::write(layout.join("blobs/sha256").join(&digest), &index).expect("write index blob");
    let index_json = layout.join("index.json");
    let mut top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_json).expect("index.json")).expect("parses");
    top["manifests"]
        .as_array_mut()
        .expect("manifests")
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{digest}"),
            "size": index.len(),
            "annotations": { "org.opencontainers.image.ref.name": "multi" }
        }));
    std::fs::write(&index_json, top.to_string()).expect("write index.json");

    let registry = Registry::start(dir.path(), RegistryAuth::None, RegistryTls::Plain);
    let target = format!("{}/cairn", registry.host());
    let report = support::push(&layout, &target, &["--plain-http", "multi"], &[]);
    assert_eq!(
        report["images"][0]["digest"],
        format!("sha256:{digest}").as_str()
    );
    let raw = |reference: &str| {
        let output = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{target}/{reference}"))
            .output()
            .expect("run skopeo inspect --raw");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    };
    assert_eq!(raw("multi:latest"), index.as_bytes());
    assert_eq!(raw(&format!("multi@{child}")), child_bytes);
}

#[test]
fn a_refusing_registry_gets_an_error_naming_registry_repository_status_and_body() {
    if !support::tools_present() {
        return;
    }
    let dir = scratch("readonly");
    let layout = support::build_layout(dir.path(), 1);
    let registry = Registry::start_with(
        dir.path(),
        RegistryAuth::None,
        RegistryTls::Plain,
        ConfigExtras {
            storage: "  maintenance:\n    readonly:\n      enabled: true\n",
            ..ConfigExtras::default()
        },
    );
    let target = format!("{}/cairn", registry.host());
    let output = support::push_command(&layout, &target, &["--plain-http", "gateway"], &[])
        .output()
        .expect("run push");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a read-only registry refuses uploads"
    );
    for part in [
        registry.host().as_str(),
        "cairn/gateway",
        "405",
        "Method not allowed",
    ] {
        assert!(stderr.contains(part), "{part:?} missing from: {stderr}");
    }
}

/// `http://HOST:PORT` of a token realm URL.
fn token_origin(realm: &str) -> String {
    let rest = realm.split_once("://").map_or(realm, |(_, rest)| rest);
    let host = rest.split('/').next().unwrap_or(rest);
    format!("http://{host}")
}
