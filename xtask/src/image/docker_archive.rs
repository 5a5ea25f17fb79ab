//! A tarball that `docker load` accepts: the images of one report as an OCI layout (what Docker
//! 25+ and containerd read) plus Docker's `manifest.json` (what older engines read), with the
//! same blobs, so the loaded image has the digests that were built. Deterministic like layers.
//!
//! Each image gets two names, the same in both files (`RepoTags` in manifest.json, one index.json
//! entry per name with `io.containerd.image.name`): [`content_tag`], derived from the manifest
//! digest, which a release's compose files pin, and [`latest_tag`], for people who load an
//! archive of `cargo xtask image` and run it by hand. Only the content tag's entry carries
//! `org.opencontainers.image.ref.name` (the bare image name, as in every layout cairn writes), so
//! `skopeo … oci-archive:FILE:NAME` still finds exactly one image.
//!
//! It never re-tars or re-compresses a layer; it copies blobs from the layout.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::ImageReport;
use super::layout::{INDEX_MEDIA_TYPE, LayoutDir, MANIFEST_MEDIA_TYPE, REF_NAME, canonical_json};

/// What [`content_tag`] puts before the manifest digest's hex.
pub const CONTENT_TAG_PREFIX: &str = "manifest-";

/// The moving tag an image also gets in Docker: `cairn/<name>:latest` (a later load moves it).
pub fn latest_tag(name: &str) -> String {
    format!("cairn/{name}:latest")
}

/// The content-derived tag an image gets in Docker, `cairn/<name>:manifest-<64 hex>`: the whole
/// hex of the manifest digest (`manifest_digest`, `sha256:<64 hex>`), so what a compose file
/// pins names the exact image that was built, after `docker load`, in both of Docker's image
/// stores (the classic store resolves a tag but no digest of a loaded archive; the containerd
/// store resolves a tag but not the classic store's config-digest image ID).
///
/// Why this form:
/// - all 64 hex digits: a prefix would need an argument about collisions (and a tag is a name
///   an engine overwrites without asking: a collision would silently run the wrong image); the
///   whole digest needs none, and it is the `digest` of `release.json`, so it can be compared by
///   eye or grep. 73 characters stay well inside Docker's 128 for a tag.
/// - `manifest-`, not `sha256-`: `sha256-<64 hex>` is the OCI distribution spec's referrers
///   tag schema (the tag under which a registry without the referrers API keeps the signatures
///   and SBOMs attached to that manifest, as cosign and oras use it), so an image pushed on
///   from such a tag would take the place of its own referrers list. The prefix also says which
///   digest it is: the manifest's, not the config's that the classic store shows as the ID.
pub fn content_tag(name: &str, manifest_digest: &str) -> String {
    format!("cairn/{name}:{CONTENT_TAG_PREFIX}{}", hex(manifest_digest))
}

/// Writes the archive for `report`'s images to `path` (through a temporary file).
pub fn write(report: &ImageReport, layout: &LayoutDir, path: &Path, epoch: u64) -> Result<()> {
    let mut members: BTreeMap<String, Member> = BTreeMap::new();
    let mut docker_manifest = Vec::new();
    let mut index_entries = Vec::new();
    for image in &report.images {
        let manifest_path = format!("blobs/sha256/{}", hex(&image.digest));
        let config_path = format!("blobs/sha256/{}", hex(&image.config_digest));
        let layer_paths: Vec<String> = image
            .layers
            .iter()
            .map(|l| format!("blobs/sha256/{}", hex(&l.digest)))
            .collect();
        for (blob, digest) in [
            (&manifest_path, &image.digest),
            (&config_path, &image.config_digest),
        ]
        .into_iter()
        .chain(
            layer_paths
                .iter()
                .zip(image.layers.iter().map(|l| &l.digest)),
        ) {
            members.insert(blob.clone(), Member::Blob(layout.blob_path(digest)));
        }
        let (content, latest) = (
            content_tag(&image.name, &image.digest),
            latest_tag(&image.name),
        );
        docker_manifest.push(json!({
            "Config": config_path,
            "RepoTags": [content, latest],
            "Layers": layer_paths,
        }));
        let size = std::fs::metadata(layout.blob_path(&image.digest))
            .with_context(|| format!("reading the manifest of {}", image.name))?
            .len();
        // containerd names an imported image by `io.containerd.image.name` (Docker's containerd
        // store passes it on unchanged), fully qualified as it would normalise the tag itself.
        index_entries.push(json!({
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": image.digest,
            "size": size,
            "annotations": {
                REF_NAME: image.name,
                "io.containerd.image.name": format!("docker.io/{content}"),
            },
        }));
        index_entries.push(json!({
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": image.digest,
            "size": size,
            "annotations": {"io.containerd.image.name": format!("docker.io/{latest}")},
        }));
    }
    let index =
        json!({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": index_entries});
    members.insert("index.json".into(), Member::Bytes(canonical_json(&index)));
    members.insert(
        "manifest.json".into(),
        Member::Bytes(canonical_json(&Value::Array(docker_manifest))),
    );
    members.insert(
        "oci-layout".into(),
        Member::Bytes(canonical_json(&json!({"imageLayoutVersion": "1.0.0"}))),
    );
    write_tar(&members, path, epoch)
}

enum Member {
    Blob(std::path::PathBuf),
    Bytes(Vec<u8>),
}

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

fn write_tar(members: &BTreeMap<String, Member>, path: &Path, epoch: u64) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file.reopen()?));
    for dir_name in ["blobs", "blobs/sha256"] {
        let mut header = header(epoch, 0o755);
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        builder.append_data(&mut header, format!("{dir_name}/"), std::io::empty())?;
    }
    for (name, member) in members {
        let mut header = header(epoch, 0o644);
        match member {
            Member::Bytes(bytes) => {
                header.set_size(bytes.len() as u64);
                builder.append_data(&mut header, name, bytes.as_slice())?;
            }
            Member::Blob(blob) => {
                let reader = std::fs::File::open(blob)
                    .with_context(|| format!("reading blob {}", blob.display()))?;
                header.set_size(reader.metadata()?.len());
                builder.append_data(&mut header, name, reader)?;
            }
        }
    }
    let mut out = builder.into_inner()?;
    std::io::Write::flush(&mut out)?;
    drop(out);
    super::layout::make_readable(file.as_file())?;
    file.persist(path)
        .with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

fn header(epoch: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(epoch);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mode(mode);
    header
}
