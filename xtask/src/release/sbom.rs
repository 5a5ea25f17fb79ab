//! One CycloneDX 1.5 JSON SBOM per image: the crates compiled into its binary (the normal
//! dependency closure of its package as `cargo tree -e normal` resolves it, for the features it
//! was built with), the pinned Debian packages whose files it holds (name and version from
//! deploy/debian.lock), and any shared library packed from the build host instead (with its
//! Debian package and version where `dpkg -S` knows the file).
//!
//! Gathering facts (cargo tree, dpkg) is separate from the pure mapping to CycloneDX
//! ([`document`]). This module never builds or packs anything: it describes what `build` and
//! `image` produced.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// A crate compiled into a binary.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Crate {
    pub name: String,
    pub version: String,
    /// `registry+https://…` for crates.io, the URL `cargo tree` names for a git or other registry
    /// crate; None for a path crate of the workspace.
    pub source: Option<String>,
}

/// A Debian package whose files are in an image (from deploy/debian.lock).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    pub name: String,
    pub version: String,
}

/// A shared library packed into an image from the build host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Library {
    pub image_path: String,
    /// `(package, version)` from dpkg, when the host file belongs to a Debian package.
    pub debian: Option<(String, String)>,
}

/// The crates of `package` built with `features`: its normal (not dev, not build) dependency
/// closure for the host target, as `cargo tree -e normal` resolves it.
///
/// `cargo tree` without dev edges downloads only the crates a build of `package` needs, which the
/// build has already fetched. `cargo metadata` (used before) needs every crate of the workspace,
/// test-only ones included: a fresh cargo home failed there unless the tests had run first.
pub fn crates(root: &Path, package: &str, features: &[String]) -> Result<Vec<Crate>> {
    run_crates(crates_command(root, package, features)?)
}

/// The `cargo tree` command `crates` runs (tests give it a cargo home of their own).
fn crates_command(root: &Path, package: &str, features: &[String]) -> Result<Command> {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root).args([
        "tree",
        "--locked",
        "-p",
        package,
        "-e",
        "normal",
        "--prefix",
        "none",
        "--format",
        "{p}",
        "--target",
        host_triple()?.as_str(),
    ]);
    if !features.is_empty() {
        command.args(["--features", &format!("{package}/{}", features.join(","))]);
    }
    Ok(command)
}

fn run_crates(mut command: Command) -> Result<Vec<Crate>> {
    let output = command.output().context("running cargo tree")?;
    if !output.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse_tree(&String::from_utf8_lossy(&output.stdout))
}

/// The crates of `cargo tree --prefix none --format {p}` output (pure): one `NAME vVERSION` per
/// line, then `(PATH)` for a path crate, `(URL)` for a git or other-registry crate, and the
/// `(proc-macro)` and `(*)` markers; a repeated crate once.
pub fn parse_tree(text: &str) -> Result<Vec<Crate>> {
    let mut crates = BTreeSet::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let unexpected = || format!("cargo tree printed an unexpected line: {line:?}");
        let mut words = line.splitn(3, ' ');
        let (Some(name), Some(version)) = (words.next(), words.next()) else {
            bail!(unexpected());
        };
        let version = version.strip_prefix('v').with_context(unexpected)?;
        let source = words
            .next()
            .unwrap_or("")
            .split(") (")
            .map(|part| part.trim_matches(|c| c == '(' || c == ')'))
            .find(|part| !part.is_empty() && *part != "*" && *part != "proc-macro")
            .map(str::to_owned);
        // A path crate's source is the checkout's path: left out, so the SBOM does not depend on
        // where the build ran.
        let source = match source {
            Some(path) if path.starts_with('/') => None,
            Some(other) => Some(other),
            None => Some(CRATES_IO.to_owned()),
        };
        crates.insert(Crate {
            name: name.to_owned(),
            version: version.to_owned(),
            source,
        });
    }
    Ok(crates.into_iter().collect())
}

