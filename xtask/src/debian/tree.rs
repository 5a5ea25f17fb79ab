//! The files of a package set as one filesystem (`PackageTree`): every kept entry of every
//! locked package at its image path, symlinks resolved inside the tree (never on the host). On
//! it: the ELF closure of a binary (which files an image needs) and the symbol-version check
//! (every `GLIBC_x.y` a program needs is defined by the pinned library it binds to).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use goblin::elf::Elf;

use super::deb::{DebEntryKind, ExtractedPackage};
use super::lock::LockedPackage;
use super::sets::{PackageSet, is_dropped};
use crate::image::elf::is_injected_by_runtime;

/// Library directories the loader searches without an ld.so.cache (Debian multiarch first).
const LIBRARY_DIRS: &[&str] = &[
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib64",
    "usr/lib64",
    "lib",
    "usr/lib",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeKind {
    Directory,
    /// A regular file whose bytes are this host file (inside the extraction cache).
    File(PathBuf),
    Symlink(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    pub kind: TreeKind,
    pub mode: u32,
    /// The package it comes from, and that package's version.
    pub package: String,
    pub version: String,
}

/// The merged files of a package set.
#[derive(Debug, Clone, Default)]
pub struct PackageTree {
    pub entries: BTreeMap<String, TreeEntry>,
}

impl PackageTree {
    /// The kept entries of `packages` (dropping `set`'s left-out paths). Two packages shipping
    /// the same path is an error unless both are directories.
    pub fn merge(set: &PackageSet, packages: &[(LockedPackage, ExtractedPackage)]) -> Result<Self> {
        let mut tree = PackageTree::default();
        for (locked, extracted) in packages {
            let owner = format!("{} {}", locked.package, locked.version);
            for entry in &extracted.entries {
                if is_dropped(set, &entry.path) {
                    continue;
                }
                let kind = match &entry.kind {
                    DebEntryKind::Directory => TreeKind::Directory,
                    DebEntryKind::File => TreeKind::File(extracted.file(&entry.path)),
                    DebEntryKind::Symlink { target } => TreeKind::Symlink(target.clone()),
                    DebEntryKind::Hardlink { target } => TreeKind::File(extracted.file(target)),
                };
                let new = TreeEntry {
                    kind,
                    mode: entry.mode,
                    package: locked.package.clone(),
                    version: locked.version.clone(),
                };
                match tree.entries.get(&entry.path) {
                    Some(old) if old.kind == TreeKind::Directory && new.kind == old.kind => {}
                    Some(old) => bail!(
                        "/{} is in both {} {} and {owner}",
                        entry.path,
                        old.package,
                        old.version
                    ),
                    None => {
                        tree.entries.insert(entry.path.clone(), new);
                    }
                }
            }
        }
        for (path, target) in set.links {
            let dir = parent(path);
            let owner = tree
                .resolve(&format!("{dir}/{target}"))
                .and_then(|(_, real)| tree.entries.get(&real))
                .map(|entry| (entry.package.clone(), entry.version.clone()))
                .with_context(|| format!("set {}: /{path} would point to nothing", set.name))?;
            tree.entries.insert(
                (*path).to_owned(),
                TreeEntry {
                    kind: TreeKind::Symlink((*target).to_owned()),
                    mode: 0o777,
                    package: owner.0,
                    version: owner.1,
                },
            );
        }
        Ok(tree)
    }

    /// Resolves `path` inside the tree: the symlinks passed through (in order) and the final
    /// path, or None when it does not exist (or loops).
    pub fn resolve(&self, path: &str) -> Option<(Vec<String>, String)> {
        let mut parts: VecDeque<String> = path.split('/').map(str::to_owned).collect();
        let mut current: Vec<String> = Vec::new();
        let mut links = Vec::new();
        while let Some(part) = parts.pop_front() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    current.pop();
                    continue;
                }
                _ => current.push(part),
            }
            let joined = current.join("/");
            // A directory the packages do not list is still a directory of the path.
            if let Some(TreeKind::Symlink(target)) = self.entries.get(&joined).map(|e| &e.kind) {
                if links.len() > 40 {
                    return None;
                }
                links.push(joined);
                current.pop();
                if target.starts_with('/') {
                    current.clear();
                }
                for piece in target.split('/').rev() {
                    parts.push_front(piece.to_owned());
                }
            }
        }
        let joined = current.join("/");
        self.entries
            .contains_key(&joined)
            .then_some((links, joined))
    }

    /// The host file of regular file `path` (after resolving it).
    fn host_file(&self, path: &str) -> Option<(String, PathBuf)> {
        let (_, real) = self.resolve(path)?;
        match &self.entries.get(&real)?.kind {
            TreeKind::File(host) => Some((real, host.clone())),
            _ => None,
        }
    }

    /// Every regular file of the tree that is an ELF object (programs and shared objects).
    pub fn elf_files(&self) -> Result<Vec<String>> {
        let mut found = Vec::new();
        for (path, entry) in &self.entries {
            if let TreeKind::File(host) = &entry.kind {
                let mut magic = [0u8; 4];
                let is_elf = std::fs::File::open(host)
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
                    .is_ok()
                    && magic == *b"\x7fELF";
                if is_elf {
                    found.push(path.clone());
                }
            }
        }
        Ok(found)
    }
}

