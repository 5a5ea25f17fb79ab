//! The images cairn writes, checked with the real tools: skopeo inspects every image of the
//! layout, umoci unpacks one, runc boots it (health route, uid 65532, `healthcheck` exits 0),
//! `docker load` takes the archive (which tags each image by its manifest digest, the same in
//! the files of both of Docker's image stores), and `docker run` and docker-compose run it by that
//! tag. The gateway image gets the same runc boot once the gateway service is in the workspace.

mod image_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use image_support::{ComposeProject, compile_fixture, index, stderr, xtask, xtask_unchecked};
use testkit::{ProcessGuard, free_port, require_tool, wait_until};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_owned()
}

/// Writes the fixture image `demo` (and `demo2`, another binary) into `dir/oci`.
fn fixture_layout(dir: &Path) -> PathBuf {
    let one = compile_fixture(dir, "fixture", "one");
    let two = compile_fixture(dir, "fixture2", "two");
    let out = dir.join("oci");
    let (out_arg, one_arg, two_arg) = (
        out.display().to_string(),
        format!("demo={}", one.display()),
        format!("demo2={}", two.display()),
    );
    xtask(
        &[
            "image",
            "--out",
            &out_arg,
            "--binary",
            &one_arg,
            "--binary",
            &two_arg,
            "--format",
            "docker-archive",
        ],
        &[],
    );
    out
}

#[test]
fn skopeo_inspects_every_image_and_umoci_unpacks_it() {
    let Some(skopeo) = require_tool("skopeo", "apt-get install skopeo") else {
        return;
    };
    let Some(umoci) = require_tool("umoci", "apt-get install umoci") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let out = fixture_layout(dir.path());
    let images = index(&out);
    assert_eq!(
        images.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["demo", "demo2"]
    );
    for (name, digest) in &images {
        let output = Command::new(&skopeo)
            .args(["inspect", &format!("oci:{}:{name}", out.display())])
            .output()
            .expect("skopeo");
        assert!(
            output.status.success(),
            "skopeo inspect {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let inspect: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("skopeo JSON");
        assert_eq!(inspect["Digest"], digest.as_str());
        assert_eq!(inspect["Created"], "2023-11-14T22:13:20Z");
        assert_eq!(inspect["Layers"].as_array().expect("layers").len(), 2);
        assert!(inspect["Labels"]["org.opencontainers.image.revision"].is_string());
    }
    // The system layer is shared: both binaries need the same libraries.
    assert_eq!(
        image_support::layers(&out, "demo")[0],
        image_support::layers(&out, "demo2")[0]
    );
    let bundle = dir.path().join("bundle");
    let status = Command::new(&umoci)
        .args([
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:demo", out.display()),
        ])
        .arg(&bundle)
        .status()
        .expect("umoci");
    assert!(status.success(), "umoci unpack");
    let rootfs = bundle.join("rootfs");
    use std::os::unix::fs::PermissionsExt;
    let tmp_mode = std::fs::metadata(rootfs.join("tmp"))
        .expect("/tmp")
        .permissions()
        .mode();
    assert_eq!(tmp_mode & 0o7777, 0o1777);
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).expect("passwd");
    assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
    assert!(rootfs.join("etc/ssl/certs/ca-certificates.crt").is_file());
    assert!(rootfs.join("usr/local/bin/fixture").is_file());
    // libc sits where the fixture's loader finds it: /lib/x86_64-linux-gnu on Debian, its store
    // path when the toolchain is Nix's (the flake's `tests` check).
    assert!(
        contains_file(&rootfs, &|name| name.starts_with("libc.so")),
        "no libc.so* in {}",
        rootfs.display()
    );
}

/// Whether a file under `dir` (symlinks not followed) has a name `wanted` accepts.
fn contains_file(dir: &Path, wanted: &dyn Fn(&str) -> bool) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .any(|entry| {
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => contains_file(&path, wanted),
                Ok(_) => wanted(&entry.file_name().to_string_lossy()),
                Err(_) => false,
            }
        })
}