/// The source of a crate `cargo tree` prints without one.
const CRATES_IO: &str = "registry+https://github.com/rust-lang/crates.io-index";

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
pub fn document(
    name: &str,
    digest: &str,
    crates: &[Crate],
    packages: &[Package],
    libraries: &[Library],
) -> Value {
    let mut components: Vec<Value> = crates.iter().map(crate_component).collect();
    components.extend(packages.iter().map(package_component));
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

fn package_component(package: &Package) -> Value {
    json!({
        "type": "library",
        "name": package.name,
        "version": package.version,
        "bom-ref": format!("deb:{}@{}", package.name, package.version),
        "purl": format!(
            "pkg:deb/debian/{}@{}?arch={}&distro={}",
            package.name,
            package.version,
            crate::debian::sets::ARCHITECTURE,
            crate::debian::sets::RELEASE
        ),
    })
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
    fn tree_lines_become_crates_once() {
        let text = "app v0.1.0 (/src/app)\nserde v1.0.0\nserde_derive v1.0.0 (proc-macro)\n\
                    serde v1.0.0 (*)\ngitdep v0.2.0 (https://example.org/gitdep#abc)\n";
        let crates = parse_tree(text).expect("parse");
        let listed: Vec<(&str, &str, Option<&str>)> = crates
            .iter()
            .map(|c| (c.name.as_str(), c.version.as_str(), c.source.as_deref()))
            .collect();
        assert_eq!(
            listed,
            [
                ("app", "0.1.0", None),
                ("gitdep", "0.2.0", Some("https://example.org/gitdep#abc")),
                ("serde", "1.0.0", Some(CRATES_IO)),
                ("serde_derive", "1.0.0", Some(CRATES_IO)),
            ]
        );
    }

    /// The main job on a fresh machine: the build fetched the crates it compiles, never the
    /// test-only ones. A local registry whose index names a dev-dependency without its `.crate`
    /// file is that cargo home; listing the crates must not need the missing one.
    #[test]
    fn listing_crates_needs_no_test_only_crate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = dir.path().join("registry");
        let index = registry.join("index");
        let crate_file = local_crate("normal-dep", "1.0.0");
        std::fs::create_dir_all(index.join("no/rm")).expect("index dir");
        std::fs::create_dir_all(index.join("de/v-")).expect("index dir");
        std::fs::write(registry.join("normal-dep-1.0.0.crate"), &crate_file).expect("crate");
        let entry = |name: &str, cksum: &str| {
            format!(
                "{{\"name\":\"{name}\",\"vers\":\"1.0.0\",\"deps\":[],\"cksum\":\"{cksum}\",\"features\":{{}},\"yanked\":false}}\n"
            )
        };
        let normal_sum = crate::image::layer::sha256(&crate_file);
        std::fs::write(
            index.join("no/rm/normal-dep"),
            entry("normal-dep", normal_sum.trim_start_matches("sha256:")),
        )
        .expect("index");
        // Indexed, never downloaded: what a cargo home holds after `cargo build`.
        std::fs::write(
            index.join("de/v-/dev-only-dep"),
            entry("dev-only-dep", &"0".repeat(64)),
        )
        .expect("index");
        let app = dir.path().join("app");
        std::fs::create_dir_all(app.join("src")).expect("app dir");
        std::fs::create_dir_all(app.join(".cargo")).expect("config dir");
        std::fs::write(app.join("src/lib.rs"), "").expect("lib.rs");
        std::fs::write(
            app.join("Cargo.toml"),
            "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\
             [dependencies]\nnormal-dep = \"1\"\n[dev-dependencies]\ndev-only-dep = \"1\"\n",
        )
        .expect("Cargo.toml");
        std::fs::write(
            app.join(".cargo/config.toml"),
            format!(
                "[source.crates-io]\nreplace-with = \"local\"\n[source.local]\nlocal-registry = \"{}\"\n",
                registry.display()
            ),
        )
        .expect("config");
        let cargo_home = dir.path().join("cargo-home");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let locked = Command::new(&cargo)
            .args(["generate-lockfile", "--offline"])
            .current_dir(&app)
            .env("CARGO_HOME", &cargo_home)
            .output()
            .expect("cargo generate-lockfile");
        assert!(
            locked.status.success(),
            "{}",
            String::from_utf8_lossy(&locked.stderr)
        );
        let mut command = crates_command(&app, "app", &[]).expect("command");
        command.env("CARGO_HOME", &cargo_home);
        let crates = run_crates(command).expect("listing the crates of app");
        let names: Vec<&str> = crates.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["app", "normal-dep"]);
    }

    /// A `.crate` file: a gzipped tar of `NAME-VERSION/` with a manifest and an empty library.
    fn local_crate(name: &str, version: &str) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::new(6),
        ));
        let manifest =
            format!("[package]\nname = \"{name}\"\nversion = \"{version}\"\nedition = \"2021\"\n");
        for (path, bytes) in [
            ("Cargo.toml", manifest.as_bytes()),
            ("src/lib.rs", b"".as_slice()),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, format!("{name}-{version}/{path}"), bytes)
                .expect("tar entry");
        }
        builder.into_inner().expect("tar").finish().expect("gzip")
    }
}
