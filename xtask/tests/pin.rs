//! `cargo xtask pin` against the real distribution registry (Debian `docker-registry`): an
//! image pushed with cairn's push is resolved and its digest written into the topology with
//! comments and layout kept; `--check` passes; after a different image is pushed under the
//! same tag `--check` fails naming the file, line and image, and pin writes the new digest.

#[allow(dead_code)] // shared with tests/push.rs; these tests use its registry and layouts
mod support;

use std::path::Path;
use std::process::Output;

use support::{Registry, RegistryAuth, RegistryTls};

fn pin(topology: &Path, extra: &[&str]) -> Output {
    support::registry_xtask()
        .arg("pin")
        .arg("--topology")
        .arg(topology)
        .args(["--plain-http", "--retries", "0"])
        .args(extra)
        .env("DOCKER_CONFIG", topology.with_file_name("no-docker-config"))
        .output()
        .expect("run xtask pin")
}

fn assert_ok(output: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{what} failed: {stderr}");
    eprintln!("{what}: {stderr}");
    stderr
}

#[test]
fn pin_resolves_writes_and_check_catches_a_moved_tag() {
    if !support::tools_present() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("cairn-pin-")
        .tempdir()
        .expect("temp dir");
    let registry = Registry::start(dir.path(), RegistryAuth::None, RegistryTls::Plain);
    let target = format!("{}/upstream", registry.host());
    let first = support::build_one_image_layout(&dir.path().join("v1"), "web", 1);
    support::push(&first, &target, &["--plain-http", "--tag", "1.0"], &[]);
    let first_digest = support::layout_digest(&first, "web");

    let unpinned = format!("{target}/web:1.0");
    let original = format!(
        "# An upstream image: pinned by `cargo xtask pin`.\n\
         [images.api]\nbuild = \"api\"\n\n\
         [images.web]   # the edge\n\
         reference = \"{unpinned}\"  # keep this comment\n"
    );
    let topology = dir.path().join("topology.toml");
    std::fs::write(&topology, &original).expect("write topology");

    assert_ok(&pin(&topology, &[]), "pin");
    let pinned_v1 = original.replace(&unpinned, &format!("{unpinned}@{first_digest}"));
    assert_eq!(
        std::fs::read_to_string(&topology).expect("topology"),
        pinned_v1,
        "only the reference string changes"
    );
    let check = assert_ok(&pin(&topology, &["--check"]), "pin --check");
    assert!(check.contains("all 1 upstream pins are current"), "{check}");

    let second = support::build_one_image_layout(&dir.path().join("v2"), "web", 2);
    let second_digest = support::layout_digest(&second, "web");
    assert_ne!(first_digest, second_digest);
    support::push(&second, &target, &["--plain-http", "--tag", "1.0"], &[]);

    let moved = pin(&topology, &["--check"]);
    let stderr = String::from_utf8_lossy(&moved.stderr);
    assert!(!moved.status.success(), "--check must fail after a re-push");
    let expected = format!(
        "{} line 6: images.web: {unpinned} moved: pinned to {first_digest}, the tag now names {second_digest}",
        topology.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&topology).expect("topology"),
        pinned_v1,
        "--check changes nothing"
    );

    assert_ok(&pin(&topology, &[]), "pin after the re-push");
    assert_eq!(
        std::fs::read_to_string(&topology).expect("topology"),
        original.replace(&unpinned, &format!("{unpinned}@{second_digest}"))
    );
    assert_ok(
        &pin(&topology, &["--check"]),
        "pin --check after re-pinning",
    );
}

#[test]
fn a_tag_the_registry_does_not_have_is_named() {
    if !support::tools_present() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("cairn-pin-missing-")
        .tempdir()
        .expect("temp dir");
    let registry = Registry::start(dir.path(), RegistryAuth::None, RegistryTls::Plain);
    let topology = dir.path().join("topology.toml");
    std::fs::write(
        &topology,
        format!(
            "[images.db]\nreference = \"{}/upstream/db:16\"\n",
            registry.host()
        ),
    )
    .expect("write topology");
    let output = pin(&topology, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("images.db (line 2)") && stderr.contains("has no upstream/db:16"),
        "{stderr}"
    );
}