#[test]
fn a_second_run_with_nothing_changed_compresses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = fixture_layout(dir.path());
    let before = std::fs::read(out.join("index.json")).expect("index");
    let binary = format!("demo={}", dir.path().join("fixture").display());
    let output = xtask(
        &[
            "image",
            "--out",
            &out.display().to_string(),
            "--binary",
            &binary,
            "--json",
        ],
        &[],
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("report JSON");
    assert_eq!(report["layers_compressed"], 0, "{report:#}");
    assert_eq!(
        std::fs::read(out.join("index.json")).expect("index"),
        before
    );
}

#[test]
fn bad_input_names_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("oci").display().to_string();
    let output = xtask_unchecked(
        &[
            "image",
            "--out",
            &out,
            "--binary",
            "demo=/nonexistent/cairn-binary",
        ],
        &[],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/cairn-binary"), "{stderr}");
    assert!(
        !dir.path().join("oci/index.json").exists(),
        "no index for a failed run"
    );
}

/// A container run by runc from an unpacked image; deleted on drop.
struct RuncContainer {
    id: String,
    _process: ProcessGuard,
}

impl Drop for RuncContainer {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.id])
            .status();
    }
}

/// Unpacks `image` and runs it with runc, sharing the host's network namespace.
fn boot(runc: &Path, layout: &Path, image: &str, env: &[String], dir: &Path) -> RuncContainer {
    let bundle = dir.join(format!("bundle-{image}"));
    let status = Command::new("umoci")
        .args([
            "unpack",
            "--image",
            &format!("{}:{image}", layout.display()),
        ])
        .arg(&bundle)
        .status()
        .expect("umoci");
    assert!(status.success(), "umoci unpack {image}");
    let config_path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).expect("config.json"))
            .expect("config JSON");
    let namespaces = config["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces");
    namespaces.retain(|ns| ns["type"] != "network");
    config["process"]["terminal"] = false.into();
    let process_env = config["process"]["env"].as_array_mut().expect("env");
    process_env.extend(env.iter().map(|e| serde_json::Value::from(e.as_str())));
    std::fs::write(&config_path, serde_json::to_vec(&config).expect("JSON")).expect("write config");
    let id = format!("cairn-test-{image}-{}", std::process::id());
    let process = ProcessGuard::spawn(
        "runc",
        Command::new(runc)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    );
    RuncContainer {
        id,
        _process: process,
    }
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    // Generous: the other tests of this file compile fixtures with rustc -O at the same time.
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// The uid the container's init process runs as, read from the host's /proc.
fn container_uid(id: &str) -> String {
    let state = Command::new("runc")
        .args(["state", id])
        .output()
        .expect("runc state");
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).expect("state JSON");
    let pid = state["pid"].as_u64().expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line")
        .to_owned();
    line.split_whitespace().nth(1).expect("uid").to_owned()
}

fn healthcheck_exits_zero(id: &str, binary: &str, env: &[String]) {
    let mut command = Command::new("runc");
    command.args(["exec"]);
    for e in env {
        command.args(["--env", e]);
    }
    let status = command
        .args([id, binary, "healthcheck"])
        .status()
        .expect("runc exec");
    assert!(
        status.success(),
        "{binary} healthcheck inside the container: {status}"
    );
}

fn runc_ready() -> Option<PathBuf> {
    let runc = require_tool("runc", "apt-get install runc")?;
    require_tool("umoci", "apt-get install umoci")?;
    if !testkit::require_root("runc") {
        return None;
    }
    Some(runc)
}

#[test]
fn runc_boots_the_fixture_image_as_nonroot() {
    let Some(runc) = runc_ready() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let out = fixture_layout(dir.path());
    let port = free_port();
    let env = vec![format!("PORT={port}")];
    let container = boot(&runc, &out, "demo", &env, dir.path());
    // Keep the answer that ended the wait: asking again only adds a chance to time out.
    let mut answer = None;
    wait_until("fixture in runc", Duration::from_secs(20), || {
        answer = http_get(port, "/health");
        answer.is_some()
    });
    let answer = answer.expect("answer");
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(
        answer.ends_with("65532"),
        "the server reports uid 65532: {answer}"
    );
    assert_eq!(container_uid(&container.id), "65532");
    healthcheck_exits_zero(&container.id, "/usr/local/bin/fixture", &env);
}

