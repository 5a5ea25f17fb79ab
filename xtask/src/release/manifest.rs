//! `release.json`: what a release contains, for people and for deploy scripts. Built from the
//! facts the other steps report (pure); this module never runs anything.

use serde::Serialize;

/// The whole release.
#[derive(Debug, Clone, Serialize)]
pub struct Release {
    /// `git rev-parse HEAD` of the source, or CAIRN_REVISION.
    pub revision: String,
    /// The rustc that built the binaries, as `rustc -V` prints it, read from the binaries.
    pub toolchain: String,
    pub source_date_epoch: u64,
    /// The topology the bundle was rendered from, as given (relative to the project root).
    pub topology: String,
    /// Its byte-identical copy in the bundle, relative to the bundle: `topology.toml`.
    pub topology_file: String,
    /// `sha256:<hex>` of those bytes.
    pub topology_sha256: String,
    /// `HOST/NAMESPACE` images were pushed to; None when they travel in the bundle.
    pub registry: Option<String>,
    pub images: Vec<ReleasedImage>,
    /// One folder per server, relative to the bundle.
    pub servers: Vec<String>,
}

/// One image of the release.
#[derive(Debug, Clone, Serialize)]
pub struct ReleasedImage {
    pub name: String,
    /// The manifest digest.
    pub digest: String,
    /// What the compose files pin: `REPOSITORY@DIGEST` when pushed, else the content tag
    /// `cairn/NAME:manifest-<hex of DIGEST>` that `docker load` of the archive names it by.
    pub reference: String,
    /// Compressed layers + config + manifest: the bytes a pull transfers.
    pub size: u64,
    /// The CycloneDX SBOM, relative to the bundle.
    pub sbom: String,
    /// The docker-archive tarball, relative to the bundle (releases without a registry).
    pub archive: Option<String>,
}
