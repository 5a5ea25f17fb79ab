//! One layer: the list of entries that go into it (`LayerPlan`, a pure value), and writing it as a
//! deterministic tar through a pinned compressor into a blob.
//!
//! Determinism lives here: entries are sorted by path, every parent directory is present, owners,
//! modes and times are fixed, there are no xattrs, no PAX extensions and no host metadata. This
//! module never decides WHAT goes into a layer (that is `plan`), and never names blobs on disk
//! (that is `layout`).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};

/// The mtime of every entry of every layer. Fixed, not SOURCE_DATE_EPOCH: a new commit then
/// changes only the configs (`created`), never a layer whose files did not change, so layers
/// stay shared across releases.
pub const MTIME: u64 = 0;

/// What an entry is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntrySource {
    Directory,
    /// A regular file whose bytes are read from the host at write time.
    HostFile(PathBuf),
    /// A regular file whose bytes are given (passwd, group).
    Bytes(Vec<u8>),
    Symlink(String),
}

/// One path inside the image with its fixed metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    pub source: EntrySource,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

/// How a layer's tar is compressed. Settings are pinned: changing them changes every digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip level 6 through zlib-rs (what every runtime accepts).
    Gzip,
    /// zstd level 3, single-threaded.
    Zstd,
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// The entries of one layer, keyed by their path inside the image (no leading `/`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerPlan {
    /// What the layer is for (`system`, `cuda-cudart`, `app`), shown in reports.
    pub role: String,
    pub entries: BTreeMap<String, LayerEntry>,
}

impl LayerPlan {
    pub fn new(role: &str) -> LayerPlan {
        LayerPlan {
            role: role.to_owned(),
            entries: BTreeMap::new(),
        }
    }

    /// Adds `path` (absolute inside the image) and every missing parent directory (0755, root).
    pub fn insert(&mut self, path: &str, entry: LayerEntry) {
        let path = path.trim_start_matches('/').to_owned();
        let mut parent = Path::new(&path).parent();
        while let Some(dir) = parent.filter(|dir| !dir.as_os_str().is_empty()) {
            let key = dir.to_string_lossy().into_owned();
            self.entries.entry(key).or_insert(LayerEntry {
                source: EntrySource::Directory,
                mode: 0o755,
                uid: 0,
                gid: 0,
            });
            parent = dir.parent();
        }
        self.entries.insert(path, entry);
    }
}

/// A layer written to a temporary file, with the digests the manifest and config need.
#[derive(Debug)]
pub struct WrittenLayer {
    pub file: tempfile::NamedTempFile,
    /// sha256 of the compressed bytes (the blob digest).
    pub digest: String,
    /// sha256 of the uncompressed tar (the config's diff_id).
    pub diff_id: String,
    pub size: u64,
}

/// Writes `plan` as a tar, compressed with `compression`, into a temporary file in `dir`.
pub fn write(
    plan: &LayerPlan,
    compression: Compression,
    epoch: u64,
    dir: &Path,
) -> Result<WrittenLayer> {
    let file = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let blob = HashingWriter::new(io::BufWriter::new(file.reopen()?));
    let (blob, diff_id) = match compression {
        Compression::Gzip => {
            let encoder = flate2::write::GzEncoder::new(blob, flate2::Compression::new(6));
            let (encoder, diff_id) = write_tar(plan, epoch, encoder)?;
            (encoder.finish()?, diff_id)
        }
        Compression::Zstd => {
            let encoder = zstd::stream::write::Encoder::new(blob, 3)?;
            let (encoder, diff_id) = write_tar(plan, epoch, encoder)?;
            (encoder.finish()?, diff_id)
        }
    };
    let (mut inner, digest, size) = blob.finish();
    inner.flush()?;
    Ok(WrittenLayer {
        file,
        digest,
        diff_id,
        size,
    })
}

/// Writes the tar into `out`; returns `out` and the sha256 of the tar bytes.
fn write_tar<W: Write>(plan: &LayerPlan, epoch: u64, out: W) -> Result<(W, String)> {
    let mut builder = tar::Builder::new(HashingWriter::new(out));
    for (path, entry) in &plan.entries {
        append(&mut builder, path, entry, epoch)
            .with_context(|| format!("adding /{path} to the {} layer", plan.role))?;
    }
    let hashing = builder.into_inner()?;
    let (out, diff_id, _) = hashing.finish();
    Ok((out, diff_id))
}

