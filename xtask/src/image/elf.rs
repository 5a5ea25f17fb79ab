//! The ELF closure of a binary: its interpreter and every shared library it needs, transitively,
//! found by reading the ELF headers (PT_INTERP, DT_NEEDED, DT_RUNPATH/DT_RPATH) with goblin.
//! It never runs `ldd` or the binary, so it works on binaries for which running is unsafe or
//! impossible (a CUDA build on a machine without a GPU).
//!
//! It only answers "which host files, at which path inside the image"; which layer they go into is
//! `plan`'s decision.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use goblin::elf::Elf;

/// Directories the dynamic loader searches when no cache exists (Debian multiarch first).
const DEFAULT_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// A shared library that is never packed because the runtime provides it: the NVIDIA container
/// runtime injects the driver's libcuda (and libnvidia-ml) into the container.
pub fn is_injected_by_runtime(soname: &str) -> bool {
    soname.starts_with("libcuda.so") || soname.starts_with("libnvidia-ml.so")
}

/// One library of the closure: where it lives inside the image and which host file holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SharedLibrary {
    pub image_path: String,
    pub host_path: PathBuf,
    /// Set when the same host file is already packed at another image path (the interpreter,
    /// reached both as PT_INTERP and as a DT_NEEDED): this path becomes a symlink to that one.
    pub same_as: Option<String>,
}

/// The interpreter and libraries `binary` needs, searched in `extra_dirs` first (a CUDA
/// directory), then the binary's RUNPATH, then the default directories. Empty for a static binary.
pub fn closure(binary: &Path, extra_dirs: &[PathBuf]) -> Result<Vec<SharedLibrary>> {
    let root = read_dynamic(binary)?;
    let mut found: BTreeMap<String, SharedLibrary> = BTreeMap::new();
    if let Some(interpreter) = &root.interpreter {
        let host = PathBuf::from(interpreter);
        if !host.exists() {
            bail!(
                "{}: its interpreter {interpreter} does not exist on this machine",
                binary.display()
            );
        }
        found.insert(
            interpreter.clone(),
            SharedLibrary {
                image_path: interpreter.clone(),
                host_path: host,
                same_as: None,
            },
        );
    }
    // The loader answers a DT_NEEDED of its own soname (libc needs ld-linux-x86-64.so.2) with
    // itself, already loaded as the interpreter: never look that name up in library directories
    // (a Nix binary's libc has no RUNPATH, and a build sandbox has no /lib to fall back on).
    let mut seen: BTreeSet<String> = root
        .interpreter
        .iter()
        .filter_map(|interpreter| Path::new(interpreter).file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    let mut queue: VecDeque<(PathBuf, Dynamic)> = VecDeque::from([(binary.to_owned(), root)]);
    while let Some((owner, info)) = queue.pop_front() {
        for soname in &info.needed {
            if is_injected_by_runtime(soname) || !seen.insert(soname.clone()) {
                continue;
            }
            let host = locate(soname, extra_dirs, &info.search_dirs)
                .with_context(|| format!("{} needs {soname}", owner.display()))?;
            let library = read_dynamic(&host)?;
            let image_path = host.to_string_lossy().into_owned();
            found.entry(image_path.clone()).or_insert(SharedLibrary {
                image_path,
                host_path: host.clone(),
                same_as: None,
            });
            queue.push_back((host, library));
        }
    }
    Ok(link_duplicates(found.into_values().collect()))
}

/// Marks every library whose host file (after resolving symlinks) is already packed at an
/// earlier image path, so each file's bytes are stored once.
fn link_duplicates(libraries: Vec<SharedLibrary>) -> Vec<SharedLibrary> {
    let mut first_by_file: BTreeMap<PathBuf, String> = BTreeMap::new();
    libraries
        .into_iter()
        .map(|mut library| {
            let file =
                std::fs::canonicalize(&library.host_path).unwrap_or(library.host_path.clone());
            match first_by_file.get(&file) {
                Some(first) => library.same_as = Some(first.clone()),
                None => {
                    first_by_file.insert(file, library.image_path.clone());
                }
            }
            library
        })
        .collect()
}

#[derive(Debug)]
struct Dynamic {
    interpreter: Option<String>,
    needed: Vec<String>,
    search_dirs: Vec<PathBuf>,
}

fn read_dynamic(path: &Path) -> Result<Dynamic> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let elf =
        Elf::parse(&bytes).with_context(|| format!("{} is not an ELF file", path.display()))?;
    let origin = path.parent().unwrap_or(Path::new("/"));
    let search_dirs = elf
        .runpaths
        .iter()
        .chain(elf.rpaths.iter())
        .flat_map(|list| list.split(':'))
        .filter(|dir| !dir.is_empty())
        .map(|dir| PathBuf::from(dir.replace("$ORIGIN", &origin.to_string_lossy())))
        .collect();
    Ok(Dynamic {
        interpreter: elf.interpreter.map(str::to_owned),
        needed: elf
            .libraries
            .iter()
            .map(|name| (*name).to_owned())
            .collect(),
        search_dirs,
    })
}

