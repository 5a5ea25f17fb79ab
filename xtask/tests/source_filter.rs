//! The flake's source filter keeps every file the build needs. The rule is data,
//! `nix/source-filter.json`, read by `nix/packages.nix` (as `lib.fileset` unions) and here: these
//! tests apply the same rule to the files the flake sees (git's tracked files, as a flake in a git
//! checkout does; the whole tree when there is no git, e.g. in the Nix sandbox, whose source is
//! already filtered) and
//!
//! - check that every file the crates embed (`include_str!`, `include_bytes!`, `sqlx::migrate!`)
//!   is kept, naming the source line when one is not (cheap and precise);
//! - copy exactly the kept files into a scratch directory and run
//!   `cargo check --workspace --all-targets --offline --locked` there: whatever else the build
//!   needs (a module file, a build script's input) fails here, not first on a Nix machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// `nix/source-filter.json`: a file is kept when its name ends in `.EXT` for one of
/// `extensions`, its name is one of `names`, or it lies under one of `directories`.
#[derive(Debug, Deserialize)]
struct Rule {
    extensions: Vec<String>,
    names: Vec<String>,
    directories: Vec<String>,
}

impl Rule {
    fn read() -> Rule {
        let path = root().join("nix/source-filter.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
    }

    /// Whether the file at `relative` (slash-separated, from the repository root) is kept.
    /// Mirrors `lib.fileset.fileFilter`'s `hasExt` (`hasSuffix ".${ext}" name`) and `name`.
    fn keeps(&self, relative: &str) -> bool {
        let name = relative.rsplit('/').next().unwrap_or(relative);
        self.extensions
            .iter()
            .any(|ext| name.ends_with(&format!(".{ext}")))
            || self.names.iter().any(|n| n == name)
            || self
                .directories
                .iter()
                .any(|dir| relative.starts_with(&format!("{dir}/")))
    }
}

/// The files the flake sees, relative to the root: git's tracked files (a flake in a git
/// checkout sees only those) that exist, or every file outside `target/` and `.git` when the
/// tree is not a git checkout.
fn repository_files(root: &Path) -> Vec<String> {
    let listed = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["ls-files", "-z"])
        .output()
        .ok()
        .filter(|output| output.status.success());
    let mut files: Vec<String> = match listed {
        Some(output) => String::from_utf8_lossy(&output.stdout)
            .split('\0')
            .filter(|name| !name.is_empty() && root.join(name).is_file())
            .map(str::to_owned)
            .collect(),
        None => {
            let mut found = Vec::new();
            walk(root, root, &mut found);
            found
        }
    };
    files.sort();
    files
}

