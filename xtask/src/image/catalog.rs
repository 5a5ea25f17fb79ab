//! The catalog: every image cairn builds and what each is made of. A service of the workspace
//! (its binary over the pinned base system), Debian packages of a set in `deploy/debian.lock`
//! with cairn's files (nginx, PostgreSQL), or a binary built elsewhere (Garage, wired in with
//! one `Prebuilt` entry). Pure data: `command` turns an entry into an `ImageSpec`.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::plan::ExtraFile;
use super::site;

/// One of cairn's images.
#[derive(Debug, Clone, Copy)]
pub struct CatalogImage {
    /// The ref name in the OCI layout and the topology's `build = "NAME"`.
    pub name: &'static str,
    pub content: ImageContent,
    pub ports: &'static [u16],
    pub gpu: bool,
}

/// What an image is made of.
#[derive(Debug, Clone, Copy)]
pub enum ImageContent {
    /// A service of the workspace, at /usr/local/bin/PACKAGE, over the pinned base system
    /// (its ELF closure, the CA bundle, passwd).
    Service {
        package: &'static str,
        features: &'static [&'static str],
        /// A workspace binary (built without features) packed at /usr/local/bin/PACKAGE in the
        /// service's place, the service then at /usr/local/libexec/cairn/PACKAGE; the CUDA build
        /// gets `cuda-launch`, which prints one line instead of the loader's when the NVIDIA
        /// driver is missing.
        launcher: Option<&'static str>,
    },
    /// Every kept file of a package set, plus cairn's own files.
    Debian(DebianImage),
    /// A binary built outside cargo's workspace build (e.g. Garage from its crates.io source),
    /// packed like a service: its ELF closure from the pinned base system.
    Prebuilt(PrebuiltImage),
}

#[derive(Debug, Clone, Copy)]
pub struct DebianImage {
    /// The package set of `deploy/debian.lock`.
    pub set: &'static str,
    /// A workspace binary packed at /usr/local/bin/NAME (the PostgreSQL entrypoint, nginx's
    /// health probe).
    pub helper: Option<&'static str>,
    pub entrypoint: &'static [&'static str],
    pub cmd: &'static [&'static str],
    pub stop_signal: Option<&'static str>,
    pub env: &'static [(&'static str, &'static str)],
    /// Directories the non-root user owns (a fresh named volume mounted there inherits them).
    pub writable_dirs: &'static [&'static str],
    /// cairn's files for the image, read from the workspace at `root`.
    pub files: fn(root: &Path) -> Result<Vec<ExtraFile>>,
}

#[derive(Debug, Clone, Copy)]
pub struct PrebuiltImage {
    /// Builds (or finds in its cache) the binary; `root` is the workspace.
    pub binary: fn(root: &Path) -> Result<PathBuf>,
    /// Its name under /usr/local/bin and the entrypoint.
    pub binary_name: &'static str,
    /// The config's Cmd (Garage: `server`).
    pub cmd: &'static [&'static str],
    pub writable_dirs: &'static [&'static str],
}

impl CatalogImage {
    /// The workspace package `cargo xtask build` must build for this image, with its features.
    pub fn workspace_binary(&self) -> Option<(&'static str, &'static [&'static str])> {
        match self.content {
            ImageContent::Service {
                package, features, ..
            } => Some((package, features)),
            ImageContent::Debian(DebianImage {
                helper: Some(package),
                ..
            }) => Some((package, &[])),
            ImageContent::Debian(_) | ImageContent::Prebuilt(_) => None,
        }
    }
}

impl CatalogImage {
    /// The launcher's workspace package, for a service that has one.
    pub fn launcher(&self) -> Option<&'static str> {
        match self.content {
            ImageContent::Service { launcher, .. } => launcher,
            ImageContent::Debian(_) | ImageContent::Prebuilt(_) => None,
        }
    }
}

fn no_files(_: &Path) -> Result<Vec<ExtraFile>> {
    Ok(Vec::new())
}

pub const CATALOG: &[CatalogImage] = &[
    CatalogImage {
        name: "gateway",
        content: ImageContent::Service {
            package: "gateway",
            features: &[],
            launcher: None,
        },
        ports: &[8080],
        gpu: false,
    },
    CatalogImage {
        name: "api",
        content: ImageContent::Service {
            package: "api",
            features: &[],
            launcher: None,
        },
        ports: &[8000],
        gpu: false,
    },
    CatalogImage {
        name: "inference",
        content: ImageContent::Service {
            package: "inference",
            features: &[],
            launcher: None,
        },
        ports: &[8001],
        gpu: false,
    },
    CatalogImage {
        name: "inference-cuda",
        content: ImageContent::Service {
            package: "inference",
            features: &["cuda"],
            launcher: Some("cuda-launch"),
        },
        ports: &[8001],
        gpu: true,
    },
    CatalogImage {
        name: "postgres",
        content: ImageContent::Debian(DebianImage {
            set: "postgres",
            helper: Some("pg-entrypoint"),
            entrypoint: &["/usr/local/bin/pg-entrypoint"],
            cmd: &[],
            // Fast shutdown: open sessions are rolled back instead of waited for.
            stop_signal: Some("SIGINT"),
            env: &[
                ("PGDATA", "/var/lib/postgresql/data"),
                // The server's socket is in the data directory (the root is read-only).
                ("PGHOST", "/var/lib/postgresql/data"),
                (
                    "PATH",
                    "/usr/local/bin:/usr/lib/postgresql/15/bin:/usr/bin:/bin",
                ),
            ],
            writable_dirs: &["/var/lib/postgresql/data"],
            files: no_files,
        }),
        ports: &[5432],
        gpu: false,
    },
    CatalogImage {
        name: "nginx",
        content: ImageContent::Debian(DebianImage {
            set: "nginx",
            // The health check: the image has no shell, curl or wget.
            helper: Some("http-probe"),
            // The config path said, not compiled in: a Nix-built nginx's own is in its store
            // path, and the deployment mounts its config here in both images.
            entrypoint: &[
                "/usr/sbin/nginx",
                "-e",
                "stderr",
                "-c",
                "/etc/nginx/nginx.conf",
            ],
            cmd: &["-g", "daemon off;"],
            // Graceful: finish the requests in flight.
            stop_signal: Some("SIGQUIT"),
            env: &[],
            writable_dirs: &[site::TEMP_DIR],
            files: site::files,
        }),
        ports: &[8080, 8443],
        gpu: false,
    },
    CatalogImage {
        name: "garage",
        content: ImageContent::Prebuilt(PrebuiltImage {
            binary: crate::build::garage::binary,
            binary_name: "garage",
            cmd: &["server"],
            writable_dirs: &["/var/lib/garage/data", "/var/lib/garage/meta"],
        }),
        // S3 API, RPC, admin API.
        ports: &[3900, 3901, 3903],
        gpu: false,
    },
];

pub fn find(name: &str) -> Option<&'static CatalogImage> {
    CATALOG.iter().find(|image| image.name == name)
}
