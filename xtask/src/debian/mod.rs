//! Debian packages pinned by hash, the distroless way: `deploy/debian.lock` names the release
//! and every `.deb` of every package set; `cargo xtask lock` refreshes it from the host's apt;
//! the image step fetches the locked files (`fetch`), checks their sha256, extracts them itself
//! (`deb`: data only, never maintainer scripts) and sees them as one filesystem (`tree`).
//!
//! Pure: `control` (apt's text), `sets` (which packages, what is left out and why), `resolve`
//! (the dependency closure over any index), `lock` (the file format), `tree` (paths, ELF closure,
//! symbol versions). Effects: `apt` (the host's apt-cache and apt-get), `fetch`, `deb`.
//! This module never decides image layers: `image` does, from a `PinnedSet`.

pub mod apt;
pub mod control;
pub mod deb;
pub mod fetch;
pub mod lock;
pub mod resolve;
pub mod sets;
pub mod tree;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::image::layout::write_atomically;
use crate::project;
use fetch::DebCache;
use lock::{DebianLock, LockedPackage};
use sets::PackageSet;
use tree::{PackageTree, TreeKind};

/// A package set as the image step uses it: the locked packages and their merged files.
#[derive(Debug, Clone)]
pub struct PinnedSet {
    pub set: &'static PackageSet,
    pub packages: Vec<LockedPackage>,
    pub tree: PackageTree,
}

/// Loads set `name` of the lock under `root`: fetched (cache or apt-get), checked, extracted.
pub fn load_set(root: &Path, name: &str) -> Result<PinnedSet> {
    let lock_path = DebianLock::path(root);
    let lock = DebianLock::load(&lock_path)?;
    let set = sets::set(name).with_context(|| format!("cairn has no package set {name:?}"))?;
    let packages = lock.set(name)?.to_vec();
    resolve::check_no_skipped(name, &packages)?;
    let cache = DebCache::default_for(root);
    let debs = fetch::fetch(&packages, &cache, &lock.release).with_context(|| {
        format!(
            "fetching the packages of set {name} ({})",
            lock_path.display()
        )
    })?;
    let mut extracted = Vec::with_capacity(packages.len());
    for (package, deb) in packages.iter().zip(&debs) {
        let files = deb::extract_cached(deb, &package.sha256, &cache.dir)
            .with_context(|| format!("extracting {} {}", package.package, package.version))?;
        extracted.push((package.clone(), files));
    }
    let tree = PackageTree::merge(set, &extracted)?;
    Ok(PinnedSet {
        set,
        packages,
        tree,
    })
}

/// The CA bundle as `update-ca-certificates` builds it from the ca-certificates package: every
/// `usr/share/ca-certificates/**/*.crt`, in byte order of their paths, each ending in a newline.
pub fn ca_bundle(tree: &PackageTree) -> Result<Vec<u8>> {
    let mut bundle = Vec::new();
    for (path, entry) in &tree.entries {
        let TreeKind::File(host) = &entry.kind else {
            continue;
        };
        if path.starts_with("usr/share/ca-certificates/") && path.ends_with(".crt") {
            let mut pem = std::fs::read(host).with_context(|| format!("reading /{path}"))?;
            if !pem.ends_with(b"\n") {
                pem.push(b'\n');
            }
            bundle.extend(pem);
        }
    }
    if bundle.is_empty() {
        bail!("the pinned packages hold no certificate under /usr/share/ca-certificates");
    }
    Ok(bundle)
}

#[derive(Debug, clap::Args)]
pub struct LockArgs {
    /// Fail when the lock differs from what the host's apt resolves now, instead of writing it.
    #[arg(long)]
    check: bool,
}

/// `cargo xtask lock`: resolves every package set with the host's apt and writes the lock.
pub fn run_lock(args: &LockArgs) -> Result<()> {
    let root = project::root();
    apt::check_host(sets::RELEASE)?;
    let mut index = apt::HostApt::default();
    let mut resolved = BTreeMap::new();
    for set in sets::SETS {
        let packages = resolve::resolve(set, &mut index)
            .with_context(|| format!("resolving package set {}", set.name))?;
        eprintln!("{}: {} packages", set.name, packages.len());
        resolved.insert(set.name.to_owned(), packages);
    }
    let lock = DebianLock {
        release: sets::RELEASE.to_owned(),
        architecture: sets::ARCHITECTURE.to_owned(),
        sets: resolved,
    };
    let path = DebianLock::path(&root);
    let text = lock.render()?;
    if args.check {
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current != text {
            bail!(
                "{} is not what apt resolves now: run `cargo xtask lock`",
                path.display()
            );
        }
        eprintln!("{} is current", path.display());
        return Ok(());
    }
    write_atomically(&path, text.as_bytes())?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
