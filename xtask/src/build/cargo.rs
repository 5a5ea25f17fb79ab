//! The cargo backend: `cargo build --release --locked` with every path that differs between
//! machines remapped (the checkout, cargo home, the target directory), SOURCE_DATE_EPOCH fixed,
//! and one target directory per feature set so a `cuda` build never overwrites the CPU binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{BuildRequest, BuiltBinary, provenance};
use crate::image::layer::sha256_file;
use crate::project;

/// Services of the workspace: the packages under `services/` that have a binary.
pub fn workspace_services() -> Result<Vec<String>> {
    let metadata = metadata(&project::root())?;
    let mut services: Vec<String> = packages(&metadata)
        .filter(|(_, manifest, has_bin)| *has_bin && manifest.contains("/services/"))
        .map(|(name, _, _)| name)
        .collect();
    services.sort();
    Ok(services)
}

/// Builds every request, one cargo invocation per package and feature set. Cargo unifies the
/// features of shared dependencies across the packages of one invocation, so building two
/// services together would give each a different (larger) binary than building it alone: a
/// service's bytes must not depend on what else was built with it.
pub fn build(requests: &[BuildRequest]) -> Result<Vec<BuiltBinary>> {
    let root = project::root();
    let versions: BTreeMap<String, String> = package_versions(&metadata(&root)?);
    let mut by_package: BTreeMap<(Vec<String>, &str), Vec<&BuildRequest>> = BTreeMap::new();
    for request in requests {
        by_package
            .entry((request.features.clone(), request.package.as_str()))
            .or_default()
            .push(request);
    }
    let base_target = target_dir(&root);
    let mut built = Vec::new();
    for ((features, _package), group) in by_package {
        let target = if features.is_empty() {
            base_target.clone()
        } else {
            base_target.join(format!("features-{}", features.join("-")))
        };
        // A `cuda` build compiles candle's kernels with nvcc and links the CUDA libraries.
        let environment = if features.iter().any(|f| f == "cuda") {
            crate::cuda::cargo_environment()?
        } else {
            Vec::new()
        };
        run_cargo(&root, &target, &features, &group, &environment)?;
        for request in group {
            let path = target.join("release").join(&request.bin);
            let version = versions
                .get(&request.package)
                .with_context(|| format!("no package {} in the workspace", request.package))?;
            built.push(BuiltBinary {
                package: request.package.clone(),
                bin: request.bin.clone(),
                features: features.clone(),
                version: version.clone(),
                sha256: sha256_file(&path)?,
                path,
            });
        }
    }
    Ok(built)
}

/// CARGO_TARGET_DIR, else `<root>/target`.
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_relative() {
                root.join(dir)
            } else {
                dir
            }
        })
        .unwrap_or_else(|| root.join("target"))
}

/// The rustc flags that keep machine paths out of binaries. Later prefixes win in rustc, so the
/// target directory (often inside the checkout) comes last.
pub fn remap_flags(root: &Path, cargo_home: &Path, target: &Path) -> Vec<String> {
    remap(&[
        (root, "/cairn"),
        (cargo_home, "/cargo"),
        (target, "/target"),
    ])
}

/// `--remap-path-prefix=FROM=TO` for each pair, in order (later prefixes win in rustc).
pub(super) fn remap(pairs: &[(&Path, &str)]) -> Vec<String> {
    pairs
        .iter()
        .map(|(from, to)| format!("--remap-path-prefix={}={to}", from.display()))
        .collect()
}

/// CARGO_HOME, else `~/.cargo`.
pub(super) fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn run_cargo(
    root: &Path,
    target: &Path,
    features: &[String],
    group: &[&BuildRequest],
    environment: &[(String, std::ffi::OsString)],
) -> Result<()> {
    let epoch = provenance::source_date_epoch()?;
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .current_dir(root)
        .args(["build", "--release", "--locked"])
        .arg("--target-dir")
        .arg(target)
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            remap_flags(root, &cargo_home(), target).join("\x1f"),
        )
        .env_remove("RUSTFLAGS")
        .envs(environment.iter().map(|(k, v)| (k, v)));
    for request in group {
        command.args(["-p", &request.package, "--bin", &request.bin]);
    }
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("cargo build failed ({status}): {command:?}");
    }
    Ok(())
}

fn metadata(root: &Path) -> Result<Value> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--locked",
            "--offline",
        ])
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("reading cargo metadata's JSON")
}

/// (name, manifest path, has a binary target) of every workspace package.
fn packages(metadata: &Value) -> impl Iterator<Item = (String, String, bool)> + '_ {
    metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|package| {
            let has_bin = package["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|target| {
                    target["kind"]
                        .as_array()
                        .is_some_and(|k| k.iter().any(|k| k == "bin"))
                });
            (
                package["name"].as_str().unwrap_or_default().to_owned(),
                package["manifest_path"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                has_bin,
            )
        })
}

fn package_versions(metadata: &Value) -> BTreeMap<String, String> {
    metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["version"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_remap_comes_last() {
        let flags = remap_flags(
            Path::new("/w/c"),
            Path::new("/h/.cargo"),
            Path::new("/w/c/target"),
        );
        assert_eq!(
            flags,
            [
                "--remap-path-prefix=/w/c=/cairn",
                "--remap-path-prefix=/h/.cargo=/cargo",
                "--remap-path-prefix=/w/c/target=/target"
            ]
        );
    }
}
