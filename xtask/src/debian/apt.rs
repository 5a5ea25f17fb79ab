//! The host's apt, the ordinary Debian client: `apt-cache policy` and `apt-cache show` for
//! `cargo xtask lock`, `apt-get download` for the image step. It uses the host's configured
//! sources and never installs anything.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::control::{Stanza, candidate, parse_stanzas, serves_release};
use super::resolve::PackageIndex;

/// What to tell a user whose host cannot serve the lock's packages.
fn way_out(release: &str) -> String {
    format!(
        "build on a Debian {release} host (or inside a debian:{release} container), or use the \
         Nix backend (`--backend nix`), whose images take their system files from nixpkgs"
    )
}

/// Fails unless apt runs here and its sources serve `release`.
pub fn check_host(release: &str) -> Result<()> {
    let output = match Command::new("apt-cache").arg("policy").output() {
        Ok(output) => output,
        Err(err) => bail!(
            "this host has no apt (running apt-cache: {err}); the Debian packages of \
             deploy/debian.lock ({release}) come from apt: {}",
            way_out(release)
        ),
    };
    let policy = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !serves_release(&policy, release) {
        bail!(
            "this host's apt sources do not serve Debian {release} (no `n={release}` in \
             `apt-cache policy`), which deploy/debian.lock pins: {}",
            way_out(release)
        );
    }
    Ok(())
}

/// apt on this host as a `PackageIndex`, remembering what it was asked.
#[derive(Debug, Default)]
pub struct HostApt {
    known: BTreeMap<String, Option<Stanza>>,
}

impl PackageIndex for HostApt {
    fn candidate(&mut self, package: &str) -> Result<Option<Stanza>> {
        if let Some(known) = self.known.get(package) {
            return Ok(known.clone());
        }
        let policy = apt_cache(&["policy", package])?;
        let found = match candidate(&policy) {
            None => None,
            Some(version) => {
                let shown = apt_cache(&["show", &format!("{package}={version}")])?;
                let stanza = parse_stanzas(&shown)
                    .into_iter()
                    .find(|s| s.get("Version") == Some(version.as_str()))
                    .with_context(|| {
                        format!("apt-cache show {package}={version} printed no such version")
                    })?;
                Some(stanza)
            }
        };
        self.known.insert(package.to_owned(), found.clone());
        Ok(found)
    }
}

fn apt_cache(args: &[&str]) -> Result<String> {
    let output = Command::new("apt-cache")
        .args(args)
        .output()
        .with_context(|| format!("running apt-cache {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "apt-cache {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `apt-get download NAME=VERSION…` into `dir`.
pub fn download(pins: &[String], dir: &Path) -> Result<()> {
    if pins.is_empty() {
        return Ok(());
    }
    let output = Command::new("apt-get")
        .arg("download")
        .arg("-q")
        .args(pins)
        .current_dir(dir)
        .output()
        .context("running apt-get download")?;
    if !output.status.success() {
        bail!(
            "apt-get download {} failed: {}\nThe lock pins versions this host's apt sources no \
             longer (or do not yet) serve: run `cargo xtask lock` to pin what they serve now, or \
             point apt at a snapshot.debian.org source of the lock's date",
            pins.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