#[test]
fn runc_boots_the_gateway_image() {
    let Some(runc) = runc_ready() else { return };
    let gateway = workspace_root().join("target/debug/gateway");
    if !gateway.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "gateway", "--bin", "gateway"])
            .current_dir(workspace_root())
            .status()
            .expect("cargo build");
        assert!(status.success(), "building the gateway");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("oci");
    let binary = format!("gateway={}", gateway.display());
    xtask(
        &[
            "image",
            "gateway",
            "--out",
            &out.display().to_string(),
            "--binary",
            &binary,
        ],
        &[],
    );
    let port = free_port();
    let env = vec![
        format!("GATEWAY_LISTEN=127.0.0.1:{port}"),
        format!("GATEWAY_API_UPSTREAMS=http://127.0.0.1:{}", free_port()),
        format!(
            "GATEWAY_INFERENCE_UPSTREAMS=http://127.0.0.1:{}",
            free_port()
        ),
        "JWT_SECRET=test-secret-not-used-for-anything-real".to_owned(),
    ];
    let container = boot(&runc, &out, "gateway", &env, dir.path());
    wait_until("gateway in runc", Duration::from_secs(30), || {
        http_get(port, "/api/health")
            .is_some_and(|a| a.starts_with("HTTP/1.1 200") || a.starts_with("HTTP/1.0 200"))
    });
    assert_eq!(container_uid(&container.id), "65532");
    healthcheck_exits_zero(&container.id, "/usr/local/bin/gateway", &env);
}

/// The tag the archive gives image `name` of `layout` (its manifest digest's hex) and the
/// config digest of that image: what the classic image store shows as its ID.
fn tag_and_config(layout: &Path, name: &str) -> (String, String) {
    let (_, digest) = index(layout)
        .into_iter()
        .find(|(n, _)| n == name)
        .expect("image in index");
    let config = image_support::blob_json(layout, &digest)["config"]["digest"]
        .as_str()
        .expect("config digest")
        .to_owned();
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    (format!("cairn/{name}:manifest-{hex}"), config)
}

/// The members `names` of the tarball `archive`, as JSON.
fn archive_json(archive: &Path, names: &[&str]) -> Vec<serde_json::Value> {
    let file = std::fs::File::open(archive).expect("archive");
    let mut found = vec![serde_json::Value::Null; names.len()];
    for entry in tar::Archive::new(file).entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let path = entry.path().expect("member path").display().to_string();
        if let Some(i) = names.iter().position(|n| *n == path) {
            let mut text = String::new();
            entry.read_to_string(&mut text).expect("member text");
            found[i] = serde_json::from_str(&text).expect("member JSON");
        }
    }
    found
}

#[test]
fn the_archive_tags_each_image_by_its_manifest_digest_the_same_for_both_image_stores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = fixture_layout(dir.path());
    let archive = out.with_extension("tar");
    let [manifest, index_json] = <[serde_json::Value; 2]>::try_from(archive_json(
        &archive,
        &["manifest.json", "index.json"],
    ))
    .expect("two members");
    let mut entries = Vec::new();
    for (i, name) in ["demo", "demo2"].into_iter().enumerate() {
        let (tag, config) = tag_and_config(&out, name);
        let latest = format!("cairn/{name}:latest");
        // manifest.json, what Docker's classic image store reads.
        assert_eq!(manifest[i]["RepoTags"], serde_json::json!([tag, latest]));
        assert_eq!(
            manifest[i]["Config"],
            format!("blobs/sha256/{}", &config[7..])
        );
        // index.json, what containerd (and Docker's containerd image store) reads: one entry per
        // name; the ref name (the bare image name) only on the content tag's.
        entries.push(serde_json::json!({
            "org.opencontainers.image.ref.name": name,
            "io.containerd.image.name": format!("docker.io/{tag}"),
        }));
        entries
            .push(serde_json::json!({"io.containerd.image.name": format!("docker.io/{latest}")}));
    }
    let annotations: Vec<&serde_json::Value> = index_json["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| &m["annotations"])
        .collect();
    assert_eq!(annotations, entries.iter().collect::<Vec<_>>());

    // Same inputs, same bytes: the tags come from the content, not from the run.
    let again = dir.path().join("again.tar");
    let (out_arg, again_arg, one_arg, two_arg) = (
        out.display().to_string(),
        again.display().to_string(),
        format!("demo={}", dir.path().join("fixture").display()),
        format!("demo2={}", dir.path().join("fixture2").display()),
    );
    xtask(
        &[
            "image",
            "--out",
            &out_arg,
            "--binary",
            &one_arg,
            "--binary",
            &two_arg,
            "--format",
            "docker-archive",
            "--archive",
            &again_arg,
        ],
        &[],
    );
    assert!(
        std::fs::read(&archive).expect("archive") == std::fs::read(&again).expect("again"),
        "two runs wrote different archives"
    );
}

