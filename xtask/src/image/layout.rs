//! The OCI image layout on disk (`oci-layout`, `blobs/sha256/…`, `index.json`), written so that an
//! interrupted run always leaves the previous layout valid: every file goes through a temporary
//! file in the layout and a rename, blobs before the manifests that name them, index.json last.
//! Also the one canonical JSON encoding (sorted keys, no whitespace) used for every document that
//! is hashed.
//!
//! It never decides what an image contains; it stores bytes and names them by digest.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};

use super::layer::sha256;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    pub fn to_json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// An image layout directory (`target/oci` by default).
#[derive(Debug, Clone)]
pub struct LayoutDir {
    pub root: PathBuf,
}

impl LayoutDir {
    /// Opens `root`, creating it and its `oci-layout` marker when missing.
    pub fn open(root: &Path) -> Result<LayoutDir> {
        let layout = LayoutDir {
            root: root.to_owned(),
        };
        std::fs::create_dir_all(layout.blob_dir())
            .with_context(|| format!("creating {}", layout.blob_dir().display()))?;
        let marker = root.join("oci-layout");
        if !marker.exists() {
            write_atomically(
                &marker,
                &canonical_json(&json!({"imageLayoutVersion": "1.0.0"})),
            )?;
        }
        Ok(layout)
    }

    pub fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    /// The path of the blob `sha256:<hex>`.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.blob_dir().join(digest.trim_start_matches("sha256:"))
    }

    /// True when the blob is present with the expected size.
    pub fn has_blob(&self, digest: &str, size: u64) -> bool {
        std::fs::metadata(self.blob_path(digest)).is_ok_and(|meta| meta.len() == size)
    }

    /// Stores `bytes` as a blob (skipped when present) and describes it.
    pub fn put_bytes(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
        let digest = sha256(bytes);
        let size = bytes.len() as u64;
        if !self.has_blob(&digest, size) {
            write_atomically(&self.blob_path(&digest), bytes)?;
        }
        Ok(Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size,
        })
    }

    /// Moves a finished temporary file into place as the blob `digest`.
    pub fn put_file(&self, file: tempfile::NamedTempFile, digest: &str) -> Result<()> {
        let target = self.blob_path(digest);
        make_readable(file.as_file())?;
        file.as_file().sync_all()?;
        file.persist(&target)
            .with_context(|| format!("renaming a layer into {}", target.display()))?;
        Ok(())
    }

    /// The manifests named in index.json now (empty for a new layout).
    pub fn read_index(&self) -> Result<Vec<Value>> {
        let path = self.root.join("index.json");
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let index: Value = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        Ok(index["manifests"].as_array().cloned().unwrap_or_default())
    }

    /// Writes index.json: the manifests of `images` replace those with the same ref name, the
    /// others are kept, and entries are sorted by ref name.
    pub fn write_index(&self, images: &[(String, Descriptor)]) -> Result<Vec<u8>> {
        let mut manifests: Vec<Value> = self
            .read_index()?
            .into_iter()
            .filter(|entry| {
                let name = entry["annotations"][REF_NAME].as_str();
                !images.iter().any(|(image, _)| Some(image.as_str()) == name)
            })
            .collect();
        for (name, descriptor) in images {
            let mut entry = descriptor.to_json();
            entry["annotations"] = json!({ REF_NAME: name });
            entry["platform"] = json!({"architecture": "amd64", "os": "linux"});
            manifests.push(entry);
        }
        manifests.sort_by_key(|entry| entry["annotations"][REF_NAME].as_str().map(str::to_owned));
        let index = json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": manifests,
        });
        let bytes = canonical_json(&index);
        write_atomically(&self.root.join("index.json"), &bytes)?;
        Ok(bytes)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    file.write_all(bytes)
        .and_then(|()| make_readable(file.as_file()))
        .and_then(|()| file.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    file.persist(path)
        .with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

/// Gives a finished temporary file (created 0600) the mode of any build output, 0644, before it
/// is renamed into place: a layout or archive is read by other users and tools.
pub fn make_readable(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
}

/// JSON with object keys sorted at every level and no insignificant whitespace, whatever
/// serde_json's map ordering feature is.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    serde_json::to_vec(&sorted(value)).unwrap_or_default()
}

fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for key in keys {
                out.insert(key.clone(), sorted(&map[key]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_are_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("index.json");
        write_atomically(&path, b"{}").expect("write");
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn canonical_json_sorts_keys_without_spaces() {
        let value = json!({"b": 1, "a": {"z": [1, {"y": 2, "x": 3}], "c": "d"}});
        assert_eq!(
            String::from_utf8(canonical_json(&value)).expect("utf8"),
            r#"{"a":{"c":"d","z":[1,{"x":3,"y":2}]},"b":1}"#
        );
    }

    #[test]
    fn index_keeps_other_images_and_sorts_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = LayoutDir::open(dir.path()).expect("layout");
        let first = layout.put_bytes(MANIFEST_MEDIA_TYPE, b"{}").expect("blob");
        let second = layout
            .put_bytes(MANIFEST_MEDIA_TYPE, b"{\"a\":1}")
            .expect("blob");
        layout
            .write_index(&[("gateway".into(), first.clone())])
            .expect("index");
        layout
            .write_index(&[("api".into(), second.clone())])
            .expect("index");
        let names: Vec<String> = layout
            .read_index()
            .expect("read")
            .iter()
            .map(|e| {
                e["annotations"][REF_NAME]
                    .as_str()
                    .expect("name")
                    .to_owned()
            })
            .collect();
        assert_eq!(names, ["api", "gateway"]);
        assert!(layout.has_blob(&first.digest, 2));
    }
}