fn append<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &str,
    entry: &LayerEntry,
    epoch: u64,
) -> Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_mtime(epoch);
    header.set_uid(entry.uid);
    header.set_gid(entry.gid);
    header.set_mode(entry.mode);
    header.set_username("")?;
    header.set_groupname("")?;
    match &entry.source {
        EntrySource::Directory => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder.append_data(&mut header, format!("{path}/"), io::empty())?;
        }
        EntrySource::Symlink(target) => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            builder.append_link(&mut header, path, target)?;
        }
        EntrySource::Bytes(bytes) => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(bytes.len() as u64);
            builder.append_data(&mut header, path, bytes.as_slice())?;
        }
        EntrySource::HostFile(host) => {
            let file =
                std::fs::File::open(host).with_context(|| format!("reading {}", host.display()))?;
            let size = file.metadata()?.len();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(size);
            builder.append_data(&mut header, path, file.take(size))?;
        }
    }
    Ok(())
}

/// Passes bytes through to `inner` while hashing and counting them.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> HashingWriter<W> {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Returns the inner writer, `sha256:<hex>` and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{:x}", self.hasher.finalize());
        (self.inner, digest, self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.count += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// `sha256:<hex>` of a host file's bytes, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = HashingWriter::new(io::sink());
    io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(hasher.finish().1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LayerPlan {
        let mut plan = LayerPlan::new("test");
        plan.insert(
            "/etc/passwd",
            LayerEntry {
                source: EntrySource::Bytes(b"root:x:0:0::/:/sbin/nologin\n".to_vec()),
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
        );
        plan.insert(
            "/tmp",
            LayerEntry {
                source: EntrySource::Directory,
                mode: 0o1777,
                uid: 0,
                gid: 0,
            },
        );
        plan
    }

    #[test]
    fn parents_are_added_and_entries_sorted() {
        let keys: Vec<_> = sample().entries.keys().cloned().collect();
        assert_eq!(keys, ["etc", "etc/passwd", "tmp"]);
    }

    #[test]
    fn same_plan_gives_the_same_pinned_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = write(&sample(), Compression::Gzip, 0, dir.path()).expect("write");
        let second = write(&sample(), Compression::Gzip, 0, dir.path()).expect("write");
        assert_eq!(first.digest, second.digest);
        assert_eq!(first.diff_id, second.diff_id);
        // Golden digests: a change of tar layout or compressor backend shows up here.
        assert_eq!(
            first.diff_id,
            "sha256:65ee4ece2c4aea4236a4614a186fbc61507e07f4b238b8284e016d2068e014fc"
        );
        assert_eq!(
            first.digest,
            "sha256:5f44d3a4eea7ae07046dc01da9056da43b7bb0a58e00381f5cc5b126e92e99d1"
        );
        let zstd = write(&sample(), Compression::Zstd, 0, dir.path()).expect("write");
        assert_eq!(zstd.diff_id, first.diff_id);
        assert_eq!(
            zstd.digest,
            "sha256:8d281f77d454f990f2260e58cb667653f19c28af0343b7760ca9d3544b85fc38"
        );
    }

    #[test]
    fn tar_keeps_sticky_tmp_and_fixed_owners() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layer = write(&sample(), Compression::Gzip, 1_700_000_000, dir.path()).expect("write");
        let file = std::fs::File::open(layer.file.path()).expect("open");
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let mut seen = Vec::new();
        for entry in archive.entries().expect("entries") {
            let entry = entry.expect("entry");
            let header = entry.header();
            assert_eq!(header.mtime().expect("mtime"), 1_700_000_000);
            assert_eq!(header.uid().expect("uid"), 0);
            seen.push((
                entry.path().expect("path").to_string_lossy().into_owned(),
                header.mode().expect("mode"),
            ));
        }
        assert_eq!(
            seen,
            [
                ("etc/".to_owned(), 0o755),
                ("etc/passwd".to_owned(), 0o644),
                ("tmp/".to_owned(), 0o1777)
            ]
        );
    }
}