/// `docker load` of the archive, then the image by the content tag the archive gives it: the tag
/// resolves to the config that was built (the classic store's image ID), `docker run` runs it,
/// and a compose file that pins the tag validates and comes up without pulling.
#[test]
fn docker_loads_the_archive_and_compose_runs_the_image_by_its_content_tag() {
    let Some((docker, compose)) = image_support::docker_tools() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let out = fixture_layout(dir.path());
    let (tag, config) = tag_and_config(&out, "demo");
    let (tag2, config2) = tag_and_config(&out, "demo2");
    let file = dir.path().join("compose.yaml");
    std::fs::write(
        &file,
        format!(
            "services:\n  demo:\n    image: {tag}\n    command: [\"id\"]\n    network_mode: none\n"
        ),
    )
    .expect("write compose.yaml");
    let project = ComposeProject {
        docker,
        compose,
        file,
        name: format!("cairnimages{}", std::process::id()),
        env: Vec::new(),
        images: vec![
            tag.clone(),
            tag2.clone(),
            "cairn/demo:latest".to_owned(),
            "cairn/demo2:latest".to_owned(),
        ],
    };
    let load = project.docker(&[
        "load",
        "--input",
        &out.with_extension("tar").display().to_string(),
    ]);
    assert!(load.status.success(), "docker load: {}", stderr(&load));
    let loaded = String::from_utf8_lossy(&load.stdout);
    assert!(loaded.contains(&format!("Loaded image: {tag}")), "{loaded}");
    assert_eq!(project.inspect("{{.Id}}", &tag), config);
    assert_eq!(project.inspect("{{.Id}}", &tag2), config2);
    assert_eq!(project.inspect("{{.Id}}", "cairn/demo:latest"), config);

    let run = project.docker(&[
        "run",
        "--rm",
        "--pull",
        "never",
        "--network",
        "none",
        &tag,
        "id",
    ]);
    assert!(run.status.success(), "docker run: {}", stderr(&run));
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "65532");

    let config_out = project.command(&["config"]);
    assert!(
        config_out.status.success(),
        "docker-compose config: {}",
        stderr(&config_out)
    );
    let rendered = String::from_utf8_lossy(&config_out.stdout);
    assert!(rendered.contains(&format!("image: {tag}")), "{rendered}");
    let up = project.command(&["up", "--no-build", "--exit-code-from", "demo"]);
    let (up_out, up_err) = (String::from_utf8_lossy(&up.stdout), stderr(&up));
    assert!(
        up.status.success(),
        "docker-compose up:\n{up_out}\n{up_err}"
    );
    assert!(
        !up_err.contains("Pulling") && !up_out.contains("Pulling"),
        "it pulled:\n{up_err}"
    );
    assert!(
        up_out.contains("65532"),
        "the container's output:\n{up_out}"
    );
    let ps = project.command(&["ps", "--quiet", "demo"]);
    let container = String::from_utf8_lossy(&ps.stdout).trim().to_owned();
    assert!(!container.is_empty(), "no demo container: {}", stderr(&ps));
    assert_eq!(project.inspect("{{.Image}}", &container), config);
}

#[test]
fn a_new_source_date_epoch_changes_the_config_but_no_layer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = fixture_layout(dir.path());
    let later = dir.path().join("oci-later");
    let binary = format!("demo={}", dir.path().join("fixture").display());
    xtask(
        &[
            "image",
            "--out",
            &later.display().to_string(),
            "--binary",
            &binary,
        ],
        &[("SOURCE_DATE_EPOCH", Path::new("1800000000"))],
    );
    assert_eq!(
        image_support::layers(&out, "demo"),
        image_support::layers(&later, "demo")
    );
    let digest = |layout: &Path| {
        index(layout)
            .into_iter()
            .find(|(n, _)| n == "demo")
            .expect("demo")
            .1
    };
    assert_ne!(
        digest(&out),
        digest(&later),
        "created is part of the config"
    );
}
