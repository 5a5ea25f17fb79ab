//! The Nix flake, checked as far as a machine without nixpkgs allows: every .nix file parses
//! (`nix-instantiate --parse`), deadnix finds nothing unused, flake.lock locks exactly the inputs
//! flake.nix declares (names, sources and `follows`), and the Rust version the flake's toolchain
//! expects is the one rust-toolchain.toml pins. Nothing here fetches or builds with Nix.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// A fresh, empty directory for one test under cargo's per-target temp dir.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Every .nix file of the checkout, outside build output and hidden directories.
fn nix_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| entry.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            found.extend(nix_files(&path));
        } else if name.ends_with(".nix") {
            found.push(path);
        }
    }
    found
}

/// `nix-instantiate` on the `dummy://` store: parsing and evaluating plain expressions need no
/// store, so the tests run the same without a Nix daemon or inside the Nix build sandbox.
fn nix_command(nix_instantiate: &Path) -> Command {
    let mut command = Command::new(nix_instantiate);
    command.args(["--store", "dummy://"]);
    command
}

/// `nix-instantiate --parse FILE`: Ok, or Nix's message (which names the file, line and column).
/// Parsing also resolves variables, so an undefined name is an error here too.
fn parse_nix(nix_instantiate: &Path, file: &Path) -> Result<(), String> {
    let output = nix_command(nix_instantiate)
        .arg("--parse")
        .arg(file)
        .output()
        .expect("run nix-instantiate");
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn nix_instantiate() -> Option<PathBuf> {
    testkit::require_tool("nix-instantiate", "apt-get install nix-bin")
}

#[test]
fn every_nix_file_parses() {
    let Some(nix) = nix_instantiate() else { return };
    let files = nix_files(&root());
    let names: Vec<_> = files
        .iter()
        .map(|f| f.strip_prefix(root()).expect("under root").to_path_buf())
        .collect();
    for expected in ["flake.nix", "nix/toolchain.nix", "nix/packages.nix"] {
        assert!(
            names.contains(&PathBuf::from(expected)),
            "{expected} not found among {names:?}"
        );
    }
    let failures: Vec<String> = files
        .iter()
        .filter_map(|file| parse_nix(&nix, file).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_broken_nix_file_is_reported_with_its_line() {
    let Some(nix) = nix_instantiate() else { return };
    let dir = scratch_dir("broken-nix");
    let file = dir.join("broken.nix");
    std::fs::write(&file, "{ a = 1;\n  b = ;\n}\n").expect("write broken.nix");
    let message = parse_nix(&nix, &file).expect_err("a syntax error must not parse");
    assert!(
        message.contains("broken.nix:2"),
        "message names the file and line: {message}"
    );

    let file = dir.join("undefined.nix");
    std::fs::write(&file, "{ pkgs }:\n{ a = pkgs.hello;\n  b = pkgz.hello; }\n")
        .expect("write undefined.nix");
    let message = parse_nix(&nix, &file).expect_err("an undefined variable must not parse");
    assert!(
        message.contains("undefined variable 'pkgz'") && message.contains("undefined.nix:3"),
        "message names the variable, file and line: {message}"
    );
}

fn deadnix(args: &[&Path]) -> Option<std::process::Output> {
    let deadnix = testkit::require_tool("deadnix", "cargo install --locked deadnix")?;
    Some(
        Command::new(deadnix)
            .arg("--fail")
            .args(args)
            .output()
            .expect("run deadnix"),
    )
}

#[test]
fn deadnix_finds_nothing_unused() {
    let root = root();
    let Some(output) = deadnix(&[&root.join("flake.nix"), &root.join("nix")]) else {
        return;
    };
    assert!(
        output.status.success(),
        "deadnix found unused code:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn deadnix_fails_on_an_unused_binding() {
    let dir = scratch_dir("deadnix-unused");
    let file = dir.join("unused.nix");
    std::fs::write(&file, "let unused = 1; in { a = 2; }\n").expect("write unused.nix");
    let Some(output) = deadnix(&[&file]) else {
        return;
    };
    assert!(!output.status.success(), "deadnix --fail accepted {file:?}");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        report.contains("unused"),
        "report names the binding: {report}"
    );
}

/// flake.nix's `inputs`, evaluated by Nix itself (offline: `outputs` is never called).
fn declared_inputs(nix: &Path, flake: &Path) -> Value {
    let expr = format!("(import {}).inputs", flake.display());
    let output = nix_command(nix)
        .args(["--eval", "--json", "--strict", "-E", &expr])
        .output()
        .expect("run nix-instantiate --eval");
    assert!(
        output.status.success(),
        "evaluating the inputs of {}: {}",
        flake.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("nix-instantiate --json prints JSON")
}

/// The `original` a flake URL becomes in flake.lock, for the URL forms the flake uses.
fn original_of(url: &str) -> Result<BTreeMap<String, String>, String> {
    let Some(rest) = url.strip_prefix("github:") else {
        return Err(format!(
            "unsupported input URL `{url}` (only github: is checked)"
        ));
    };
    let mut parts = rest.splitn(3, '/');
    let (Some(owner), Some(repo)) = (parts.next(), parts.next()) else {
        return Err(format!("input URL `{url}` lacks owner/repo"));
    };
    let mut original = BTreeMap::from([
        ("type".to_owned(), "github".to_owned()),
        ("owner".to_owned(), owner.to_owned()),
        ("repo".to_owned(), repo.to_owned()),
    ]);
    if let Some(reference) = parts.next() {
        original.insert("ref".to_owned(), reference.to_owned());
    }
    Ok(original)
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|object| {
            object
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Every way flake.lock disagrees with the declared inputs; empty when it locks exactly them.
fn lock_mismatches(declared: &Value, lock: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let nodes = &lock["nodes"];
    let root_name = lock["root"].as_str().unwrap_or("root");
    let root_inputs = nodes[root_name]["inputs"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let declared = declared.as_object().cloned().unwrap_or_default();

    let declared_names: BTreeSet<&String> = declared.keys().collect();
    let locked_names: BTreeSet<&String> = root_inputs.keys().collect();
    for name in declared_names.difference(&locked_names) {
        problems.push(format!(
            "flake.nix declares input `{name}` but flake.lock does not lock it (run `nix flake lock`)"
        ));
    }
    for name in locked_names.difference(&declared_names) {
        problems.push(format!(
            "flake.lock locks `{name}`, which flake.nix does not declare"
        ));
    }

    for (name, input) in &declared {
        let Some(node_name) = root_inputs.get(name).and_then(Value::as_str) else {
            continue;
        };
        let node = &nodes[node_name];
        if let Some(url) = input["url"].as_str() {
            match original_of(url) {
                Ok(expected) if expected != string_map(&node["original"]) => {
                    problems.push(format!(
                        "input `{name}`: flake.nix says `{url}` but flake.lock's original is {}",
                        node["original"]
                    ))
                }
                Ok(_) => {}
                Err(problem) => problems.push(format!("input `{name}`: {problem}")),
            }
        }
        let follows = input["inputs"].as_object().cloned().unwrap_or_default();
        for (dependency, setting) in follows {
            let Some(target) = setting["follows"].as_str() else {
                continue;
            };
            let expected: Vec<Value> = target.split('/').map(Value::from).collect();
            if node["inputs"][&dependency] != Value::Array(expected) {
                problems.push(format!(
                    "input `{name}`: flake.nix makes `{dependency}` follow `{target}` but flake.lock has {}",
                    node["inputs"][&dependency]
                ));
            }
        }
    }

    problems.extend(unreachable_or_unlocked_nodes(nodes, root_name));
    problems
}

/// Lock nodes no input leads to (stale entries) and nodes without a pinned revision and hash.
fn unreachable_or_unlocked_nodes(nodes: &Value, root_name: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut reached = BTreeSet::from([root_name.to_owned()]);
    let mut queue = vec![root_name.to_owned()];
    while let Some(name) = queue.pop() {
        let inputs = nodes[&name]["inputs"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for target in inputs.values() {
            // A string names a node; an array is a `follows` path, resolved from the root.
            if let Some(node) = target.as_str()
                && reached.insert(node.to_owned())
            {
                queue.push(node.to_owned());
            }
        }
    }
    for (name, node) in nodes.as_object().cloned().unwrap_or_default() {
        if !reached.contains(&name) {
            problems.push(format!(
                "flake.lock node `{name}` is not reachable from the root"
            ));
        }
        if name != root_name {
            let locked = &node["locked"];
            for field in ["rev", "narHash"] {
                if locked[field].as_str().is_none_or(str::is_empty) {
                    problems.push(format!("flake.lock node `{name}` has no locked.{field}"));
                }
            }
        }
    }
    problems
}

fn read_lock() -> Value {
    let path = root().join("flake.lock");
    let text = std::fs::read_to_string(&path).expect("read flake.lock");
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

#[test]
fn flake_lock_locks_exactly_the_declared_inputs() {
    let Some(nix) = nix_instantiate() else { return };
    let declared = declared_inputs(&nix, &root().join("flake.nix"));
    assert!(
        declared.get("nixpkgs").is_some() && declared.get("crane").is_some(),
        "inputs evaluated to {declared}"
    );
    let problems = lock_mismatches(&declared, &read_lock());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn lock_check_reports_a_missing_input_a_moved_url_and_a_broken_follows() {
    let Some(nix) = nix_instantiate() else { return };
    let mut declared = declared_inputs(&nix, &root().join("flake.nix"));
    declared["extra"] = serde_json::json!({ "url": "github:example/extra" });
    declared["crane"]["url"] = Value::from("github:someone-else/crane");
    let mut lock = read_lock();
    lock["nodes"]["fenix"]["inputs"]["nixpkgs"] = Value::from("nixpkgs");
    lock["nodes"]["stale"] = serde_json::json!({ "locked": { "rev": "0", "narHash": "x" } });

    let problems = lock_mismatches(&declared, &lock).join("\n");
    for expected in [
        "flake.nix declares input `extra` but flake.lock does not lock it",
        "input `crane`: flake.nix says `github:someone-else/crane`",
        "input `fenix`: flake.nix makes `nixpkgs` follow `nixpkgs`",
        "flake.lock node `stale` is not reachable from the root",
    ] {
        assert!(
            problems.contains(expected),
            "missing `{expected}` in:\n{problems}"
        );
    }
}

/// The value of `key = "…"` (TOML) or `key = "…";` (Nix) on one line.
fn nix_string_binding(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line
            .trim()
            .strip_prefix(key)?
            .trim_start()
            .strip_prefix('=')?;
        let value = rest.trim().trim_end_matches(';').trim_end();
        Some(value.strip_prefix('"')?.strip_suffix('"')?.to_owned())
    })
}

#[test]
fn flake_toolchain_is_the_version_rust_toolchain_toml_pins() {
    let toolchain_toml =
        std::fs::read_to_string(root().join("rust-toolchain.toml")).expect("rust-toolchain.toml");
    let pinned =
        nix_string_binding(&toolchain_toml, "channel").expect("channel in rust-toolchain.toml");
    let toolchain_nix =
        std::fs::read_to_string(root().join("nix/toolchain.nix")).expect("nix/toolchain.nix");
    let expected = nix_string_binding(&toolchain_nix, "fenixStableVersion")
        .expect("fenixStableVersion in nix/toolchain.nix");
    assert_eq!(
        pinned, expected,
        "rust-toolchain.toml and nix/toolchain.nix disagree on the Rust version"
    );
}

#[test]
fn every_file_under_nix_is_wired_into_the_flake() {
    let flake = std::fs::read_to_string(root().join("flake.nix")).expect("read flake.nix");
    let mut entries: Vec<_> = std::fs::read_dir(root().join("nix"))
        .expect("read nix/")
        .map(|entry| entry.expect("dir entry").file_name())
        .collect();
    entries.sort();
    let orphans: Vec<_> = entries
        .iter()
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| !flake.contains(&format!("./nix/{name}")))
        .collect();
    assert!(
        orphans.is_empty(),
        "files under nix/ that flake.nix never references: {orphans:?}"
    );
}

#[test]
fn the_image_command_is_quotable_and_uses_only_declared_placeholders() {
    let path = root().join("nix/image-command.json");
    let command: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read image-command.json"))
            .expect("image-command.json is JSON");
    let placeholders: BTreeSet<String> = command["placeholders"]
        .as_array()
        .expect("placeholders")
        .iter()
        .map(|p| format!("@{}@", p.as_str().expect("placeholder names are strings")))
        .collect();
    for list in [
        "argv",
        "cudaArgv",
        "fileArgv",
        "treeArgv",
        "programArgv",
        "envArgv",
    ] {
        for arg in command[list].as_array().expect("argument list") {
            let arg = arg.as_str().expect("arguments are strings");
            // nix/images.nix double-quotes each argument: these characters need nothing more.
            assert!(
                arg.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "@._/=-".contains(c)),
                "{}: `{arg}` in {list} needs shell quoting",
                path.display()
            );
            let mut rest = arg;
            while let Some(start) = rest.find('@') {
                let end = rest[start + 1..]
                    .find('@')
                    .unwrap_or_else(|| panic!("unclosed placeholder in `{arg}`"));
                let placeholder = &rest[start..start + end + 2];
                assert!(
                    placeholders.contains(placeholder),
                    "`{placeholder}` in {list} is not declared in placeholders"
                );
                rest = &rest[start + end + 2..];
            }
        }
    }
}
