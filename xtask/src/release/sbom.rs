//! One CycloneDX 1.5 JSON SBOM per image: the crates compiled into its binary (the normal
//! dependency closure of its package in `cargo metadata`'s resolve, for the features it was built
//! with) and the shared libraries packed beside it (with their Debian package and version where
//! `dpkg -S` knows the file).
//!
//! Gathering facts (cargo metadata, dpkg) is separate from the pure mapping to CycloneDX
//! ([`document`]). This module never builds or packs anything: it describes what `build` and
//! `image` produced.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// A crate compiled into a binary.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Crate {
    pub name: String,
    pub version: String,
    /// `registry+https://…`, `path+file://…` or `git+…` from cargo metadata; None for paths.
    pub source: Option<String>,
}

/// A shared library packed into an image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Library {
    pub image_path: String,
    /// `(package, version)` from dpkg, when the host file belongs to a Debian package.
    pub debian: Option<(String, String)>,
}

/// The crates of `package` built with `features`: the normal (not dev, not build) dependency
/// closure in the resolve of `cargo metadata`.
pub fn crates(root: &Path, package: &str, features: &[String]) -> Result<Vec<Crate>> {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root).args([
        "metadata",
        "--format-version",
        "1",
        "--locked",
        "--offline",
        "--filter-platform",
        host_triple()?.as_str(),
    ]);
    if !features.is_empty() {
        command.args(["--features", &format!("{package}/{}", features.join(","))]);
    }
    let output = command.output().context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let metadata: Value =
        serde_json::from_slice(&output.stdout).context("parsing cargo metadata")?;
    closure(&metadata, package)
}

/// The normal-dependency closure of `package` in `metadata` (pure).
pub fn closure(metadata: &Value, package: &str) -> Result<Vec<Crate>> {
    let packages: BTreeMap<&str, &Value> = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["id"].as_str().map(|id| (id, p)))
        .collect();
    let nodes: BTreeMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["id"].as_str().map(|id| (id, n)))
        .collect();
    let start = packages
        .iter()
        .find(|(_, p)| p["name"] == package && p["source"].is_null())
        .map(|(id, _)| *id)
        .with_context(|| format!("package {package:?} is not a member of the workspace"))?;
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut queue = vec![start];
    while let Some(id) = queue.pop() {
        if !seen.insert(id) {
            continue;
        }
        let Some(node) = nodes.get(id) else { continue };
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|kind| kind["kind"].is_null());
            if let (true, Some(dep_id)) = (normal, dep["pkg"].as_str()) {
                queue.push(dep_id);
            }
        }
    }
    let mut crates: Vec<Crate> = seen
        .iter()
        .filter_map(|id| packages.get(id))
        .map(|p| Crate {
            name: p["name"].as_str().unwrap_or_default().to_owned(),
            version: p["version"].as_str().unwrap_or_default().to_owned(),
            source: p["source"].as_str().map(str::to_owned),
        })
        .collect();
    crates.sort();
    Ok(crates)
}

fn host_triple() -> Result<String> {
    let output = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV printed no host line")
}

/// The Debian package owning `host_path` and its installed version, if dpkg knows the file
/// (tried as given and canonicalized, for merged-/usr systems).
pub fn debian_package(host_path: &Path) -> Option<(String, String)> {
    let canonical = host_path.canonicalize().ok();
    let candidates = std::iter::once(host_path.to_path_buf()).chain(canonical);
    for path in candidates {
        let output = Command::new("dpkg").arg("-S").arg(&path).output().ok()?;
        if !output.status.success() {
            continue;
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let package = text.lines().next()?.split_once(": ")?.0.to_owned();
        let version = Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", &package])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())?;
        return Some((package, version));
    }
    None
}

/// The CycloneDX 1.5 document for image `name` (pure). `digest` is the image manifest digest.
pub fn document(name: &str, digest: &str, crates: &[Crate], libraries: &[Library]) -> Value {
    let mut components: Vec<Value> = crates.iter().map(crate_component).collect();
    components.extend(libraries.iter().map(library_component));
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "serialNumber": format!("urn:uuid:{}", uuid_from(digest)),
        "metadata": {
            "component": {
                "type": "container",
                "name": name,
                "version": digest,
                "bom-ref": format!("image:{name}"),
            },
            "tools": {"components": [{"type": "application", "name": "cargo xtask release"}]},
        },
        "components": components,
    })
}

fn crate_component(krate: &Crate) -> Value {
    let mut component = json!({
        "type": "library",
        "name": krate.name,
        "version": krate.version,
        "bom-ref": format!("crate:{}@{}", krate.name, krate.version),
    });
    if krate
        .source
        .as_deref()
        .is_some_and(|s| s.contains("crates.io"))
    {
        component["purl"] = json!(format!("pkg:cargo/{}@{}", krate.name, krate.version));
    }
    component
}

fn library_component(library: &Library) -> Value {
    let mut component = json!({
        "type": "library",
        "name": library.image_path,
        "bom-ref": format!("file:{}", library.image_path),
    });
    if let Some((package, version)) = &library.debian {
        let package = package.split(':').next().unwrap_or(package);
        component["version"] = json!(version);
        component["purl"] = json!(format!("pkg:deb/debian/{package}@{version}"));
        component["properties"] = json!([{"name": "debian:package", "value": package}]);
    }
    component
}

/// Adds the PyPI wheels a GPU image's CUDA layers come from, with their SHA-256.
pub fn add_wheels(document: &mut Value, wheels: &[crate::cuda::lock::PinnedWheel]) {
    let Some(components) = document["components"].as_array_mut() else {
        return;
    };
    components.extend(wheels.iter().map(|wheel| {
        json!({
            "type": "library",
            "name": wheel.name,
            "version": wheel.version,
            "bom-ref": format!("wheel:{}@{}", wheel.name, wheel.version),
            "purl": format!("pkg:pypi/{}@{}", wheel.name, wheel.version),
            "hashes": [{"alg": "SHA-256", "content": wheel.sha256}],
        })
    }));
}

/// A deterministic UUID-shaped serial from the image digest, so an unchanged image gets an
/// unchanged SBOM.
fn uuid_from(digest: &str) -> String {
    let hex: String = digest
        .trim_start_matches("sha256:")
        .chars()
        .chain(std::iter::repeat('0'))
        .take(32)
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closure_follows_normal_dependencies_only() {
        let metadata = json!({
            "packages": [
                {"id": "app", "name": "app", "version": "0.1.0", "source": null},
                {"id": "serde", "name": "serde", "version": "1.0.0",
                 "source": "registry+https://github.com/rust-lang/crates.io-index"},
                {"id": "cc", "name": "cc", "version": "1.0.0",
                 "source": "registry+https://github.com/rust-lang/crates.io-index"},
                {"id": "expect", "name": "expect-test", "version": "1.5.0",
                 "source": "registry+https://github.com/rust-lang/crates.io-index"},
            ],
            "resolve": {"nodes": [
                {"id": "app", "deps": [
                    {"pkg": "serde", "dep_kinds": [{"kind": null}]},
                    {"pkg": "cc", "dep_kinds": [{"kind": "build"}]},
                    {"pkg": "expect", "dep_kinds": [{"kind": "dev"}]},
                ]},
                {"id": "serde", "deps": []},
            ]},
        });
        let names: Vec<String> = closure(&metadata, "app")
            .expect("closure")
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["app", "serde"]);
    }
}
