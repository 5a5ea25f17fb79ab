//! The one image assembler. `assemble` takes an `ImagePlan` (binaries and files from anywhere: a
//! cargo build, a Nix store closure) and writes every image into one OCI layout; the `cargo xtask
//! image` command (in `command`) only turns the command line and a build into a plan.
//!
//! Submodules: `elf` (the shared-library closure), `cuda` (CUDA library groups), `plan` (what
//! goes where, pure), `layer` (deterministic tar + pinned compressor), `cache` (skip unchanged
//! layers), `layout` (blobs, canonical JSON, index.json last), `docker_archive` (a `docker load`
//! tarball of the layout). This module never builds binaries and never talks to a registry.

pub mod cache;
pub mod catalog;
pub mod command;
pub mod cuda;
pub mod docker_archive;
pub mod elf;
pub mod layer;
pub mod layout;
pub mod packages;
pub mod plan;
pub mod site;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::json;

use crate::debian::{self, PinnedSet, tree};
use cache::{CachedLayer, LayerCache};
use layer::{Compression, EntrySource, LayerPlan};
use layout::{CONFIG_MEDIA_TYPE, Descriptor, LayoutDir, MANIFEST_MEDIA_TYPE, canonical_json};
use packages::DebianPackage;
use plan::ImageSpec;

/// Where the system layer of a service image comes from.
#[derive(Debug, Clone)]
pub enum SystemFiles {
    /// This machine (or a Nix store closure): the binary's ELF closure as found here, and this
    /// CA bundle file.
    Host { ca_bundle: PathBuf },
    /// The pinned Debian base set: the closure resolved inside its packages (symbol versions
    /// checked), the CA bundle built from its ca-certificates.
    Debian(PinnedSet),
}

/// Everything the assembler needs.
#[derive(Debug, Clone)]
pub struct ImagePlan {
    pub images: Vec<ImageSpec>,
    /// The system layer of service images.
    pub system: SystemFiles,
    /// The package sets of images made of Debian packages, by set name.
    pub debian_sets: BTreeMap<String, PinnedSet>,
    pub compression: Compression,
    /// SOURCE_DATE_EPOCH: the `created` fields (layer mtimes are `layer::MTIME`).
    pub epoch: u64,
    pub cache: LayerCache,
}

/// One layer of a written image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerReport {
    pub role: String,
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    /// False when the cache supplied it (nothing was tarred or compressed).
    pub compressed: bool,
}

/// One written image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageResult {
    pub name: String,
    /// The manifest digest (what a registry and compose files name).
    pub digest: String,
    pub config_digest: String,
    /// Compressed layers + config + manifest, the bytes a pull transfers.
    pub compressed_size: u64,
    pub layers: Vec<LayerReport>,
    /// The Debian packages whose files are in the image (empty for a host system layer).
    pub debian_packages: Vec<DebianPackage>,
}

/// What `assemble` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageReport {
    pub layout: PathBuf,
    pub index_digest: String,
    pub images: Vec<ImageResult>,
    /// How many layers were tarred and compressed in this run (0 for a no-op re-run).
    pub layers_compressed: usize,
}

/// Writes every image of `plan` into `layout`; index.json is written last.
pub fn assemble(plan: &ImagePlan, layout: &LayoutDir) -> Result<ImageReport> {
    let created =
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(plan.epoch)).to_string();
    let mut images = Vec::with_capacity(plan.images.len());
    for spec in &plan.images {
        let image = assemble_image(plan, spec, &created, layout)
            .with_context(|| format!("assembling image {}", spec.name))?;
        images.push(image);
    }
    let named: Vec<(String, Descriptor)> = images
        .iter()
        .map(|image| {
            let manifest = Descriptor {
                media_type: MANIFEST_MEDIA_TYPE.into(),
                digest: image.digest.clone(),
                size: std::fs::metadata(layout.blob_path(&image.digest))
                    .map(|m| m.len())
                    .unwrap_or(0),
            };
            (image.name.clone(), manifest)
        })
        .collect();
    let index = layout.write_index(&named)?;
    let layers_compressed = images
        .iter()
        .flat_map(|image| &image.layers)
        .filter(|layer| layer.compressed)
        .count();
    Ok(ImageReport {
        layout: layout.root.clone(),
        index_digest: layer::sha256(&index),
        images,
        layers_compressed,
    })
}

/// The layers of one image and the Debian packages they hold.
#[derive(Debug, Clone)]
pub struct PlannedImage {
    pub layers: Vec<LayerPlan>,
    pub debian_packages: BTreeSet<DebianPackage>,
}