fn walk(root: &Path, dir: &Path, found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == ".git" || (dir == root && name == "target") {
            continue;
        }
        if path.is_dir() {
            walk(root, &path, found);
        } else if path.is_file() {
            let relative = path.strip_prefix(root).expect("under root");
            found.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}

#[test]
fn the_rule_keeps_cargo_sources_and_drops_the_rest() {
    let rule = Rule::read();
    for kept in [
        "Cargo.toml",
        "Cargo.lock",
        ".cargo/config.toml",
        "xtask/src/main.rs",
        "services/api/migrations/0001_init.sql",
        "deploy/topology.toml",
        "nginx/anything",
        "flake.lock",
    ] {
        assert!(rule.keeps(kept), "the rule drops {kept}");
    }
    for dropped in [
        "README.md",
        "ARCHITECTURE.md",
        ".ci/run",
        "xtask/deploy/x.md",
    ] {
        assert!(!rule.keeps(dropped), "the rule keeps {dropped}");
    }
}

/// One embedded file or directory: the source line naming it and the path it resolves to.
#[derive(Debug)]
struct Embedded {
    at: String,
    path: PathBuf,
}

/// Where `name` (e.g. `include_str!(`) is invoked on `line`: not in a comment, not inside a
/// string literal that merely names it (as this file's own scanner and messages do).
fn invocation(line: &str, name: &str) -> Option<usize> {
    if line.trim_start().starts_with("//") {
        return None;
    }
    // Inside a literal when an odd number of unescaped quotes precede it on the line.
    let in_string = |at: usize| {
        line[..at]
            .char_indices()
            .filter(|&(i, c)| c == '"' && !line[..i].ends_with('\\'))
            .count()
            % 2
            == 1
    };
    line.match_indices(name)
        .map(|(at, _)| at)
        .find(|&at| !in_string(at))
}

/// The string literal right after `macro!(` at the start of `text`, if any.
fn first_literal(text: &str) -> Option<&str> {
    let rest = text.trim_start().strip_prefix('"')?;
    rest.find('"').map(|end| &rest[..end])
}

/// The nearest directory above `file` holding a Cargo.toml (the crate's manifest directory,
/// which `sqlx::migrate!` paths are relative to).
fn manifest_dir(file: &Path) -> PathBuf {
    file.ancestors()
        .skip(1)
        .find(|dir| dir.join("Cargo.toml").is_file())
        .expect("every .rs file lies in a crate")
        .to_path_buf()
}

/// Every `include_str!`, `include_bytes!` and `migrate!` of the Rust files among `files`.
fn embedded_paths(root: &Path, files: &[String]) -> Vec<Embedded> {
    let mut found = Vec::new();
    for relative in files.iter().filter(|f| f.ends_with(".rs")) {
        let file = root.join(relative);
        let text = std::fs::read_to_string(&file).expect("read a .rs file");
        for (number, line) in text.lines().enumerate() {
            let at = format!("{relative}:{}", number + 1);
            for include in ["include_str!(", "include_bytes!("] {
                if let Some(start) = invocation(line, include)
                    && let Some(literal) = first_literal(&line[start + include.len()..])
                {
                    let path = file.parent().expect("file has a parent").join(literal);
                    found.push(Embedded {
                        at: at.clone(),
                        path,
                    });
                }
            }
            if let Some(start) = invocation(line, "migrate!(") {
                let literal =
                    first_literal(&line[start + "migrate!(".len()..]).unwrap_or("migrations");
                found.push(Embedded {
                    at,
                    path: manifest_dir(&file).join(literal),
                });
            }
        }
    }
    found
}

/// `a/b/../c` -> `a/c`, without touching the file system.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn every_file_the_crates_embed_is_kept() {
    let root = root();
    let rule = Rule::read();
    let files = repository_files(&root);
    let embedded = embedded_paths(&root, &files);
    assert!(
        embedded
            .iter()
            .any(|e| e.at.starts_with("services/api/src/db/mod.rs")),
        "the scan finds the api's migrate!(): {embedded:?}"
    );
    let mut dropped = Vec::new();
    for item in &embedded {
        let path = normalise(&item.path);
        let relative = path
            .strip_prefix(&root)
            .unwrap_or_else(|_| {
                panic!(
                    "{}: {} lies outside the repository",
                    item.at,
                    path.display()
                )
            })
            .to_string_lossy()
            .into_owned();
        // A file, or every file under a directory (migrations).
        let named: Vec<&String> = files
            .iter()
            .filter(|f| **f == relative || f.starts_with(&format!("{relative}/")))
            .collect();
        if named.is_empty() {
            dropped.push(format!(
                "{}: {relative} is not a file git tracks (the flake cannot see it)",
                item.at
            ));
        }
        for file in named.into_iter().filter(|f| !rule.keeps(f)) {
            dropped.push(format!(
                "{}: {file} is dropped by nix/source-filter.json",
                item.at
            ));
        }
    }
    assert!(dropped.is_empty(), "{}", dropped.join("\n"));
}

/// Copies `files` from `root` into `tree`, keeping their modification times so that cargo sees
/// an unchanged copy as fresh on the next run.
fn copy_tree(root: &Path, files: &[&String], tree: &Path) {
    let _ = std::fs::remove_dir_all(tree);
    for relative in files {
        let from = root.join(relative);
        let to = tree.join(relative);
        std::fs::create_dir_all(to.parent().expect("a parent")).expect("create a directory");
        std::fs::copy(&from, &to).unwrap_or_else(|err| panic!("copying {}: {err}", from.display()));
        let modified = std::fs::metadata(&from)
            .and_then(|m| m.modified())
            .expect("modification time");
        std::fs::File::options()
            .write(true)
            .open(&to)
            .and_then(|f| f.set_modified(modified))
            .expect("keep the modification time");
    }
}

/// The workspace's own target directory (`CARGO_TARGET_TMPDIR` is its `tmp/`). Sharing it is
/// what makes this check affordable: the dependencies' check artefacts that `cargo clippy` (run
/// before the tests by `cargo xtask test`) or the Nix dependency build left there are reused, and
/// only the copied workspace crates are checked (a package at another path is another unit, so
/// nothing of the real workspace's is overwritten). A separate target directory would check
/// every dependency again: measured here, over 5 minutes for the first 40 of them on the shared
/// 2-core machine. Cargo releases the directory's lock before it runs test binaries.
fn shared_target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR lies in the target directory")
        .to_path_buf()
}

#[test]
fn the_workspace_checks_from_exactly_the_kept_files() {
    let root = root();
    let rule = Rule::read();
    let files = repository_files(&root);
    let (kept, dropped): (Vec<&String>, Vec<&String>) =
        files.iter().partition(|file| rule.keeps(file));
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("source-filter");
    let tree = scratch.join("tree");
    copy_tree(&root, &kept, &tree);

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(&tree)
        .args([
            "check",
            "--workspace",
            "--all-targets",
            "--offline",
            "--locked",
            "--quiet",
        ])
        .env("CARGO_TARGET_DIR", shared_target_dir())
        .output()
        .expect("run cargo check");
    assert!(
        output.status.success(),
        "cargo check fails on the files nix/source-filter.json keeps (copied to {}); the rule \
         drops {}:\n{}",
        tree.display(),
        dropped
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        String::from_utf8_lossy(&output.stderr)
    );
}
