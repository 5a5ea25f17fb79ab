//! Reading a standard OCI image layout (index.json + blobs/sha256) into the push plan of each
//! named image: the blobs it needs and its manifests with their exact bytes, children first.
//!
//! It owns the layout's file format and nothing about registries. It must never rewrite a
//! manifest: the bytes read here are the bytes pushed, checked against their digest.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// The annotation that names an image in index.json (`umoci`, `skopeo` and cairn's assembler
/// all write it).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI content descriptor: what a blob is, its digest and size.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct ImageIndex {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct ImageManifest {
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// One manifest (image manifest or index) with the exact bytes the layout holds.
#[derive(Debug, Clone)]
pub struct ManifestBlob {
    pub descriptor: Descriptor,
    pub bytes: Vec<u8>,
}

/// Everything one named image needs in a registry.
#[derive(Debug, Clone)]
pub struct ImagePlan {
    /// The name from the `org.opencontainers.image.ref.name` annotation.
    pub name: String,
    /// Config and layer blobs, each once, in the order the manifests name them.
    pub blobs: Vec<Descriptor>,
    /// Child manifests first, the image's own (root) manifest last.
    pub manifests: Vec<ManifestBlob>,
}

impl ImagePlan {
    pub fn root(&self) -> &ManifestBlob {
        self.manifests
            .last()
            .expect("an image plan always holds its root manifest")
    }
}

/// A standard OCI image layout on disk.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    entries: Vec<Descriptor>,
}

impl Layout {
    /// Opens the layout at `root`, reading `oci-layout` and `index.json`.
    pub fn open(root: &Path) -> Result<Layout> {
        let marker = root.join("oci-layout");
        let marker_text = std::fs::read_to_string(&marker).with_context(|| {
            format!(
                "{} is not an OCI image layout (reading {})",
                root.display(),
                marker.display()
            )
        })?;
        if !marker_text.contains("imageLayoutVersion") {
            bail!("{}: no imageLayoutVersion field", marker.display());
        }
        let index_path = root.join("index.json");
        let index_text = std::fs::read(&index_path)
            .with_context(|| format!("reading {}", index_path.display()))?;
        let index: ImageIndex = serde_json::from_slice(&index_text)
            .with_context(|| format!("parsing {}", index_path.display()))?;
        let mut names = BTreeSet::new();
        for entry in &index.manifests {
            check_digest(&entry.digest)
                .with_context(|| format!("{}: manifests entry", index_path.display()))?;
            if let Some(name) = entry.annotations.get(REF_NAME)
                && !names.insert(name.as_str())
            {
                bail!("{}: two images are named {name:?}", index_path.display());
            }
        }
        Ok(Layout {
            root: root.to_path_buf(),
            entries: index.manifests,
        })
    }

    /// The names of the images in index.json, in file order.
    pub fn image_names(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter_map(|entry| entry.annotations.get(REF_NAME).cloned())
            .collect()
    }