/// The Rust compiler that built `binary`, as `rustc -V` prints it (`rustc 1.95.0 (59807616e
/// 2026-04-14)`), read from the `rustc version …` entry rustc writes into the `.comment`
/// section (stripping keeps it). None for a binary no rustc linked.
pub fn rustc_version(binary: &Path) -> Result<Option<String>> {
    let bytes = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let elf =
        Elf::parse(&bytes).with_context(|| format!("{} is not an ELF file", binary.display()))?;
    let comment = elf
        .section_headers
        .iter()
        .find(|header| elf.shdr_strtab.get_at(header.sh_name) == Some(".comment"));
    let Some(range) = comment.and_then(|header| header.file_range()) else {
        return Ok(None);
    };
    let section = bytes.get(range).with_context(|| {
        format!(
            "{}: the .comment section lies outside the file",
            binary.display()
        )
    })?;
    Ok(section
        .split(|byte| *byte == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .find_map(|entry| entry.strip_prefix("rustc version "))
        .map(|version| format!("rustc {version}")))
}

fn locate(soname: &str, extra_dirs: &[PathBuf], runpath: &[PathBuf]) -> Result<PathBuf> {
    if soname.contains('/') {
        return Ok(PathBuf::from(soname));
    }
    let defaults = DEFAULT_DIRS.iter().map(PathBuf::from);
    let dirs: Vec<PathBuf> = extra_dirs
        .iter()
        .cloned()
        .chain(runpath.iter().cloned())
        .chain(defaults)
        .collect();
    dirs.iter()
        .map(|dir| dir.join(soname))
        .find(|candidate| candidate.is_file())
        .with_context(|| {
            let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            format!("{soname} not found in {}", searched.join(", "))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rust_binary_names_the_rustc_that_built_it() {
        let test_binary = std::env::current_exe().expect("the test binary");
        let version = rustc_version(&test_binary)
            .expect("an ELF file")
            .expect("a .comment entry from rustc");
        // The compiler cargo used for this test binary: the one rustup (rust-toolchain.toml) or
        // RUSTC picks in the workspace.
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        let output = std::process::Command::new(rustc)
            .arg("-V")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("rustc -V");
        assert_eq!(version, String::from_utf8_lossy(&output.stdout).trim());
    }

    #[test]
    fn a_file_without_a_rustc_comment_has_no_version() {
        // /bin/sh is linked by a C toolchain: a .comment without `rustc version`, or none.
        assert_eq!(
            rustc_version(Path::new("/bin/sh")).expect("an ELF file"),
            None
        );
    }

    #[test]
    fn a_dynamic_binary_needs_libc_and_its_interpreter() {
        let binary = std::env::current_exe().expect("test binary");
        let libraries = closure(&binary, &[]).expect("closure");
        let paths: Vec<&str> = libraries
            .iter()
            .map(|lib| lib.image_path.as_str())
            .collect();
        assert!(paths.iter().any(|p| p.ends_with("/libc.so.6")), "{paths:?}");
        assert!(paths.iter().any(|p| p.contains("ld-linux")), "{paths:?}");
        let stored: Vec<_> = libraries
            .iter()
            .filter(|lib| lib.same_as.is_none())
            .collect();
        let loaders = stored
            .iter()
            .filter(|lib| lib.image_path.contains("ld-linux"))
            .count();
        assert_eq!(
            loaders, 1,
            "the loader's bytes are stored once: {libraries:?}"
        );
    }

    #[test]
    fn a_missing_binary_is_named() {
        let err = closure(Path::new("/nonexistent/cairn-bin"), &[]).expect_err("missing");
        assert!(
            format!("{err:#}").contains("/nonexistent/cairn-bin"),
            "{err:#}"
        );
    }

    #[test]
    fn libcuda_is_never_packed() {
        assert!(is_injected_by_runtime("libcuda.so.1"));
        assert!(!is_injected_by_runtime("libcudart.so.12"));
    }
}
