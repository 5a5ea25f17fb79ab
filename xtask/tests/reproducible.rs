//! Reproducibility, tested: two checkouts of this commit (git worktrees under a temp dir) with
//! separate target directories build two small services with `cargo xtask build` and assemble
//! them with `cargo xtask image`, together with the nginx image (pinned Debian packages, the
//! site and the std-only `http-probe`); every blob and index.json are identical. Then one source
//! file of one service changes, and only that service's application layer (and its config and
//! manifest) change. The services are std-only crates the test adds, so CI stays fast; the
//! postgres image is left out because its entrypoint's release build (thiserror, syn) would
//! double the test's time, and it is assembled by the same code as nginx.

mod image_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use image_support::{index, layers, xtask};

struct Worktree {
    repo: PathBuf,
    path: PathBuf,
}

impl Drop for Worktree {
    fn drop(&mut self) {
        let _ = Command::new("git")
            .arg("-C")
            .arg(&self.repo)
            .args(["worktree", "remove", "--force"])
            .arg(&self.path)
            .status();
    }
}

fn worktree(repo: &Path, path: &Path) -> Worktree {
    let status = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["worktree", "add", "--detach", "--quiet"])
        .arg(path)
        .arg("HEAD")
        .status()
        .expect("git worktree add");
    assert!(status.success(), "git worktree add {}", path.display());
    add_service(path, "fixture-a", "a");
    add_service(path, "fixture-b", "b");
    // Record the two path packages in this checkout's Cargo.lock, so `--locked` builds work.
    // `cargo update --workspace` touches only the workspace's own entries and needs no crate
    // sources: `cargo metadata --offline` would need every locked crate of every platform in
    // the local cache, which a fresh machine does not have (android_system_properties, …).
    let status = Command::new(env!("CARGO"))
        .args(["update", "--workspace", "--offline", "--quiet"])
        .current_dir(path)
        .status()
        .expect("cargo update");
    assert!(
        status.success(),
        "cargo update --workspace in {}",
        path.display()
    );
    Worktree {
        repo: repo.to_owned(),
        path: path.to_owned(),
    }
}

fn add_service(checkout: &Path, name: &str, greeting: &str) {
    let dir = checkout.join("services").join(name);
    std::fs::create_dir_all(dir.join("src")).expect("service dir");
    std::fs::write(
        dir.join("Cargo.toml"),
        format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n"),
    )
    .expect("Cargo.toml");
    write_main(checkout, name, greeting);
}

fn write_main(checkout: &Path, name: &str, greeting: &str) {
    let main = format!(
        "fn main() {{\n    println!(\"{greeting} from {{}}\", file!());\n    if std::env::args().count() > 5 {{\n        panic!(\"too many arguments\");\n    }}\n}}\n"
    );
    std::fs::write(
        checkout.join("services").join(name).join("src/main.rs"),
        main,
    )
    .expect("main.rs");
}

/// Builds both services in `checkout` into `target` and writes their images into `out`.
fn build_and_assemble(checkout: &Path, target: &Path, out: &Path) {
    let envs = [("CAIRN_ROOT", checkout), ("CARGO_TARGET_DIR", target)];
    let output = xtask(&["build", "fixture-a", "fixture-b", "--json"], &envs);
    let built: serde_json::Value = serde_json::from_slice(&output.stdout).expect("build JSON");
    let mut args: Vec<String> = vec![
        "image".into(),
        "fixture-a".into(),
        "fixture-b".into(),
        "nginx".into(),
        "--out".into(),
        out.display().to_string(),
    ];
    for binary in built.as_array().expect("binaries") {
        let path = binary["path"].as_str().expect("path");
        let contents = std::fs::read(path).expect("binary");
        for trace in [checkout.display().to_string(), target.display().to_string()] {
            assert!(
                !contents.windows(trace.len()).any(|w| w == trace.as_bytes()),
                "{path} contains the machine path {trace}"
            );
        }
        args.push("--binary".into());
        args.push(format!("{}={path}", binary["bin"].as_str().expect("bin")));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    xtask(&args, &envs);
}

fn blob_names(layout: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(layout.join("blobs/sha256"))
        .expect("blobs")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    names.sort();
    names
}

#[test]
fn two_checkouts_give_identical_digests_and_one_change_touches_one_layer() {
    let Some(_) = testkit::require_tool("git", "apt-get install git") else {
        return;
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    if !repo.join(".git").exists() {
        assert!(
            !testkit::in_ci(),
            "the reproducibility test needs a git checkout"
        );
        eprintln!("SKIPPED: not a git checkout");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let first = worktree(repo, &dir.path().join("checkout-one"));
    let second = worktree(repo, &dir.path().join("elsewhere/checkout-two"));
    let (out_one, out_two) = (dir.path().join("oci-one"), dir.path().join("oci-two"));
    build_and_assemble(&first.path, &dir.path().join("target-one"), &out_one);
    build_and_assemble(&second.path, &dir.path().join("target-two"), &out_two);
    assert_eq!(
        std::fs::read(out_one.join("index.json")).expect("index"),
        std::fs::read(out_two.join("index.json")).expect("index"),
        "index.json differs between checkouts"
    );
    assert_eq!(
        blob_names(&out_one),
        blob_names(&out_two),
        "blobs differ between checkouts"
    );

    write_main(&second.path, "fixture-a", "changed");
    let out_changed = dir.path().join("oci-changed");
    build_and_assemble(&second.path, &dir.path().join("target-two"), &out_changed);
    let (before, after) = (
        layers(&out_one, "fixture-a"),
        layers(&out_changed, "fixture-a"),
    );
    assert_eq!(before[0], after[0], "the system layer must not change");
    assert_ne!(before[1], after[1], "the application layer must change");
    let unchanged = |layout: &Path| {
        index(layout)
            .into_iter()
            .find(|(n, _)| n == "fixture-b")
            .expect("fixture-b")
    };
    assert_eq!(
        unchanged(&out_one),
        unchanged(&out_changed),
        "fixture-b must not change at all"
    );
    let nginx = |layout: &Path| {
        index(layout)
            .into_iter()
            .find(|(n, _)| n == "nginx")
            .expect("nginx")
    };
    assert_eq!(
        nginx(&out_one),
        nginx(&out_changed),
        "nginx must not change"
    );
}
