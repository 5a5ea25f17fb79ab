//! Which exact image each topology image name resolves to. Third-party images are pinned in the
//! topology itself; cairn's own images come from the image step as a JSON map
//! `{"gateway": "registry/cairn/gateway@sha256:…", …}` keyed by built image name. Without that map
//! every cairn image gets a placeholder: repository `registry.invalid/cairn/NAME` (a reserved,
//! never-resolving domain) and digest sha256("cairn placeholder NAME"), so committed examples are
//! deterministic and can never be pulled by mistake.
//!
//! A release without a registry pins each cairn image by the content tag its docker-archive
//! gives it, `cairn/NAME:manifest-<64 hex of the manifest digest>`
//! ([`ImagePins::from_loaded_archives`]): `docker load` of a docker-archive records no repository
//! digest, so `repo@sha256:<manifest>` would send compose to a registry; the image ID
//! (`sha256:<config>`) is found by the classic image store only, not by the containerd store (the
//! default of new Docker installs), and docker-compose 1.29 fails to recreate a container pinned
//! by ID on engines 25+. A tag both stores resolve, which names the digest it was made from, is
//! as exact as a digest for an image that only ever comes from the bundle's archive.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::topology::{Image, Topology};

/// Topology image name -> `repository[:tag]@sha256:…` (or `cairn/NAME:manifest-<hex>`, a loaded
/// archive's content tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePins {
    references: BTreeMap<String, String>,
    origin: PinOrigin,
}

/// Where the pinned cairn images come from, which the rendered files' header tells the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinOrigin {
    /// Fake digests on a reserved domain: the committed examples.
    Placeholders,
    /// `repository@sha256:<manifest>`, served by a registry.
    Registry,
    /// `cairn/NAME:manifest-<hex>` content tags of the docker-archives under the bundle's
    /// `images/`.
    LoadedArchives,
}

impl ImagePins {
    /// Placeholder digests for cairn's images (see the module doc).
    pub fn placeholders(topology: &Topology) -> ImagePins {
        let built = |build: &str| {
            let digest = Sha256::digest(format!("cairn placeholder {build}").as_bytes());
            format!("registry.invalid/cairn/{build}@sha256:{}", hex(&digest))
        };
        ImagePins {
            references: resolve(topology, built),
            origin: PinOrigin::Placeholders,
        }
    }

    /// Reads the built-image map from `file`.
    pub fn from_file(topology: &Topology, file: &Path) -> Result<ImagePins> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading image digests {}", file.display()))?;
        let map: BTreeMap<String, String> = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: expected a JSON object of image name -> repository@sha256:…",
                file.display()
            )
        })?;
        Self::from_map(topology, &map).with_context(|| format!("image digests {}", file.display()))
    }

    /// Pins from a built-image map; every image the topology builds must be in it.
    pub fn from_map(topology: &Topology, built: &BTreeMap<String, String>) -> Result<ImagePins> {
        for image in topology.images.values() {
            if let Image::Build(name) = image {
                let Some(reference) = built.get(name.get_ref()) else {
                    bail!(
                        "image {:?} was not built: it is missing from the map (has: {})",
                        name.get_ref(),
                        built.keys().cloned().collect::<Vec<_>>().join(", ")
                    );
                };
                if !is_digest_reference(reference) {
                    bail!(
                        "image {:?}: {reference:?} is not repository@sha256:<64 hex>",
                        name.get_ref()
                    );
                }
            }
        }
        Ok(ImagePins {
            references: resolve(topology, |build| built[build].clone()),
            origin: PinOrigin::Registry,
        })
    }

    /// Pins every built image to the content tag of its docker-archive, from `tags` (built image
    /// name -> `cairn/NAME:manifest-<64 hex>`): what `docker load` of the bundle's archives names
    /// the image, in either of Docker's image stores, and what compose then finds locally instead
    /// of pulling.
    pub fn from_loaded_archives(
        topology: &Topology,
        tags: &BTreeMap<String, String>,
    ) -> Result<ImagePins> {
        for image in topology.images.values() {
            if let Image::Build(name) = image {
                let name = name.get_ref();
                let Some(tag) = tags.get(name) else {
                    bail!("image {name:?} was not built: no docker-archive holds it");
                };
                let prefix = format!("cairn/{name}:{CONTENT_TAG_PREFIX}");
                if !tag.strip_prefix(&prefix).is_some_and(is_hex64) {
                    bail!("image {name:?}: {tag:?} is not {prefix}<64 hex>");
                }
            }
        }
        Ok(ImagePins {
            references: resolve(topology, |build| tags[build].clone()),
            origin: PinOrigin::LoadedArchives,
        })
    }

    /// The reference a service's `image` pins to. Validation made every name resolve.
    pub fn reference(&self, image: &str) -> &str {
        self.references.get(image).map_or("", String::as_str)
    }

    pub fn origin(&self) -> PinOrigin {
        self.origin
    }
}

fn resolve(topology: &Topology, built: impl Fn(&str) -> String) -> BTreeMap<String, String> {
    topology
        .images
        .iter()
        .map(|(name, image)| {
            let reference = match image {
                Image::Build(build) => built(build.get_ref()),
                Image::Reference(reference) => reference.get_ref().clone(),
            };
            (name.clone(), reference)
        })
        .collect()
}

fn is_digest_reference(reference: &str) -> bool {
    reference
        .split_once('@')
        .is_some_and(|(repository, digest)| !repository.is_empty() && is_digest(digest))
}

/// What a loaded archive's content tag has after the colon before the digest's hex; the same
/// as `image::docker_archive::CONTENT_TAG_PREFIX`, which writes it (render never depends on the
/// image module; a test in `release` holds the two together).
pub const CONTENT_TAG_PREFIX: &str = "manifest-";

/// `sha256:` and 64 lowercase hex digits: a digest.
fn is_digest(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(is_hex64)
}

/// `REPOSITORY:manifest-<64 lowercase hex>`: a docker-archive's content tag, which names the
/// manifest digest it was derived from.
pub fn is_content_tag(reference: &str) -> bool {
    reference.rsplit_once(':').is_some_and(|(repository, tag)| {
        !repository.is_empty()
            && !repository.contains('@')
            && tag.strip_prefix(CONTENT_TAG_PREFIX).is_some_and(is_hex64)
    })
}

fn is_hex64(hex: &str) -> bool {
    hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
