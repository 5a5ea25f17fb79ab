//! Installing the pinned wheels as a CUDA root: `pip download --require-hashes` (pip is the
//! ordinary client of PyPI and checks every hash against the lock), a second SHA-256 check of
//! each file by cairn, unpacking, and the layout nvcc and cudarc expect, all in a temporary
//! folder renamed into place as the last step; an interrupted install leaves no toolkit behind.
//!
//! The wheels hold `nvidia/cu13/{bin,include,lib,nvvm}` with only versioned libraries
//! (`libcublas.so.13`) and no libcuda. The layout adds what a toolkit has and the wheels do not:
//! `lib64/` (where nvcc.profile and cudarc look), the unversioned names the linker resolves `-l`
//! with, and `lib64/stubs/libcuda.so` (see `stub`, kept in step with cudarc on every use).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::lock::CudaLock;
use super::stub;
use crate::image::layer::sha256_file;

/// The file that marks a finished toolkit; it holds the pins it was made from.
const MARKER: &str = "cairn-toolkit.lock";

/// A laid-out CUDA root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolkit {
    pub root: PathBuf,
    pub version: (u32, u32),
}

impl Toolkit {
    /// The shared libraries: what GPU images pack (never the stub below it).
    pub fn library_dir(&self) -> PathBuf {
        self.root.join("lib64")
    }
}

/// The toolkit for `lock` under `cache` (`cache/<key>`), installed first when missing.
pub fn ensure(lock: &CudaLock, cudarc: &stub::Cudarc, cache: &Path) -> Result<Toolkit> {
    let version = lock.cuda_version()?;
    let root = cache.join(lock.key());
    if !root.join(MARKER).is_file() {
        install(lock, cache, &root)?;
    }
    stub::ensure(cudarc, &root.join("lib64").join("stubs"))?;
    Ok(Toolkit { root, version })
}

fn install(lock: &CudaLock, cache: &Path, root: &Path) -> Result<()> {
    let version = lock.cuda_version()?;
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".install-")
        .tempdir_in(cache)
        .with_context(|| format!("creating a temporary folder in {}", cache.display()))?;
    let started = std::time::Instant::now();
    eprintln!(
        "cuda: installing CUDA {}.{} from {} pinned wheels into {}",
        version.0,
        version.1,
        lock.wheels.len(),
        root.display()
    );
    let wheels = download(lock, staging.path())?;
    let unpacked = staging.path().join("unpacked");
    for wheel in &wheels {
        unpack(wheel, &unpacked)?;
    }
    let staged_root = unpacked.join("nvidia").join(format!("cu{}", version.0));
    lay_out(&staged_root)?;
    std::fs::write(staged_root.join(MARKER), lock.requirements())
        .with_context(|| format!("writing {}", staged_root.join(MARKER).display()))?;
    match std::fs::rename(&staged_root, root) {
        Ok(()) => {}
        // Another install finished first: its toolkit is the same.
        Err(_) if root.join(MARKER).is_file() => {}
        Err(err) => {
            return Err(err).with_context(|| {
                format!("renaming {} to {}", staged_root.display(), root.display())
            });
        }
    }
    eprintln!("cuda: installed in {:.0?}", started.elapsed());
    Ok(())
}

