//! `cargo xtask build [SERVICE…]`: release binaries through a backend, and what the image step
//! needs to know about them (path, digest, version). The `cargo` backend is the one that runs
//! here; a `nix` backend plugs in beside it and returns the same `BuiltBinary` values.
//!
//! It never packages anything: images are `image`'s job.

pub mod cargo;
pub mod nix;
pub mod provenance;

use std::path::PathBuf;

use anyhow::Result;

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
    /// Services to build (default: every service of the workspace).
    services: Vec<String>,
    /// Default: nix when `nix` is installed and evaluates the flake, else cargo.
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// Print the built binaries as JSON.
    #[arg(long)]
    json: bool,
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
    let requests: Vec<BuildRequest> = services
        .iter()
        .map(|service| BuildRequest {
            package: service.clone(),
            bin: service.clone(),
            features: Vec::new(),
        })
        .collect();
    let built = build(choose(args.backend), &requests)?;
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
