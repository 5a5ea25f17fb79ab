//! Which exact image each topology image name resolves to. Third-party images are pinned in the
//! topology itself; cairn's own images come from the image step as a JSON map
//! `{"gateway": "registry/cairn/gateway@sha256:…", …}` keyed by built image name. Without that map
//! every cairn image gets a placeholder: repository `registry.invalid/cairn/NAME` (a reserved,
//! never-resolving domain) and digest sha256("cairn placeholder NAME"), so committed examples are
//! deterministic and can never be pulled by mistake.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::topology::{Image, Topology};

/// Topology image name -> `repository[:tag]@sha256:…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePins {
    references: BTreeMap<String, String>,
    placeholders: bool,
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
            placeholders: true,
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
            placeholders: false,
        })
    }

    /// The reference a service's `image` pins to. Validation made every name resolve.
    pub fn reference(&self, image: &str) -> &str {
        self.references.get(image).map_or("", String::as_str)
    }

    pub fn has_placeholders(&self) -> bool {
        self.placeholders
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
        .split_once("@sha256:")
        .is_some_and(|(repository, digest)| {
            !repository.is_empty()
                && digest.len() == 64
                && digest
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