    /// The path of the blob with `digest` (already checked to be `sha256:<64 hex>`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.root.join("blobs").join("sha256").join(hex)
    }

    /// The push plans of the images named `names`, or of every named image when `names` is empty.
    pub fn plans(&self, names: &[String]) -> Result<Vec<ImagePlan>> {
        let available = self.image_names();
        if let Some(missing) = names.iter().find(|name| !available.contains(name)) {
            bail!(
                "{}: no image named {missing:?} in index.json (it has: {})",
                self.root.display(),
                available.join(", ")
            );
        }
        self.entries
            .iter()
            .filter_map(|entry| {
                let name = entry.annotations.get(REF_NAME)?;
                (names.is_empty() || names.contains(name)).then(|| self.plan(name, entry))
            })
            .collect()
    }

    fn plan(&self, name: &str, root: &Descriptor) -> Result<ImagePlan> {
        let mut plan = ImagePlan {
            name: name.to_owned(),
            blobs: Vec::new(),
            manifests: Vec::new(),
        };
        let mut seen = BTreeSet::new();
        self.walk(root, &mut plan, &mut seen, 0)
            .with_context(|| format!("reading image {name:?} from {}", self.root.display()))?;
        Ok(plan)
    }

    fn walk(
        &self,
        descriptor: &Descriptor,
        plan: &mut ImagePlan,
        seen: &mut BTreeSet<String>,
        depth: usize,
    ) -> Result<()> {
        if depth > 4 {
            bail!(
                "manifests nested deeper than 4 levels at {}",
                descriptor.digest
            );
        }
        let bytes = self.read_verified(descriptor)?;
        let manifest: ImageManifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing manifest {}", descriptor.digest))?;
        if let Some(children) = &manifest.manifests {
            for child in children {
                self.walk(child, plan, seen, depth + 1)?;
            }
        }
        for blob in manifest.config.iter().chain(&manifest.layers) {
            check_digest(&blob.digest)
                .with_context(|| format!("manifest {}", descriptor.digest))?;
            let path = self.blob_path(&blob.digest);
            let size = std::fs::metadata(&path)
                .with_context(|| format!("blob {} is missing: {}", blob.digest, path.display()))?
                .len();
            if size != blob.size {
                bail!(
                    "blob {} is {size} bytes on disk but manifest {} says {}",
                    blob.digest,
                    descriptor.digest,
                    blob.size
                );
            }
            if seen.insert(blob.digest.clone()) {
                plan.blobs.push(blob.clone());
            }
        }
        plan.manifests.push(ManifestBlob {
            descriptor: descriptor.clone(),
            bytes,
        });
        Ok(())
    }

    /// Reads a (small) manifest blob and checks that its bytes hash to its digest.
    fn read_verified(&self, descriptor: &Descriptor) -> Result<Vec<u8>> {
        check_digest(&descriptor.digest)?;
        let path = self.blob_path(&descriptor.digest);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let actual = sha256_digest(&bytes);
        if actual != descriptor.digest {
            bail!("{} hashes to {actual}, not its name", path.display());
        }
        Ok(bytes)
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut text = String::with_capacity(71);
    text.push_str("sha256:");
    for byte in hash {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// Accepts only `sha256:` followed by 64 lowercase hex digits, so a digest can never name a
/// path outside the layout.
pub fn check_digest(digest: &str) -> Result<()> {
    let hex = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("digest {digest:?} is not sha256"))?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        bail!("digest {digest:?} is not sha256:<64 lowercase hex digits>");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_check_rejects_paths() {
        assert!(check_digest(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(check_digest("sha256:../../etc/passwd").is_err());
        assert!(check_digest(&format!("sha512:{}", "a".repeat(64))).is_err());
    }

    /// A layout with one image `app`: a config blob and a manifest naming it with `size`.
    fn tiny_layout(dir: &Path, config_size_claimed: usize, names: &[&str]) -> String {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).expect("blobs dir");
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("oci-layout");
        let config = b"{}";
        let config_digest = sha256_digest(config);
        std::fs::write(blobs.join(&config_digest[7..]), config).expect("config");
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_size_claimed}}},"layers":[]}}"#
        );
        let digest = sha256_digest(manifest.as_bytes());
        std::fs::write(blobs.join(&digest[7..]), &manifest).expect("manifest");
        let entries: Vec<String> = names
            .iter()
            .map(|name| {
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","size":{},"annotations":{{"{REF_NAME}":"{name}"}}}}"#,
                    manifest.len()
                )
            })
            .collect();
        std::fs::write(
            dir.join("index.json"),
            format!(
                r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
                entries.join(",")
            ),
        )
        .expect("index.json");
        digest
    }

    #[test]
    fn plans_an_image_and_names_what_is_wrong() {
        let dir = tempfile::tempdir().expect("temp dir");
        let digest = tiny_layout(dir.path(), 2, &["app"]);
        let layout = Layout::open(dir.path()).expect("opens");
        let plans = layout.plans(&[]).expect("plans");
        assert_eq!(plans[0].name, "app");
        assert_eq!(plans[0].root().descriptor.digest, digest);
        assert_eq!(plans[0].blobs.len(), 1);
        let missing = layout.plans(&["nope".into()]).expect_err("no such image");
        assert!(
            format!("{missing:#}").contains("\"nope\"") && format!("{missing:#}").contains("app")
        );

        let wrong_size = tempfile::tempdir().expect("temp dir");
        tiny_layout(wrong_size.path(), 3, &["app"]);
        let err = Layout::open(wrong_size.path())
            .expect("opens")
            .plans(&[])
            .expect_err("size");
        assert!(format!("{err:#}").contains("2 bytes on disk"), "{err:#}");

        let twice = tempfile::tempdir().expect("temp dir");
        tiny_layout(twice.path(), 2, &["app", "app"]);
        let err = Layout::open(twice.path()).expect_err("duplicate names");
        assert!(
            format!("{err:#}").contains("two images are named"),
            "{err:#}"
        );

        let empty = tempfile::tempdir().expect("temp dir");
        let err = Layout::open(empty.path()).expect_err("not a layout");
        assert!(format!("{err:#}").contains("oci-layout"), "{err:#}");
    }

    #[test]
    fn sha256_of_empty() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