/// Downloads every pinned wheel into `dir/wheels` and checks each file's SHA-256.
fn download(lock: &CudaLock, dir: &Path) -> Result<Vec<PathBuf>> {
    let requirements = dir.join("requirements.txt");
    std::fs::write(&requirements, lock.requirements())
        .with_context(|| format!("writing {}", requirements.display()))?;
    let wheels = dir.join("wheels");
    let mut command = Command::new("pip3");
    command
        .args([
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--require-hashes",
            "--disable-pip-version-check",
            "--quiet",
            "-d",
        ])
        .arg(&wheels)
        .arg("-r")
        .arg(&requirements);
    let status = command.status().with_context(|| {
        format!("running {command:?} (pip3 is needed: apt-get install python3-pip)")
    })?;
    if !status.success() {
        bail!("pip3 download of the CUDA wheels failed ({status}): {command:?}");
    }
    let names: Vec<String> = std::fs::read_dir(&wheels)
        .with_context(|| format!("reading {}", wheels.display()))?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", wheels.display()))?;
    let mut paths = Vec::new();
    for wheel in &lock.wheels {
        let prefix = wheel.file_prefix();
        let name = names
            .iter()
            .find(|name| name.starts_with(&prefix) && name.ends_with(".whl"))
            .with_context(|| format!("pip3 downloaded no {prefix}*.whl"))?;
        let path = wheels.join(name);
        let digest = sha256_file(&path)?;
        if digest != format!("sha256:{}", wheel.sha256) {
            bail!(
                "{}: {digest} differs from the lock's sha256:{}",
                path.display(),
                wheel.sha256
            );
        }
        paths.push(path);
    }
    Ok(paths)
}

/// Unpacks a wheel (a zip) with Python's zipfile, beside the pip that fetched it.
fn unpack(wheel: &Path, into: &Path) -> Result<()> {
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(wheel)
        .arg(into)
        .status()
        .context("running python3 -m zipfile")?;
    if !status.success() {
        bail!("unpacking {} failed ({status})", wheel.display());
    }
    Ok(())
}

/// Turns the wheels' `nvidia/cuN` tree into a CUDA root: executables executable (zipfile drops
/// modes), `lib` renamed `lib64` with `lib` a link to it, and the linker names.
fn lay_out(root: &Path) -> Result<()> {
    for dir in ["bin", "bin/crt", "nvvm/bin"] {
        let dir = root.join(dir);
        for name in sorted_names(&dir)? {
            let path = dir.join(&name);
            if path.is_file() && !name.ends_with(".stub") && name != "nvcc.profile" {
                set_mode(&path, 0o755)?;
            }
        }
    }
    let (lib, lib64) = (root.join("lib"), root.join("lib64"));
    std::fs::rename(&lib, &lib64)
        .with_context(|| format!("renaming {} to lib64", lib.display()))?;
    std::os::unix::fs::symlink("lib64", &lib)
        .with_context(|| format!("linking {}", lib.display()))?;
    for (link, target) in linker_names(&sorted_names(&lib64)?) {
        std::os::unix::fs::symlink(&target, lib64.join(&link))
            .with_context(|| format!("linking {link} -> {target} in {}", lib64.display()))?;
    }
    Ok(())
}

/// `libX.so -> libX.so.N` for every `libX.so.N` (N a number): the names `-lX` finds. Pure.
pub fn linker_names(names: &[String]) -> Vec<(String, String)> {
    names
        .iter()
        .filter_map(|name| {
            let (stem, version) = name.split_once(".so.")?;
            let plain = !stem.contains('.') && stem.starts_with("lib");
            let numeric = !version.is_empty() && version.chars().all(|c| c.is_ascii_digit());
            (plain && numeric).then(|| (format!("{stem}.so"), name.clone()))
        })
        .filter(|(link, _)| !names.contains(link))
        .collect()
}

fn sorted_names(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    names.sort();
    Ok(names)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linker_names_link_each_versioned_library_once() {
        let names: Vec<String> = [
            "cmake",
            "libcublas.so.13",
            "libcudart.so",
            "libcudart.so.13",
            "libcudart_static.a",
            "libcurand.so.10",
            "libnvrtc-builtins.so.13.0",
            "libnvrtc.alt.so.13",
            "libnvrtc.so.13",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(
            linker_names(&names),
            [
                ("libcublas.so".to_owned(), "libcublas.so.13".to_owned()),
                ("libcurand.so".to_owned(), "libcurand.so.10".to_owned()),
                ("libnvrtc.so".to_owned(), "libnvrtc.so.13".to_owned()),
            ]
        );
    }
}