/// The layers of `spec` in their fixed order: an image of packages gets its package layers,
/// then system and app; a service gets system, CUDA groups, app.
pub fn plan_layers(spec: &ImageSpec, plan: &ImagePlan) -> Result<PlannedImage> {
    if let Some(binary) = &spec.binary {
        std::fs::File::open(binary)
            .with_context(|| format!("reading binary {}", binary.display()))?;
    }
    for program in &spec.programs {
        std::fs::File::open(&program.host_path).with_context(|| {
            format!(
                "reading program {} (for {})",
                program.host_path.display(),
                program.image_path
            )
        })?;
    }
    match &spec.debian_set {
        Some(set) => {
            let pinned = plan
                .debian_sets
                .get(set)
                .with_context(|| format!("package set {set} was not loaded"))?;
            package_image_layers(spec, pinned)
        }
        None => service_layers(spec, &plan.system),
    }
}

fn package_image_layers(spec: &ImageSpec, pinned: &PinnedSet) -> Result<PlannedImage> {
    // Every program and module of the packages, and cairn's helper, must find what it links
    // against inside the image, at the symbol versions it needs.
    let mut roots: Vec<(String, PathBuf, String)> = Vec::new();
    for path in pinned.tree.elf_files()? {
        if let Some(tree::TreeKind::File(host)) = pinned.tree.entries.get(&path).map(|e| &e.kind) {
            roots.push((format!("/{path}"), host.clone(), path.clone()));
        }
    }
    if let Some(binary) = &spec.binary {
        roots.extend(elf_roots(spec, binary));
    }
    tree::closure(&pinned.tree, &roots)
        .with_context(|| format!("checking the files of package set {}", pinned.set.name))?;
    let mut layers = packages::package_layers(pinned)?;
    layers.push(plan::system_layer(Vec::new(), None));
    layers.push(plan::app_layer(spec));
    Ok(PlannedImage {
        layers,
        debian_packages: packages::all_packages(pinned),
    })
}

/// cairn's executables of an image as closure roots (label, host path, image path): the binary,
/// and its launcher when it has one.
fn elf_roots(spec: &ImageSpec, binary: &Path) -> Vec<(String, PathBuf, String)> {
    let mut roots = vec![(
        binary.display().to_string(),
        binary.to_owned(),
        plan::binary_path(spec),
    )];
    if let Some(launcher) = &spec.launcher {
        roots.push((
            launcher.display().to_string(),
            launcher.clone(),
            format!("{}/{}", plan::BIN_DIR, spec.binary_name),
        ));
    }
    roots
}

/// Adds the libraries of `more` (the launcher's closure) that `libraries` lacks; the same image
/// path from two different host files is an error naming both.
fn merge_closure(
    libraries: &mut Vec<elf::SharedLibrary>,
    more: Vec<elf::SharedLibrary>,
    launcher: &Path,
) -> Result<()> {
    for library in more {
        match libraries
            .iter()
            .find(|known| known.image_path == library.image_path)
        {
            Some(known) if known.host_path != library.host_path => anyhow::bail!(
                "launcher {} needs {} from {}, but the binary's closure packs {} there",
                launcher.display(),
                library.image_path,
                library.host_path.display(),
                known.host_path.display()
            ),
            Some(_) => {}
            None => libraries.push(library),
        }
    }
    Ok(())
}

