//! The nix backend: builds the requested binaries through the flake (`nix build .#PACKAGE`) and
//! returns them as the cargo backend does, so the image step assembles them by the same rules
//! (their ELF closure lies in /nix/store and is packed at its store paths).
//!
//! It never builds with cargo and never falls back silently: when `--backend nix` is asked for
//! and Nix is missing or cannot evaluate the flake, the error says which.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{BuildRequest, BuiltBinary};
use crate::image::layer::sha256_file;
use crate::project;

/// Flakes are still "experimental" in Nix: turn them on for our calls only.
const FLAKES: &[&str] = &["--extra-experimental-features", "nix-command flakes"];

/// Whether the nix backend can run here, and if not, why (shown to the user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    Usable,
    Missing,
    Broken(String),
}

/// The flake package that builds `request`: the package itself, or `inference-cuda` for
/// inference with the `cuda` feature (nix/packages.nix).
pub fn flake_package(request: &BuildRequest) -> Result<String> {
    match request.features.as_slice() {
        [] => Ok(request.package.clone()),
        [feature] if feature == "cuda" && request.package == "inference" => {
            Ok("inference-cuda".to_owned())
        }
        features => bail!(
            "the flake has no package for {} with features {features:?}",
            request.package
        ),
    }
}

/// Nix is usable when `nix` runs and evaluates this flake's gateway derivation (which needs the
/// locked inputs, so an offline machine without them counts as broken).
pub fn availability(root: &Path) -> Availability {
    availability_of(Path::new("nix"), root)
}

fn availability_of(nix: &Path, root: &Path) -> Availability {
    let Ok(version) = Command::new(nix).arg("--version").output() else {
        return Availability::Missing;
    };
    if !version.status.success() {
        return Availability::Missing;
    }
    // One quick attempt: an offline machine must not wait through Nix's download retries.
    let output = Command::new(nix)
        .args(FLAKES)
        .args([
            "--option",
            "download-attempts",
            "1",
            "--option",
            "connect-timeout",
            "5",
        ])
        .args(["eval", "--raw"])
        .arg(format!("{}#gateway.drvPath", root.display()))
        .output();
    match output {
        Ok(output) if output.status.success() => Availability::Usable,
        Ok(output) => Availability::Broken(error_line(&output.stderr)),
        Err(err) => Availability::Broken(err.to_string()),
    }
}

/// Builds `requests` with `nix build`, one flake package each.
pub fn build(requests: &[BuildRequest]) -> Result<Vec<BuiltBinary>> {
    let root = project::root();
    match availability(&root) {
        Availability::Usable => {}
        Availability::Missing => bail!(
            "--backend nix: `nix` is not on PATH; install Nix (https://nixos.org/download) or use --backend cargo"
        ),
        Availability::Broken(reason) => bail!(
            "--backend nix: nix cannot evaluate the flake in {}: {reason}",
            root.display()
        ),
    }
    let packages = requests
        .iter()
        .map(flake_package)
        .collect::<Result<Vec<_>>>()?;
    let installables: Vec<String> = packages
        .iter()
        .map(|package| format!("{}#{package}", root.display()))
        .collect();
    let output = Command::new("nix")
        .args(FLAKES)
        .args(["build", "--no-link", "--json"])
        .args(&installables)
        .output()
        .context("running nix build")?;
    if !output.status.success() {
        bail!(
            "nix build {} failed: {}",
            packages.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let outs = out_paths(&output.stdout)?;
    if outs.len() != requests.len() {
        bail!(
            "nix build returned {} outputs for {} packages",
            outs.len(),
            requests.len()
        );
    }
    requests
        .iter()
        .zip(packages.iter().zip(outs))
        .map(|(request, (package, out))| built_binary(request, package, &out))
        .collect()
}

/// The `out` path of every installable, in order, from `nix build --json`.
fn out_paths(json: &[u8]) -> Result<Vec<PathBuf>> {
    let results: Value = serde_json::from_slice(json).context("reading nix build --json")?;
    results
        .as_array()
        .context("nix build --json did not print an array")?
        .iter()
        .map(|result| {
            result["outputs"]["out"]
                .as_str()
                .map(PathBuf::from)
                .with_context(|| format!("no `out` output in {result}"))
        })
        .collect()
}

fn built_binary(request: &BuildRequest, package: &str, out: &Path) -> Result<BuiltBinary> {
    let path = out.join("bin").join(&request.bin);
    Ok(BuiltBinary {
        package: request.package.clone(),
        bin: request.bin.clone(),
        features: request.features.clone(),
        version: version_of(out, package)?,
        sha256: sha256_file(&path)?,
        path,
    })
}

/// `/nix/store/<hash>-gateway-0.1.0` → `0.1.0` (crane names outputs `pname-version`).
fn version_of(out: &Path, package: &str) -> Result<String> {
    let name = out
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.split_once('-')
        .and_then(|(_hash, rest)| rest.strip_prefix(package))
        .and_then(|rest| rest.strip_prefix('-'))
        .map(str::to_owned)
        .with_context(|| format!("cannot read {package}'s version from {}", out.display()))
}

/// Nix's `error:` line (its trailing lines are hints), else its last line.
fn error_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find(|line| line.starts_with("error:"))
        .or(lines.last())
        .map_or_else(|| "no message".to_owned(), |line| (*line).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(package: &str, features: &[&str]) -> BuildRequest {
        BuildRequest {
            package: package.into(),
            bin: package.into(),
            features: features.iter().map(|f| (*f).to_owned()).collect(),
        }
    }

    #[test]
    fn cuda_inference_is_its_own_flake_package() {
        assert_eq!(
            flake_package(&request("gateway", &[])).expect("gateway"),
            "gateway"
        );
        assert_eq!(
            flake_package(&request("inference", &["cuda"])).expect("cuda"),
            "inference-cuda"
        );
        assert!(flake_package(&request("api", &["cuda"])).is_err());
    }

    #[test]
    fn versions_come_from_store_path_names() {
        let out = Path::new("/nix/store/0c7c0ip9h0qs4bd8xmp8m2nxlbzyp4ra-inference-cuda-0.1.0");
        assert_eq!(version_of(out, "inference-cuda").expect("version"), "0.1.0");
        assert!(version_of(out, "gateway").is_err());
    }

    #[test]
    fn out_paths_follow_the_installables() {
        let json =
            br#"[{"drvPath":"/nix/store/a.drv","outputs":{"out":"/nix/store/a-gateway-0.1.0"}},
                       {"drvPath":"/nix/store/b.drv","outputs":{"out":"/nix/store/b-api-0.1.0"}}]"#;
        let paths = out_paths(json).expect("paths");
        assert_eq!(
            paths,
            [
                PathBuf::from("/nix/store/a-gateway-0.1.0"),
                PathBuf::from("/nix/store/b-api-0.1.0")
            ]
        );
    }

    #[test]
    fn a_missing_nix_is_reported_as_missing() {
        let root = project::root();
        assert_eq!(
            availability_of(Path::new("/nonexistent/cairn-nix"), &root),
            Availability::Missing
        );
        assert_eq!(
            availability_of(Path::new("false"), &root),
            Availability::Missing
        );
    }
}
