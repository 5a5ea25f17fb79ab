//! The link-time stand-in for the NVIDIA driver: `lib64/stubs/libcuda.so`, soname `libcuda.so.1`,
//! one empty function per driver symbol cudarc declares. candle turns on cudarc's
//! `dynamic-linking`, so the linker needs a libcuda to resolve `-lcuda`; the wheels carry none (a
//! toolkit's own stub comes with the driver-less installer, not with PyPI). The binary records
//! `libcuda.so.1` as needed and the NVIDIA container runtime injects the real one; this file is
//! never packed (it is outside `lib64/` proper, and `elf::is_injected_by_runtime` skips it).
//!
//! The symbol list comes from the cudarc source cargo resolved, so it always matches what the
//! binary references; `stubs/cudarc` names the cudarc it was made from and a different cudarc
//! rewrites the stub (temp + rename).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::image::layout::write_atomically;

/// The cudarc package of the workspace's lock: its version and driver bindings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cudarc {
    pub version: String,
    pub driver_bindings: PathBuf,
}

impl Cudarc {
    fn id(&self) -> String {
        format!("cudarc {}\n", self.version)
    }
}

/// Finds cudarc through `cargo metadata` (downloading it when the registry lacks it).
pub fn locate(root: &Path) -> Result<Cudarc> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        // Optional dependencies are in the resolve only with the feature that enables them.
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--features",
            "inference/cuda",
        ])
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let metadata: Value =
        serde_json::from_slice(&output.stdout).context("parsing cargo metadata")?;
    let package = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "cudarc")
        .context("Cargo.lock has no cudarc (inference's `cuda` feature brings it)")?;
    let manifest = PathBuf::from(package["manifest_path"].as_str().unwrap_or_default());
    let dir = manifest.parent().context("cudarc's manifest path")?;
    Ok(Cudarc {
        version: package["version"].as_str().unwrap_or_default().to_owned(),
        driver_bindings: dir.join("src/driver/sys/mod.rs"),
    })
}

/// The driver functions a bindings file declares (`fn cuInit(` inside `extern "C"`), sorted.
pub fn driver_symbols(bindings: &str) -> Vec<String> {
    let mut symbols: Vec<String> = bindings
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("fn cu"))
        .filter_map(|rest| rest.split_once('('))
        .map(|(name, _)| format!("cu{name}"))
        .filter(|name| name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    symbols.sort();
    symbols.dedup();
    symbols
}

/// Makes `dir/libcuda.so` the stub for `cudarc`, unless it already is.
pub fn ensure(cudarc: &Cudarc, dir: &Path) -> Result<()> {
    let id_file = dir.join("cudarc");
    let library = dir.join("libcuda.so");
    if library.is_file() && std::fs::read_to_string(&id_file).ok() == Some(cudarc.id()) {
        return Ok(());
    }
    let bindings = std::fs::read_to_string(&cudarc.driver_bindings)
        .with_context(|| format!("reading {}", cudarc.driver_bindings.display()))?;
    let symbols = driver_symbols(&bindings);
    if symbols.len() < 100 {
        bail!(
            "{} declares only {} driver functions: not cudarc's driver bindings",
            cudarc.driver_bindings.display(),
            symbols.len()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let scratch = tempfile::tempdir_in(dir).context("creating a temporary folder")?;
    let source = scratch.path().join("libcuda-stub.c");
    let text: String = symbols
        .iter()
        .map(|s| format!("void {s}(void) {{}}\n"))
        .collect();
    std::fs::write(&source, text).with_context(|| format!("writing {}", source.display()))?;
    let output = scratch.path().join("libcuda.so");
    let status = Command::new("cc")
        .args([
            "-shared",
            "-fPIC",
            "-nostdlib",
            "-Wl,-soname,libcuda.so.1",
            "-o",
        ])
        .arg(&output)
        .arg(&source)
        .status()
        .context("running cc (a C compiler is needed to write the libcuda stub)")?;
    if !status.success() {
        bail!("cc failed ({status}) compiling {}", source.display());
    }
    std::fs::rename(&output, &library)
        .with_context(|| format!("renaming the stub to {}", library.display()))?;
    write_atomically(&id_file, cudarc.id().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_the_extern_functions() {
        let bindings = "pub unsafe fn cuInit(flags: u32) -> CUresult {\n\
            extern \"C\" {\n    fn cuInit(Flags: ::core::ffi::c_uint) -> CUresult;\n}\n\
            extern \"C\" {\n    fn cuCtxCreate_v4(ctx: *mut CUcontext) -> CUresult;\n}\n\
            pub unsafe fn culib() -> &'static Library {\n";
        assert_eq!(driver_symbols(bindings), ["cuCtxCreate_v4", "cuInit"]);
    }
}
