//! Getting the locked `.deb` files: from the cache (`~/.cache/cairn/debs`, or `CAIRN_DEB_CACHE`),
//! else with `apt-get download` into it, every file checked against the lock's sha256. A file is
//! stored under its hash, so the cache can never hand out a package the lock did not name.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::apt;
use super::lock::LockedPackage;
use crate::image::layer::sha256_file;

/// The cache of `.deb` files and their extracted trees.
#[derive(Debug, Clone)]
pub struct DebCache {
    pub dir: PathBuf,
}

impl DebCache {
    /// `CAIRN_DEB_CACHE`, else `$XDG_CACHE_HOME/cairn/debs`, else `~/.cache/cairn/debs`, else
    /// `target/debian-cache` under `root`.
    pub fn default_for(root: &Path) -> DebCache {
        let from_env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let dir = from_env("CAIRN_DEB_CACHE")
            .map(PathBuf::from)
            .or_else(|| from_env("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("cairn/debs")))
            .or_else(|| from_env("HOME").map(|d| PathBuf::from(d).join(".cache/cairn/debs")))
            .unwrap_or_else(|| root.join("target/debian-cache"));
        DebCache { dir }
    }

    pub fn deb_path(&self, package: &LockedPackage) -> PathBuf {
        self.dir.join(format!("{}.deb", package.sha256))
    }
}

/// The `.deb` of every package, downloaded when missing from the cache; in `packages`' order.
pub fn fetch(packages: &[LockedPackage], cache: &DebCache, release: &str) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(&cache.dir)
        .with_context(|| format!("creating the package cache {}", cache.dir.display()))?;
    let missing: Vec<&LockedPackage> = packages
        .iter()
        .filter(|p| !cache.deb_path(p).is_file())
        .collect();
    if !missing.is_empty() {
        apt::check_host(release)?;
        let staging = tempfile::Builder::new()
            .prefix(".download-")
            .tempdir_in(&cache.dir)
            .with_context(|| format!("creating a folder in {}", cache.dir.display()))?;
        let pins: Vec<String> = missing.iter().map(|p| p.pin()).collect();
        apt::download(&pins, staging.path())?;
        let downloaded = hashed_files(staging.path())?;
        for package in missing {
            let Some((file, _)) = downloaded.iter().find(|(_, hash)| *hash == package.sha256)
            else {
                let got = downloaded
                    .iter()
                    .find(|(file, _)| deb_names(file, &package.package))
                    .map(|(_, hash)| format!("its sha256 is {hash}"))
                    .unwrap_or_else(|| "apt-get wrote no file for it".to_owned());
                bail!(
                    "package {} version {} changed: the lock says sha256 {}, {got}; a rebuilt \
                     package under the same version is not trusted (`cargo xtask lock` re-pins)",
                    package.package,
                    package.version,
                    package.sha256
                );
            };
            std::fs::rename(file, cache.deb_path(package))
                .with_context(|| format!("storing {} in the cache", package.pin()))?;
        }
    }
    packages
        .iter()
        .map(|package| {
            let path = cache.deb_path(package);
            let hash = sha256_file(&path)?;
            if hash.trim_start_matches("sha256:") != package.sha256 {
                bail!(
                    "{} ({} {}) does not match its name: delete it and build again",
                    path.display(),
                    package.package,
                    package.version
                );
            }
            Ok(path)
        })
        .collect()
}

/// Every `.deb` in `dir` with its hex sha256.
fn hashed_files(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            let hash = sha256_file(&path)?;
            files.push((path, hash.trim_start_matches("sha256:").to_owned()));
        }
    }
    Ok(files)
}

/// Whether `file` is apt's download of `package` (`NAME_VERSION_ARCH.deb`).
fn deb_names(file: &Path, package: &str) -> bool {
    file.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|name| name.starts_with(&format!("{package}_")))
}
