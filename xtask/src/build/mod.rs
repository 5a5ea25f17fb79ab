//! `cargo xtask build [SERVICE…]`: release binaries through a backend, and what the image step
//! needs to know about them (path, digest, version). The `cargo` backend is the one that runs
//! here; a `nix` backend plugs in beside it and returns the same `BuiltBinary` values.
//!
//! `garage` is the one binary built from outside the workspace: Garage's pinned crates.io
//! source, cached by its inputs (see `garage`). `cargo xtask build garage` builds it alone.
//!
//! It never packages anything: images are `image`'s job.

pub mod cargo;
pub mod garage;
pub mod nix;
pub mod provenance;

use std::path::PathBuf;

use anyhow::{Context, Result};

/// One binary to build: a workspace package, the binary target, cargo features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRequest {
    pub package: String,
    pub bin: String,
    pub features: Vec<String>,
}

/// A built binary and its facts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BuiltBinary {
    pub package: String,
    pub bin: String,
    pub features: Vec<String>,
    pub version: String,
    pub path: PathBuf,
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Cargo,
    Nix,
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Services to build (default: every service of the workspace); `garage` builds the pinned
    /// Garage from crates.io (cached by its inputs).
    services: Vec<String>,
    /// Default: nix when `nix` is installed and evaluates the flake, else cargo.
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// Print the built binaries as JSON.
    #[arg(long)]
    json: bool,
    /// Only report garage when it is already cached; fail instead of building it (tests use
    /// this to skip rather than start a long build).
    #[arg(long)]
    no_build: bool,
}

/// Builds `requests` with `backend`.
pub fn build(backend: Backend, requests: &[BuildRequest]) -> Result<Vec<BuiltBinary>> {
    match backend {
        Backend::Cargo => cargo::build(requests),
        Backend::Nix => nix::build(requests),
    }
}

/// The backend to use: the one asked for, else nix when it works here, else cargo.
pub fn choose(requested: Option<Backend>) -> Backend {
    if let Some(backend) = requested {
        return backend;
    }
    match nix::availability(&crate::project::root()) {
        nix::Availability::Usable => Backend::Nix,
        nix::Availability::Missing => Backend::Cargo,
        nix::Availability::Broken(reason) => {
            eprintln!("build: using cargo: nix cannot evaluate the flake here ({reason})");
            Backend::Cargo
        }
    }
}

pub fn run(args: &BuildArgs) -> Result<()> {
    let services = if args.services.is_empty() {
        cargo::workspace_services()?
    } else {
        args.services.clone()
    };
    let (garage_asked, services): (Vec<String>, Vec<String>) =
        services.into_iter().partition(|name| name == "garage");
    if args.no_build && (!services.is_empty() || garage_asked.is_empty()) {
        anyhow::bail!("--no-build is for `build garage` alone");
    }
    let requests: Vec<BuildRequest> = services
        .iter()
        .map(|service| BuildRequest {
            package: service.clone(),
            bin: service.clone(),
            features: Vec::new(),
        })
        .collect();
    let mut built = if requests.is_empty() {
        Vec::new()
    } else {
        build(choose(args.backend), &requests)?
    };
    if !garage_asked.is_empty() {
        built.push(built_garage(args.no_build)?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&built)?);
    } else {
        for binary in &built {
            println!(
                "{:<12} {:<10} {} {}",
                binary.bin,
                binary.version,
                binary.sha256,
                binary.path.display()
            );
        }
    }
    Ok(())
}

/// The pinned Garage as a `BuiltBinary`: built (or found in the cache), or with `no_build` only
/// found.
fn built_garage(no_build: bool) -> Result<BuiltBinary> {
    let root = crate::project::root();
    let path = if no_build {
        garage::cached_binary(&root)?.with_context(|| {
            format!(
                "garage {} is not built yet (cache {}): run `cargo xtask build garage`",
                garage::PINNED.version,
                garage::cache_dir()
                    .map(|dir| dir.display().to_string())
                    .unwrap_or_default()
            )
        })?
    } else {
        garage::binary(&root)?
    };
    Ok(BuiltBinary {
        package: garage::PINNED.crate_name.to_owned(),
        bin: "garage".to_owned(),
        features: garage::PINNED
            .features
            .iter()
            .map(|feature| (*feature).to_owned())
            .collect(),
        version: garage::PINNED.version.to_owned(),
        sha256: crate::image::layer::sha256_file(&path)?,
        path,
    })
}
