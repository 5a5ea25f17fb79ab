//! Reading a `.deb` without dpkg: an `ar` archive whose `data.tar.{xz,zst,gz}` member holds the
//! files. Only that member is read: maintainer scripts (`control.tar.*`) are never extracted or
//! run. The files go to a folder named by the package's sha256, with the list of entries (types,
//! modes, link targets) beside it, so the image step reads metadata from the list, never from the
//! host filesystem.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::sets::DROPPED_EVERYWHERE;
use crate::image::layout::write_atomically;

/// Bump when extraction changes what it keeps, so older extractions are not reused.
const EXTRACT_FORMAT: u32 = 1;

/// What one path of a package is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DebEntryKind {
    Directory,
    File,
    Symlink {
        target: String,
    },
    /// A hard link to another path of the same package (its bytes are that file's).
    Hardlink {
        target: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DebEntry {
    /// The path inside the image, without a leading `/` or `./`.
    pub path: String,
    pub kind: DebEntryKind,
    pub mode: u32,
}

/// An extracted package: its entries and the folder holding the regular files' bytes.
#[derive(Debug, Clone)]
pub struct ExtractedPackage {
    pub root: PathBuf,
    pub entries: Vec<DebEntry>,
}

impl ExtractedPackage {
    /// The host file holding the bytes of regular file `path`.
    pub fn file(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }
}

/// `deb` extracted into `cache_dir/extracted-N/<sha256>` (reused when already there).
pub fn extract_cached(deb: &Path, sha256: &str, cache_dir: &Path) -> Result<ExtractedPackage> {
    let dir = cache_dir
        .join(format!("extracted-{EXTRACT_FORMAT}"))
        .join(sha256);
    let list = dir.join("entries.json");
    let listed = std::fs::read(&list)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Vec<DebEntry>>(&bytes).ok());
    if let Some(entries) = listed {
        return Ok(ExtractedPackage {
            root: dir.join("root"),
            entries,
        });
    }
    let parent = dir.parent().unwrap_or(cache_dir);
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".extract-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a folder in {}", parent.display()))?;
    let entries = extract(deb, &staging.path().join("root"))
        .with_context(|| format!("extracting {}", deb.display()))?;
    write_atomically(
        &staging.path().join("entries.json"),
        &serde_json::to_vec(&entries)?,
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(staging.keep(), &dir)
        .with_context(|| format!("moving the extracted package to {}", dir.display()))?;
    Ok(ExtractedPackage {
        root: dir.join("root"),
        entries,
    })
}

/// Writes the regular files of `deb`'s data member under `into`; returns every kept entry.
pub fn extract(deb: &Path, into: &Path) -> Result<Vec<DebEntry>> {
    let file = std::fs::File::open(deb).with_context(|| format!("reading {}", deb.display()))?;
    let mut archive = ar::Archive::new(file);
    while let Some(member) = archive.next_entry() {
        let mut member = member.context("reading the ar archive")?;
        let name = String::from_utf8_lossy(member.header().identifier()).into_owned();
        if !name.starts_with("data.tar") {
            continue;
        }
        let mut tar_bytes = Vec::new();
        match name.as_str() {
            "data.tar.xz" => lzma_rs::xz_decompress(&mut BufReader::new(member), &mut tar_bytes)
                .map_err(|err| anyhow::anyhow!("{err:?}"))
                .context("decompressing data.tar.xz")?,
            "data.tar.zst" => {
                zstd::stream::read::Decoder::new(member)?
                    .read_to_end(&mut tar_bytes)
                    .context("decompressing data.tar.zst")?;
            }
            "data.tar.gz" => {
                flate2::read::GzDecoder::new(member)
                    .read_to_end(&mut tar_bytes)
                    .context("decompressing data.tar.gz")?;
            }
            "data.tar" => {
                member.read_to_end(&mut tar_bytes)?;
            }
            other => bail!("unknown data member {other:?}"),
        }
        return write_tar(&tar_bytes, into);
    }
    bail!("{} has no data.tar member", deb.display())
}