fn service_layers(spec: &ImageSpec, system: &SystemFiles) -> Result<PlannedImage> {
    // The executables whose ELF closure the image needs: cairn's binary and the programs.
    let roots: Vec<&PathBuf> = spec
        .binary
        .iter()
        .chain(spec.programs.iter().map(|program| &program.host_path))
        .collect();
    let binary = *roots
        .first()
        .with_context(|| format!("image {} has neither a binary nor a package set", spec.name))?;
    if !spec.programs.is_empty() && matches!(system, SystemFiles::Debian(_)) {
        anyhow::bail!(
            "image {}: programs from this machine (--program) need the system layer from this \
             machine too (--ca-bundle), not from the pinned Debian base set",
            spec.name
        );
    }
    let cuda_dirs: Vec<PathBuf> = spec.cuda.iter().map(|cuda| cuda.dir.clone()).collect();
    let host_closure = || -> Result<_> {
        let mut libraries: Vec<elf::SharedLibrary> = Vec::new();
        for root in &roots {
            for library in elf::closure(root, &cuda_dirs)
                .with_context(|| format!("reading the ELF closure of {}", root.display()))?
            {
                if !libraries.iter().any(|l| l.image_path == library.image_path) {
                    libraries.push(library);
                }
            }
        }
        if let Some(launcher) = &spec.launcher {
            merge_closure(
                &mut libraries,
                elf::closure(launcher, &cuda_dirs)?,
                launcher,
            )?;
        }
        Ok(libraries.into_iter().partition::<Vec<_>, _>(|lib| {
            cuda_dirs.iter().any(|dir| lib.host_path.starts_with(dir))
        }))
    };
    let mut debian_packages = BTreeSet::new();
    let (cuda_libraries, system_entries, ca_bundle) = match system {
        SystemFiles::Host { ca_bundle } => {
            std::fs::File::open(ca_bundle)
                .with_context(|| format!("reading CA bundle {}", ca_bundle.display()))?;
            let (cuda, rest) = host_closure()?;
            let entries = plan::host_library_entries(&rest);
            (cuda, entries, EntrySource::HostFile(ca_bundle.clone()))
        }
        SystemFiles::Debian(base) => {
            let bundle = debian::ca_bundle(&base.tree)?;
            debian_packages.extend(
                base.packages
                    .iter()
                    .filter(|p| p.package == "ca-certificates")
                    .map(|p| DebianPackage {
                        package: p.package.clone(),
                        version: p.version.clone(),
                    }),
            );
            if spec.cuda.is_some() {
                // GPU images: the CUDA libraries' own closure is taken from this machine until
                // the CUDA runtime comes from pinned packages too.
                let (cuda, rest) = host_closure()?;
                (
                    cuda,
                    plan::host_library_entries(&rest),
                    EntrySource::Bytes(bundle),
                )
            } else {
                let roots = elf_roots(spec, binary);
                let closure = tree::closure(&base.tree, &roots).with_context(|| {
                    format!(
                        "finding the libraries of {} in the pinned Debian packages",
                        spec.name
                    )
                })?;
                let (entries, used) = packages::closure_entries(&base.tree, &closure.paths);
                debian_packages.extend(used);
                (Vec::new(), entries, EntrySource::Bytes(bundle))
            }
        }
    };
    let mut layers = vec![plan::system_layer(system_entries, Some(ca_bundle))];
    if let Some(cuda) = &spec.cuda {
        for group in &cuda.groups {
            layers.push(cuda::plan_group(&cuda.dir, *group)?);
        }
        let packed = |lib: &elf::SharedLibrary| {
            let name = lib
                .host_path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            layers
                .iter()
                .any(|layer| layer.entries.keys().any(|key| key.ends_with(&name)))
        };
        if let Some(missing) = cuda_libraries.iter().find(|lib| !packed(lib)) {
            anyhow::bail!(
                "{} needs {} from the CUDA directory, which no CUDA library group of image {} packs",
                binary.display(),
                missing.host_path.display(),
                spec.name
            );
        }
    }
    let mut app = plan::app_layer(spec);
    // A file the system layer already packs (a library of a store path given whole as a tree)
    // is not packed twice.
    let system_layer = &layers[0];
    app.entries.retain(|path, entry| {
        matches!(entry.source, EntrySource::Directory) || !system_layer.entries.contains_key(path)
    });
    layers.push(app);
    Ok(PlannedImage {
        layers,
        debian_packages,
    })
}

fn assemble_image(
    plan: &ImagePlan,
    spec: &ImageSpec,
    created: &str,
    layout: &LayoutDir,
) -> Result<ImageResult> {
    let planned = plan_layers(spec, plan)?;
    let layer_plans = planned.layers;
    // Layers are independent: compress them on all cores at once, keep their order.
    let layers = std::thread::scope(|scope| {
        let workers: Vec<_> = layer_plans
            .iter()
            .map(|layer_plan| scope.spawn(|| write_layer(plan, layer_plan, layout)))
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let config = layout.put_bytes(
        CONFIG_MEDIA_TYPE,
        &canonical_json(&plan::config(spec, created, &diff_ids)),
    )?;
    let media_type = plan.compression.media_type();
    let layer_descriptors: Vec<_> = layers
        .iter()
        .map(|l| json!({"mediaType": media_type, "digest": l.digest, "size": l.size}))
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config.to_json(),
        "layers": layer_descriptors,
    });
    let manifest = layout.put_bytes(MANIFEST_MEDIA_TYPE, &canonical_json(&manifest))?;
    let compressed_size = layers.iter().map(|l| l.size).sum::<u64>() + config.size + manifest.size;
    Ok(ImageResult {
        name: spec.name.clone(),
        digest: manifest.digest,
        config_digest: config.digest,
        compressed_size,
        layers,
        debian_packages: planned.debian_packages.into_iter().collect(),
    })
}

/// Reuses a cached layer whose blob is present, or tars, compresses and stores it.
fn write_layer(
    plan: &ImagePlan,
    layer_plan: &LayerPlan,
    layout: &LayoutDir,
) -> Result<LayerReport> {
    let key = LayerCache::key(layer_plan, plan.compression, layer::MTIME)?;
    if let Some(hit) = plan
        .cache
        .get(&key)
        .filter(|hit| layout.has_blob(&hit.digest, hit.size))
    {
        return Ok(LayerReport {
            role: layer_plan.role.clone(),
            digest: hit.digest,
            diff_id: hit.diff_id,
            size: hit.size,
            compressed: false,
        });
    }
    let written = layer::write(layer_plan, plan.compression, layer::MTIME, &layout.root)?;
    let cached = CachedLayer {
        digest: written.digest.clone(),
        diff_id: written.diff_id.clone(),
        size: written.size,
    };
    layout.put_file(written.file, &cached.digest)?;
    plan.cache.put(&key, &cached)?;
    Ok(LayerReport {
        role: layer_plan.role.clone(),
        digest: cached.digest,
        diff_id: cached.diff_id,
        size: cached.size,
        compressed: true,
    })
}
