//! The pinned CUDA toolchain of the cargo backend: the NVIDIA wheels of `deploy/cuda.lock`
//! installed into `~/.cache/cairn/cuda/<key>` and laid out as a CUDA root (`bin/nvcc`,
//! `include/`, `lib64/`, `nvvm/`), so a `cuda` build and a GPU image need no host CUDA and no GPU.
//! `cargo xtask cuda install` installs it; `build` (cargo backend) and `image` call [`toolkit`].
//!
//! Submodules: `lock` (the lock file, pure), `install` (download, verify, unpack, lay out),
//! `stub` (the link-time libcuda). It never builds a crate and never writes an image.

pub mod install;
pub mod lock;
pub mod stub;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use install::Toolkit;
use lock::CudaLock;

use crate::project;

/// The lock, relative to the workspace root.
pub const LOCK_FILE: &str = "deploy/cuda.lock";

/// The compute capability candle's kernels are compiled for. candle-kernels takes one
/// (`CUDA_COMPUTE_CAP`) and builds PTX for it; the driver JIT-compiles compute_80 PTX for every
/// later GPU, so one build serves 8.0 (A100), 8.6/8.9 and 9.0 (H100/H200). Only candle's
/// statically compiled GGUF/MoE kernels are machine code (sm_80 only), and cairn's Qwen2
/// safetensors models never call them.
pub const COMPUTE_CAP: &str = "80";

#[derive(Debug, clap::Args)]
pub struct CudaArgs {
    #[command(subcommand)]
    command: CudaCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CudaCommand {
    /// Download, verify and lay out the pinned wheels; prints the CUDA root.
    Install,
    /// Print the environment a cargo build with `--features cuda` uses (shell `export` lines).
    Env,
}

pub fn run(args: &CudaArgs) -> Result<()> {
    let toolkit = toolkit()?;
    match args.command {
        CudaCommand::Install => println!("{}", toolkit.root.display()),
        CudaCommand::Env => {
            for (name, value) in build_environment(&toolkit) {
                println!("export {name}={:?}", value.to_string_lossy());
            }
        }
    }
    Ok(())
}

/// The lock of the workspace.
pub fn lock(root: &Path) -> Result<CudaLock> {
    let path = root.join(LOCK_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    CudaLock::parse(&text, LOCK_FILE)
}

/// Where toolkits live: `CAIRN_CACHE_DIR`, else `XDG_CACHE_HOME/cairn`, else `~/.cache/cairn`;
/// then `cuda/`.
pub fn cache_dir() -> PathBuf {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let base = env("CAIRN_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| env("XDG_CACHE_HOME").map(|dir| PathBuf::from(dir).join("cairn")))
        .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".cache/cairn")))
        .unwrap_or_else(|| project::root().join("target/cache"));
    base.join("cuda")
}

/// The pinned toolkit, installed first when missing.
pub fn toolkit() -> Result<Toolkit> {
    let root = project::root();
    let cudarc = stub::locate(&root)?;
    install::ensure(&lock(&root)?, &cudarc, &cache_dir())
}

/// What cargo needs to build `--features cuda` with `toolkit`: nvcc for candle-kernels, the root
/// for cudarc's link search, the CUDA version for cudarc (so it never parses `nvcc --version`)
/// and the compute capability.
pub fn build_environment(toolkit: &Toolkit) -> Vec<(String, OsString)> {
    let bin = toolkit.root.join("bin");
    let mut path = OsString::from(&bin);
    if let Some(existing) = std::env::var_os("PATH") {
        path.push(":");
        path.push(existing);
    }
    let (major, minor) = toolkit.version;
    vec![
        ("CUDA_HOME".into(), toolkit.root.clone().into()),
        ("NVCC".into(), bin.join("nvcc").into()),
        ("PATH".into(), path),
        (
            "CUDARC_CUDA_VERSION".into(),
            format!("{major}0{minor}0").into(),
        ),
        ("CUDA_COMPUTE_CAP".into(), compute_cap().into()),
    ]
}

/// The environment of a `cuda` cargo build: the user's own CUDA when `CUDA_HOME` is set (only
/// the compute capability is added when unset), else the pinned toolkit's.
pub fn cargo_environment() -> Result<Vec<(String, OsString)>> {
    if let Some(home) = std::env::var_os("CUDA_HOME").filter(|h| !h.is_empty()) {
        eprintln!(
            "cuda: building with the host's CUDA (CUDA_HOME={})",
            Path::new(&home).display()
        );
        return Ok(vec![("CUDA_COMPUTE_CAP".into(), compute_cap().into())]);
    }
    Ok(build_environment(&toolkit()?))
}

fn compute_cap() -> String {
    std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| COMPUTE_CAP.to_owned())
}