/// What `closure` found: the tree paths an image needs (symlinks passed through and the files
/// they end at) and, per needed library, the file that provides it.
#[derive(Debug, Clone, Default)]
pub struct TreeClosure {
    pub paths: BTreeSet<String>,
}

/// One ELF object being followed: a name for errors and where its bytes are.
struct Object {
    name: String,
    host: PathBuf,
    /// Its directory inside the image, for `$ORIGIN`.
    image_dir: String,
}

/// The libraries (and interpreter) `roots` need, transitively, all found inside `tree`; checks
/// every symbol version each object needs against the library that must define it.
/// `roots` are `(name for errors, host file, image path)`.
pub fn closure(tree: &PackageTree, roots: &[(String, PathBuf, String)]) -> Result<TreeClosure> {
    let mut result = TreeClosure::default();
    let mut queue: VecDeque<Object> = roots
        .iter()
        .map(|(name, host, image_path)| Object {
            name: name.clone(),
            host: host.clone(),
            image_dir: parent(image_path),
        })
        .collect();
    let mut done: BTreeSet<PathBuf> = BTreeSet::new();
    while let Some(object) = queue.pop_front() {
        if !done.insert(object.host.clone()) {
            continue;
        }
        let bytes = std::fs::read(&object.host)
            .with_context(|| format!("reading {}", object.host.display()))?;
        let elf = Elf::parse(&bytes).with_context(|| format!("{} is not ELF", object.name))?;
        let mut wanted: Vec<(String, String)> = Vec::new();
        if let Some(interpreter) = elf.interpreter {
            wanted.push((
                interpreter.trim_start_matches('/').to_owned(),
                interpreter.into(),
            ));
        }
        let runpath: Vec<String> = elf
            .runpaths
            .iter()
            .chain(elf.rpaths.iter())
            .flat_map(|list| list.split(':'))
            .filter(|dir| !dir.is_empty())
            .map(|dir| dir.replace("$ORIGIN", &format!("/{}", object.image_dir)))
            .map(|dir| dir.trim_start_matches('/').to_owned())
            .collect();
        let mut providers: BTreeMap<String, (String, PathBuf)> = BTreeMap::new();
        for soname in &elf.libraries {
            if is_injected_by_runtime(soname) {
                continue;
            }
            let found = runpath
                .iter()
                .map(String::as_str)
                .chain(LIBRARY_DIRS.iter().copied())
                .map(|dir| format!("{dir}/{soname}"))
                .find(|candidate| tree.host_file(candidate).is_some())
                .with_context(|| {
                    format!(
                        "{} needs {soname}, which no pinned package of the image provides \
                         (searched {})",
                        object.name,
                        runpath
                            .iter()
                            .map(String::as_str)
                            .chain(LIBRARY_DIRS.iter().copied())
                            .map(|d| format!("/{d}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
            wanted.push((found, (*soname).to_owned()));
        }
        for (path, soname) in wanted {
            let (links, real) = tree.resolve(&path).with_context(|| {
                format!(
                    "{} needs /{path}, which no pinned package provides",
                    object.name
                )
            })?;
            let (_, host) = tree
                .host_file(&real)
                .with_context(|| format!("/{real} (needed by {}) is not a file", object.name))?;
            result.paths.extend(links);
            result.paths.insert(real.clone());
            providers.insert(soname, (real.clone(), host.clone()));
            queue.push_back(Object {
                name: format!("/{real}"),
                host,
                image_dir: parent(&real),
            });
        }
        check_versions(&object.name, &elf, &providers, tree)?;
    }
    Ok(result)
}

fn parent(image_path: &str) -> String {
    Path::new(image_path.trim_start_matches('/'))
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Every version `elf` needs from a library (`verneed`) must be defined by the pinned file that
/// provides it (`verdef`); otherwise the loader would refuse to start the program.
fn check_versions(
    name: &str,
    elf: &Elf,
    providers: &BTreeMap<String, (String, PathBuf)>,
    tree: &PackageTree,
) -> Result<()> {
    let Some(verneed) = &elf.verneed else {
        return Ok(());
    };
    for need in verneed.iter() {
        let Some(file) = elf.dynstrtab.get_at(need.vn_file) else {
            continue;
        };
        let Some((real, host)) = providers.get(file) else {
            continue;
        };
        let needed: Vec<String> = need
            .iter()
            .filter_map(|aux| elf.dynstrtab.get_at(aux.vna_name))
            .map(str::to_owned)
            .collect();
        let defined = defined_versions(host)?;
        let mut missing: Vec<&String> = needed.iter().filter(|v| !defined.contains(*v)).collect();
        if missing.is_empty() {
            continue;
        }
        missing.sort_by_key(|v| version_key(v));
        let newest_defined = defined
            .iter()
            .filter(|v| v.starts_with("GLIBC_2"))
            .max_by_key(|v| version_key(v))
            .map(|v| format!(", whose newest is {v}"))
            .unwrap_or_default();
        let package = tree
            .entries
            .get(real)
            .map(|e| format!("{} {}", e.package, e.version))
            .unwrap_or_default();
        let newest = missing.last().map(|v| v.as_str()).unwrap_or_default();
        bail!(
            "{name} needs {newest} from {file} (missing: {}), which the pinned {package} does not \
             define{newest_defined}: build on a host whose libc is no newer than the pinned one, \
             or pin a newer Debian release",
            missing
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// The version names `host` (a shared library) defines.
fn defined_versions(host: &Path) -> Result<BTreeSet<String>> {
    let bytes = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
    let elf = Elf::parse(&bytes).with_context(|| format!("{} is not ELF", host.display()))?;
    let mut names = BTreeSet::new();
    if let Some(verdef) = &elf.verdef {
        for def in verdef.iter() {
            for aux in def.iter() {
                if let Some(name) = elf.dynstrtab.get_at(aux.vda_name) {
                    names.insert(name.to_owned());
                }
            }
        }
    }
    Ok(names)
}

/// `GLIBC_2.34` sorts as (GLIBC, [2, 34]); numbers compare as numbers.
pub fn version_key(version: &str) -> (String, Vec<u64>) {
    let (prefix, numbers) = version.split_once('_').unwrap_or((version, ""));
    let numbers = numbers.split('.').map(|n| n.parse().unwrap_or(0)).collect();
    (prefix.to_owned(), numbers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(entries: &[(&str, TreeKind)]) -> PackageTree {
        PackageTree {
            entries: entries
                .iter()
                .map(|(path, kind)| {
                    let entry = TreeEntry {
                        kind: kind.clone(),
                        mode: 0o755,
                        package: "p".into(),
                        version: "1".into(),
                    };
                    ((*path).to_owned(), entry)
                })
                .collect(),
        }
    }

    #[test]
    fn symlinks_resolve_inside_the_tree() {
        let t = tree(&[
            ("lib64", TreeKind::Directory),
            (
                "lib64/ld-linux-x86-64.so.2",
                TreeKind::Symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into()),
            ),
            ("lib", TreeKind::Directory),
            ("lib/x86_64-linux-gnu", TreeKind::Directory),
            (
                "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                TreeKind::File("/x".into()),
            ),
            (
                "lib/x86_64-linux-gnu/libz.so.1",
                TreeKind::Symlink("libz.so.1.2.13".into()),
            ),
            (
                "lib/x86_64-linux-gnu/libz.so.1.2.13",
                TreeKind::File("/y".into()),
            ),
        ]);
        assert_eq!(
            t.resolve("/lib64/ld-linux-x86-64.so.2"),
            Some((
                vec!["lib64/ld-linux-x86-64.so.2".to_owned()],
                "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".to_owned()
            ))
        );
        assert_eq!(
            t.resolve("lib/x86_64-linux-gnu/libz.so.1").map(|r| r.1),
            Some("lib/x86_64-linux-gnu/libz.so.1.2.13".to_owned())
        );
        assert_eq!(t.resolve("lib/x86_64-linux-gnu/libnope.so"), None);
    }

    /// A tree holding this machine's copies of the test binary's libraries, at their paths;
    /// `libc.so.6` replaced by `libc_stand_in` when given.
    fn host_tree(libc_stand_in: Option<PathBuf>) -> (PathBuf, PackageTree) {
        let binary = std::env::current_exe().expect("test binary");
        let libraries = crate::image::elf::closure(&binary, &[]).expect("host closure");
        let mut entries = Vec::new();
        for library in libraries {
            let path = library.image_path.trim_start_matches('/').to_owned();
            let host = match (&libc_stand_in, path.ends_with("/libc.so.6")) {
                (Some(stand_in), true) => stand_in.clone(),
                _ => std::fs::canonicalize(&library.host_path).expect("library"),
            };
            entries.push((path, TreeKind::File(host)));
        }
        let entries: Vec<(&str, TreeKind)> = entries
            .iter()
            .map(|(p, k)| (p.as_str(), k.clone()))
            .collect();
        (binary, tree(&entries))
    }

    #[test]
    fn the_symbol_versions_a_binary_needs_are_checked_against_the_pinned_libc() {
        let (binary, good) = host_tree(None);
        let roots = [(
            "test".to_owned(),
            binary.clone(),
            "usr/local/bin/test".to_owned(),
        )];
        let found = closure(&good, &roots).expect("this machine's libc has what the binary needs");
        assert!(
            found.paths.iter().any(|p| p.ends_with("/libc.so.6")),
            "{:?}",
            found.paths
        );

        // A libc that defines no GLIBC_* version at all (libgcc_s stands in for it).
        let libgcc = good
            .entries
            .iter()
            .find(|(path, _)| path.ends_with("/libgcc_s.so.1"))
            .and_then(|(_, entry)| match &entry.kind {
                TreeKind::File(host) => Some(host.clone()),
                _ => None,
            });
        let Some(libgcc) = libgcc else {
            return; // a binary without libgcc_s: nothing to stand in
        };
        let (_, old) = host_tree(Some(libgcc));
        let err = closure(&old, &roots).expect_err("the stand-in defines no GLIBC version");
        let message = format!("{err:#}");
        assert!(
            message.starts_with("test needs GLIBC_2.") && message.contains("from libc.so.6"),
            "{message}"
        );
    }

    #[test]
    fn versions_sort_numerically() {
        let mut versions = vec!["GLIBC_2.9", "GLIBC_2.34", "GLIBC_2.2.5"];
        versions.sort_by_key(|v| version_key(v));
        assert_eq!(versions, ["GLIBC_2.2.5", "GLIBC_2.9", "GLIBC_2.34"]);
    }
}
