//! The content-addressed layer cache: a layer's key is the hash of everything that decides its
//! bytes (entries, metadata, file contents, compression, timestamp, format version). A hit whose
//! blob is still in the layout is reused without tarring or compressing anything.
//!
//! It never writes blobs; it only remembers which blob a key produced.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::layer::{Compression, EntrySource, LayerPlan, sha256, sha256_file};
use super::layout::{canonical_json, write_atomically};

/// Bump when the tar or compressor settings change, so old entries stop matching.
const FORMAT_VERSION: u32 = 2;

/// What a cached layer produced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CachedLayer {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
}

/// The cache directory (`target/oci-cache` next to the default layout).
#[derive(Debug, Clone)]
pub struct LayerCache {
    pub dir: PathBuf,
}

impl LayerCache {
    /// The key of `plan` under these settings; reads (hashes) every host file the plan names.
    pub fn key(plan: &LayerPlan, compression: Compression, epoch: u64) -> Result<String> {
        let mut entries = Vec::with_capacity(plan.entries.len());
        for (path, entry) in &plan.entries {
            let content = match &entry.source {
                EntrySource::Directory => json!("dir"),
                EntrySource::Symlink(target) => json!({ "symlink": target }),
                EntrySource::Bytes(bytes) => json!({ "bytes": sha256(bytes) }),
                EntrySource::HostFile(host) => json!({ "file": sha256_file(host)? }),
            };
            entries.push(json!([path, entry.mode, entry.uid, entry.gid, content]));
        }
        let input = json!({
            "format": FORMAT_VERSION,
            "compression": compression,
            "epoch": epoch,
            "entries": entries,
        });
        Ok(sha256(&canonical_json(&input)))
    }

    fn entry_path(&self, key: &str) -> PathBuf {
        self.dir
            .join(format!("{}.json", key.trim_start_matches("sha256:")))
    }

    pub fn get(&self, key: &str) -> Option<CachedLayer> {
        let bytes = std::fs::read(self.entry_path(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn put(&self, key: &str, layer: &CachedLayer) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let value: Value = serde_json::to_value(layer)?;
        write_atomically(&self.entry_path(key), &canonical_json(&value))
    }

    /// The default cache directory for a layout at `layout_root`.
    pub fn beside(layout_root: &Path) -> LayerCache {
        let name = layout_root
            .file_name()
            .map(|name| format!("{}-cache", name.to_string_lossy()))
            .unwrap_or_else(|| "oci-cache".to_owned());
        LayerCache {
            dir: layout_root.with_file_name(name),
        }
    }
}
