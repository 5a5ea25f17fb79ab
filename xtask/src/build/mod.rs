//! `cargo xtask build [SERVICE…]`: release binaries through a backend, and what the image step
//! needs to know about them (path, digest, version). The `cargo` backend is the one that runs
//! here; a `nix` backend plugs in beside it and returns the same `BuiltBinary` values.
//!
//! It never packages anything: images are `image`'s job.

pub mod cargo;
pub mod provenance;

use std::path::PathBuf;

use anyhow::{Result, bail};

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
    #[arg(long, value_enum, default_value_t = Backend::Cargo)]
    backend: Backend,
    /// Print the built binaries as JSON.
    #[arg(long)]
    json: bool,
}

/// Builds `requests` with `backend`.
pub fn build(backend: Backend, requests: &[BuildRequest]) -> Result<Vec<BuiltBinary>> {
    match backend {
        Backend::Cargo => cargo::build(requests),
        Backend::Nix => {
            bail!("the nix backend is added by the flake (`nix build`); use --backend cargo here")
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
    let built = build(args.backend, &requests)?;
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
