//! CUDA libraries from a directory the user names (a CUDA toolkit's lib64, a Nix store path, an
//! unpacked `nvidia-*-cu12` wheel): one layer per library group, at the same path in every GPU
//! image so that they share the layer's digest. libcuda.so is never packed; the NVIDIA container
//! runtime injects the driver, and the environment set here lets the loader find it.
//!
//! It must never look at the application binary: which groups an image needs is in its spec.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::elf::is_injected_by_runtime;
use super::layer::{EntrySource, LayerEntry, LayerPlan};

/// Where CUDA libraries sit inside an image.
pub const IMAGE_DIR: &str = "/usr/local/cuda/lib64";

/// The environment a GPU image needs so that the NVIDIA runtime exposes the GPU and the loader
/// finds both the packed CUDA libraries and the injected driver.
pub const ENV: &[(&str, &str)] = &[
    ("NVIDIA_VISIBLE_DEVICES", "all"),
    ("NVIDIA_DRIVER_CAPABILITIES", "compute,utility"),
    (
        "LD_LIBRARY_PATH",
        "/usr/local/cuda/lib64:/usr/local/nvidia/lib64:/usr/lib/x86_64-linux-gnu:/usr/lib64",
    ),
];

/// A set of libraries that ship together, e.g. `cublas` = libcublas + libcublasLt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaGroup {
    pub name: &'static str,
    /// File name prefixes, each followed by `.so` in a matching file name.
    pub libraries: &'static [&'static str],
}

pub const GROUPS: &[CudaGroup] = &[
    CudaGroup {
        name: "cudart",
        libraries: &["libcudart"],
    },
    CudaGroup {
        name: "cublas",
        libraries: &["libcublas", "libcublasLt"],
    },
    CudaGroup {
        name: "curand",
        libraries: &["libcurand"],
    },
    CudaGroup {
        name: "nvrtc",
        libraries: &["libnvrtc", "libnvrtc-builtins"],
    },
];

/// The group called `name`.
pub fn group(name: &str) -> Result<CudaGroup> {
    GROUPS
        .iter()
        .copied()
        .find(|group| group.name == name)
        .with_context(|| {
            let known: Vec<&str> = GROUPS.iter().map(|g| g.name).collect();
            format!(
                "unknown CUDA library group {name:?} (known: {})",
                known.join(", ")
            )
        })
}

/// One layer for `group` from the files of `dir`: every `<library>.so*` file or symlink.
/// Fails naming the directory when one of the group's libraries is absent.
pub fn plan_group(dir: &Path, group: CudaGroup) -> Result<LayerPlan> {
    let names = sorted_names(dir)?;
    let mut plan = LayerPlan::new(&format!("cuda-{}", group.name));
    for library in group.libraries {
        let prefix = format!("{library}.so");
        let matching: Vec<&String> = names
            .iter()
            .filter(|name| name.starts_with(&prefix) && !is_injected_by_runtime(name))
            .collect();
        if matching.is_empty() {
            bail!(
                "CUDA directory {} has no {prefix}* (needed for the {} library group)",
                dir.display(),
                group.name
            );
        }
        for name in matching {
            plan.insert(&format!("{IMAGE_DIR}/{name}"), entry(&dir.join(name))?);
        }
    }
    Ok(plan)
}

fn sorted_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for item in std::fs::read_dir(dir)
        .with_context(|| format!("reading CUDA directory {}", dir.display()))?
    {
        let item = item.with_context(|| format!("reading CUDA directory {}", dir.display()))?;
        names.push(item.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

fn entry(path: &Path) -> Result<LayerEntry> {
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let source = if meta.file_type().is_symlink() {
        let target =
            std::fs::read_link(path).with_context(|| format!("reading link {}", path.display()))?;
        EntrySource::Symlink(target.to_string_lossy().into_owned())
    } else {
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        EntrySource::HostFile(PathBuf::from(path))
    };
    Ok(LayerEntry {
        source,
        mode: 0o755,
        uid: 0,
        gid: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_names_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("libcudart.so.12"), b"x").expect("write");
        std::fs::write(dir.path().join("libcuda.so.1"), b"driver").expect("write");
        let cudart = plan_group(dir.path(), group("cudart").expect("group")).expect("cudart");
        let paths: Vec<_> = cudart.entries.keys().cloned().collect();
        assert_eq!(
            paths,
            [
                "usr",
                "usr/local",
                "usr/local/cuda",
                "usr/local/cuda/lib64",
                "usr/local/cuda/lib64/libcudart.so.12"
            ]
        );
        let err = plan_group(dir.path(), group("cublas").expect("group")).expect_err("no cublas");
        let message = format!("{err:#}");
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("libcublas.so"), "{message}");
    }
}
