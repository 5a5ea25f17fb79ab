//! What `cargo xtask lock` pins: the `Depends`/`Pre-Depends` closure of each set's roots, apt's
//! candidate version of each, minus the packages `sets::SKIPPED` leaves out. The closure is pure
//! over a lookup (`PackageIndex`); `apt::HostApt` is the lookup on a real host.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use anyhow::{Context, Result, bail};

use super::control::{Stanza, parse_relations};
use super::lock::LockedPackage;
use super::sets::{PackageSet, is_skipped};

/// Where package metadata comes from: apt on a host, a map in tests.
pub trait PackageIndex {
    /// The candidate stanza of `package` (Package, Version, SHA256, Size, Depends…), or None when
    /// no configured source has it (a virtual package, or a name this release lacks).
    fn candidate(&mut self, package: &str) -> Result<Option<Stanza>>;
}

/// The pinned closure of `set`, sorted by package name.
pub fn resolve(set: &PackageSet, index: &mut dyn PackageIndex) -> Result<Vec<LockedPackage>> {
    let mut pinned: BTreeMap<String, LockedPackage> = BTreeMap::new();
    // Each package with the chain that asked for it, for errors.
    let mut queue: VecDeque<(String, String)> = set
        .roots
        .iter()
        .map(|root| ((*root).to_owned(), format!("set {}", set.name)))
        .collect();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    while let Some((package, wanted_by)) = queue.pop_front() {
        if !seen.insert(package.clone()) {
            continue;
        }
        let stanza = index.candidate(&package)?.with_context(|| {
            format!("{package} (needed by {wanted_by}) has no candidate in this host's apt sources")
        })?;
        let locked = locked_package(&package, &stanza)?;
        let relations = ["Pre-Depends", "Depends"]
            .iter()
            .filter_map(|field| stanza.get(field))
            .flat_map(parse_relations);
        for alternatives in relations {
            if alternatives.iter().any(|name| is_skipped(name)) {
                continue;
            }
            let chosen = first_available(&alternatives, index)?.with_context(|| {
                format!(
                    "{} {} depends on {}, and none of them has a candidate",
                    locked.package,
                    locked.version,
                    alternatives.join(" | ")
                )
            })?;
            queue.push_back((chosen, format!("{} {}", locked.package, locked.version)));
        }
        pinned.insert(package, locked);
    }
    Ok(pinned.into_values().collect())
}

fn first_available(
    alternatives: &[String],
    index: &mut dyn PackageIndex,
) -> Result<Option<String>> {
    for name in alternatives {
        if index.candidate(name)?.is_some() {
            return Ok(Some(name.clone()));
        }
    }
    Ok(None)
}

fn locked_package(package: &str, stanza: &Stanza) -> Result<LockedPackage> {
    let field = |name: &str| {
        stanza
            .get(name)
            .with_context(|| format!("apt's record of {package} has no {name} field"))
    };
    let size = field("Size")?;
    Ok(LockedPackage {
        package: package.to_owned(),
        version: field("Version")?.to_owned(),
        sha256: field("SHA256")?.to_owned(),
        size: size
            .parse()
            .with_context(|| format!("{package}: Size {size:?} is not a number"))?,
    })
}

/// Checks that `packages` has no skipped package (a lock written by hand, or an older cairn).
pub fn check_no_skipped(set: &str, packages: &[LockedPackage]) -> Result<()> {
    if let Some(package) = packages.iter().find(|p| is_skipped(&p.package)) {
        bail!(
            "set {set} pins {}, which cairn leaves out: run `cargo xtask lock`",
            package.package
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debian::sets::PackageSet;

    /// An in-memory index (tests): package name to its stanza.
    #[derive(Debug, Default)]
    struct MapIndex(BTreeMap<String, Stanza>);

    impl PackageIndex for MapIndex {
        fn candidate(&mut self, package: &str) -> Result<Option<Stanza>> {
            Ok(self.0.get(package).cloned())
        }
    }

    fn stanza(name: &str, depends: &str) -> (String, Stanza) {
        let mut fields = BTreeMap::from([
            ("Package".to_owned(), name.to_owned()),
            ("Version".to_owned(), "1.0".to_owned()),
            ("SHA256".to_owned(), "00".repeat(32)),
            ("Size".to_owned(), "10".to_owned()),
        ]);
        if !depends.is_empty() {
            fields.insert("Depends".into(), depends.into());
        }
        (name.to_owned(), Stanza { fields })
    }

    #[test]
    fn closure_follows_depends_and_leaves_out_maintainer_script_needs() {
        let mut index = MapIndex(BTreeMap::from([
            stanza("nginx", "libc6 (>= 2.34), iproute2, nginx-common (= 1.0)"),
            stanza("nginx-common", "debconf (>= 0.5) | debconf-2.0"),
            stanza("libc6", "libgcc-s1"),
            stanza("libgcc-s1", "libc6 (>= 2.35), virtual-x | gcc-12-base"),
            stanza("gcc-12-base", ""),
        ]));
        let set = PackageSet {
            name: "nginx",
            roots: &["nginx"],
            drop_paths: &[],
            links: &[],
        };
        let names: Vec<String> = resolve(&set, &mut index)
            .expect("resolve")
            .into_iter()
            .map(|p| p.package)
            .collect();
        assert_eq!(
            names,
            ["gcc-12-base", "libc6", "libgcc-s1", "nginx", "nginx-common"]
        );
    }

    #[test]
    fn a_missing_dependency_names_who_needs_it() {
        let mut index = MapIndex(BTreeMap::from([stanza("nginx", "libpcre2-8-0")]));
        let set = PackageSet {
            name: "nginx",
            roots: &["nginx"],
            drop_paths: &[],
            links: &[],
        };
        let err = resolve(&set, &mut index).expect_err("missing");
        assert!(
            format!("{err:#}").contains("nginx 1.0 depends on libpcre2-8-0"),
            "{err:#}"
        );
    }
}
