//! Which exact image each topology image name resolves to. Third-party images are pinned in the
//! topology itself; cairn's own images come from the image step as a JSON map
//! `{"gateway": "registry/cairn/gateway@sha256:…", …}` keyed by built image name. Without that map
//! every cairn image gets a placeholder: repository `registry.invalid/cairn/NAME` (a reserved,
//! never-resolving domain) and digest sha256("cairn placeholder NAME"), so committed examples are
//! deterministic and can never be pulled by mistake.
//!
//! A release without a registry pins each cairn image by its Docker image ID instead
//! (`sha256:<config digest>`, [`ImagePins::from_loaded_archives`]): `docker load` of a
//! docker-archive records no repository digest, so `repo@sha256:<manifest>` would send compose to
//! a registry, while the image ID is what the engine computes from the loaded config itself.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::topology::{Image, Topology};

/// Topology image name -> `repository[:tag]@sha256:…` (or `sha256:…`, an image ID).
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
    /// `sha256:<config>` image IDs of the docker-archives under the bundle's `images/`.
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

    /// Pins every built image to its Docker image ID, `sha256:<config digest>`, from `ids`
    /// (built image name -> ID): what `docker load` of the bundle's archives produces, and what
    /// compose then finds locally instead of pulling.
    pub fn from_loaded_archives(
        topology: &Topology,
        ids: &BTreeMap<String, String>,
    ) -> Result<ImagePins> {
        for image in topology.images.values() {
            if let Image::Build(name) = image {
                let Some(id) = ids.get(name.get_ref()) else {
                    bail!(
                        "image {:?} was not built: no docker-archive holds it",
                        name.get_ref()
                    );
                };
                if !is_image_id(id) {
                    bail!("image {:?}: {id:?} is not sha256:<64 hex>", name.get_ref());
                }
            }
        }
        Ok(ImagePins {
            references: resolve(topology, |build| ids[build].clone()),
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
        .is_some_and(|(repository, digest)| !repository.is_empty() && is_image_id(digest))
}

/// `sha256:` and 64 lowercase hex digits: a digest, or a Docker image ID.
pub fn is_image_id(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