fn write_tar(tar_bytes: &[u8], into: &Path) -> Result<Vec<DebEntry>> {
    std::fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
    let mut entries = Vec::new();
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries().context("reading data.tar")? {
        let mut entry = entry.context("reading data.tar")?;
        let path = clean(&entry.path()?.to_string_lossy());
        if path.is_empty() || is_dropped_everywhere(&path) {
            continue;
        }
        if path.split('/').any(|part| part == "..") {
            bail!("data.tar entry {path:?} leaves the package root");
        }
        let mode = entry.header().mode()? & 0o7777;
        let link = || -> Result<String> {
            Ok(entry
                .link_name()?
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default())
        };
        let kind = match entry.header().entry_type() {
            tar::EntryType::Directory => DebEntryKind::Directory,
            tar::EntryType::Symlink => DebEntryKind::Symlink { target: link()? },
            tar::EntryType::Link => DebEntryKind::Hardlink {
                target: clean(&link()?),
            },
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let host = into.join(&path);
                if let Some(parent) = host.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let mut out = std::fs::File::create(&host)
                    .with_context(|| format!("writing {}", host.display()))?;
                std::io::copy(&mut entry, &mut out)
                    .with_context(|| format!("writing {}", host.display()))?;
                DebEntryKind::File
            }
            other => bail!("data.tar entry {path:?} has an unsupported type {other:?}"),
        };
        entries.push(DebEntry { path, kind, mode });
    }
    Ok(entries)
}

/// `./usr/lib/` -> `usr/lib`.
fn clean(path: &str) -> String {
    path.trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_owned()
}

fn is_dropped_everywhere(path: &str) -> bool {
    DROPPED_EVERYWHERE
        .iter()
        .any(|prefix| path == *prefix || path.starts_with(&format!("{prefix}/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `.deb` made here: ar with debian-binary, control.tar.gz (a postinst that must never be
    /// extracted) and data.tar.xz.
    pub(crate) fn sample_deb(dir: &Path) -> PathBuf {
        let mut data = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: tar::EntryType, bytes: &[u8], link: Option<&str>| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_size(bytes.len() as u64);
            header.set_mode(if kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            if let Some(link) = link {
                header.set_link_name(link).expect("link");
            }
            header.set_cksum();
            data.append_data(&mut header, path, bytes)
                .expect("tar entry");
        };
        add("./", tar::EntryType::Directory, b"", None);
        add("./etc/", tar::EntryType::Directory, b"", None);
        add(
            "./etc/hello.conf",
            tar::EntryType::Regular,
            b"hello\n",
            None,
        );
        add(
            "./etc/link.conf",
            tar::EntryType::Symlink,
            b"",
            Some("hello.conf"),
        );
        add(
            "./usr/share/doc/hello/copyright",
            tar::EntryType::Regular,
            b"(c)",
            None,
        );
        let data = data.into_inner().expect("tar");
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut data.as_slice(), &mut xz).expect("xz");
        let path = dir.join("hello.deb");
        let mut builder = ar::Builder::new(std::fs::File::create(&path).expect("deb"));
        for (name, bytes) in [
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar.gz", b"postinst would go here".to_vec()),
            ("data.tar.xz", xz),
        ] {
            let header = ar::Header::new(name.as_bytes().to_vec(), bytes.len() as u64);
            builder
                .append(&header, bytes.as_slice())
                .expect("ar member");
        }
        path
    }

    #[test]
    fn extracts_data_only_and_leaves_docs_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deb = sample_deb(dir.path());
        let entries = extract(&deb, &dir.path().join("root")).expect("extract");
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["etc", "etc/hello.conf", "etc/link.conf"]);
        assert_eq!(
            entries[2].kind,
            DebEntryKind::Symlink {
                target: "hello.conf".into()
            }
        );
        let bytes = std::fs::read(dir.path().join("root/etc/hello.conf")).expect("file");
        assert_eq!(bytes, b"hello\n");
    }
}
