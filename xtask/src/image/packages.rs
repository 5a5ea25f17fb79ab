//! Layers from pinned Debian packages, planned without effects over a `debian::PinnedSet`.
//!
//! An image of packages (nginx, PostgreSQL) carries every kept file of its set in three layers:
//! the C library (libc6, libgcc-s1 and gcc-12-base, shared by every such image), the other
//! libraries, and the packages the image asks for. A changed lock entry changes only the layer
//! of its group. A service image takes only its binary's ELF closure from the base set.

use std::collections::BTreeSet;

use anyhow::Result;

use super::layer::{EntrySource, LayerEntry, LayerPlan};
use crate::debian::PinnedSet;
use crate::debian::tree::{PackageTree, TreeEntry, TreeKind};

/// The packages of the C library layer.
pub const LIBC_GROUP: &[&str] = &["libc6", "libgcc-s1", "gcc-12-base"];

/// One package of an image, for its SBOM.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct DebianPackage {
    pub package: String,
    pub version: String,
}

/// A tree entry as a layer entry (root-owned, the package's mode).
pub fn layer_entry(entry: &TreeEntry) -> LayerEntry {
    let source = match &entry.kind {
        TreeKind::Directory => EntrySource::Directory,
        TreeKind::File(host) => EntrySource::HostFile(host.clone()),
        TreeKind::Symlink(target) => EntrySource::Symlink(target.clone()),
    };
    LayerEntry {
        source,
        mode: entry.mode,
        uid: 0,
        gid: 0,
    }
}

/// The entries of `paths` (from `tree::closure`) for the system layer, with their packages.
pub fn closure_entries(
    tree: &PackageTree,
    paths: &BTreeSet<String>,
) -> (Vec<(String, LayerEntry)>, BTreeSet<DebianPackage>) {
    let mut entries = Vec::new();
    let mut packages = BTreeSet::new();
    for path in paths {
        if let Some(entry) = tree.entries.get(path) {
            entries.push((format!("/{path}"), layer_entry(entry)));
            packages.insert(DebianPackage {
                package: entry.package.clone(),
                version: entry.version.clone(),
            });
        }
    }
    (entries, packages)
}

/// The three package layers of `pinned` (empty groups left out), in their fixed order.
pub fn package_layers(pinned: &PinnedSet) -> Result<Vec<LayerPlan>> {
    let roots = pinned.set.roots;
    let group_of = |package: &str| {
        if LIBC_GROUP.contains(&package) {
            0
        } else if roots.contains(&package) {
            2
        } else {
            1
        }
    };
    let mut layers = [
        LayerPlan::new("debian-libc"),
        LayerPlan::new("debian-libraries"),
        LayerPlan::new(&format!("debian-{}", pinned.set.name)),
    ];
    for (path, entry) in &pinned.tree.entries {
        layers[group_of(&entry.package)].insert(path, layer_entry(entry));
    }
    Ok(layers
        .into_iter()
        .filter(|layer| !layer.entries.is_empty())
        .collect())
}

/// Every package of `pinned`, for the SBOM.
pub fn all_packages(pinned: &PinnedSet) -> BTreeSet<DebianPackage> {
    pinned
        .packages
        .iter()
        .map(|p| DebianPackage {
            package: p.package.clone(),
            version: p.version.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debian::lock::LockedPackage;
    use crate::debian::sets;

    fn pinned(libssl_version: &str) -> PinnedSet {
        let file = |package: &str, version: &str, host: &str| TreeEntry {
            kind: TreeKind::File(host.into()),
            mode: 0o644,
            package: package.into(),
            version: version.into(),
        };
        let tree = PackageTree {
            entries: [
                (
                    "lib/x86_64-linux-gnu/libc.so.6",
                    file("libc6", "2.36", "/c/libc"),
                ),
                (
                    "usr/lib/x86_64-linux-gnu/libssl.so.3",
                    file(
                        "libssl3",
                        libssl_version,
                        &format!("/c/libssl-{libssl_version}"),
                    ),
                ),
                ("usr/sbin/nginx", file("nginx", "1.22", "/c/nginx")),
            ]
            .into_iter()
            .map(|(path, entry)| (path.to_owned(), entry))
            .collect(),
        };
        let locked = |package: &str, version: &str| LockedPackage {
            package: package.into(),
            version: version.into(),
            sha256: "0".repeat(64),
            size: 1,
        };
        PinnedSet {
            set: sets::set("nginx").expect("nginx set"),
            packages: vec![
                locked("libc6", "2.36"),
                locked("libssl3", libssl_version),
                locked("nginx", "1.22"),
            ],
            tree,
        }
    }

    #[test]
    fn a_changed_lock_entry_changes_only_its_layer() {
        let before = package_layers(&pinned("3.0.1")).expect("layers");
        let after = package_layers(&pinned("3.0.2")).expect("layers");
        let roles: Vec<&str> = before.iter().map(|l| l.role.as_str()).collect();
        assert_eq!(roles, ["debian-libc", "debian-libraries", "debian-nginx"]);
        assert_eq!(before[0], after[0], "the libc layer is untouched");
        assert_ne!(before[1], after[1], "the libraries layer holds libssl3");
        assert_eq!(before[2], after[2], "the nginx layer is untouched");
    }
}
