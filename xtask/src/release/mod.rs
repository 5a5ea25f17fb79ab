//! `cargo xtask release`: the whole pipeline of DESIGN.md in one command, each step the existing
//! library function of its module:
//!
//! ```text
//! topology -> build + image (image::assemble) -> push (registry::push, with --registry)
//!          -> render (render::render, pinned to the digests) -> SBOMs -> release.json -> bundle
//! ```
//!
//! The bundle is written into a temporary folder beside `--out` and renamed into place, so a
//! reader sees the old bundle or the new one, never half of one. This module owns the order of
//! the steps and the bundle's shape; it never assembles a layer, speaks the registry protocol or
//! writes nginx or compose syntax itself.

pub mod guide;
pub mod manifest;
pub mod sbom;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::build::{Backend, provenance};
use crate::image::command::{CATALOG, ImageArgs, OutputFormat, plan_from_args};
use crate::image::layer::Compression;
use crate::image::layout::{Descriptor, LayoutDir, MANIFEST_MEDIA_TYPE, write_atomically};
use crate::image::{self, ImageReport, docker_archive, elf};
use crate::project;
use crate::registry::client::Transport;
use crate::registry::layout::Layout;
use crate::registry::progress::ProgressMode;
use crate::registry::{self, PushOptions, RegistryTarget};
use crate::render::{self, ImagePins};
use crate::topology::{self, Image, Topology};

use manifest::{Release, ReleasedImage};

/// Where the bundle goes by default. Inside cargo's `target/release` but in a folder of its
/// own, so replacing the bundle never touches cargo's build outputs.
pub const DEFAULT_OUT: &str = "target/release/bundle";

/// The copy of the topology the bundle was rendered from, relative to the bundle.
pub const TOPOLOGY_FILE: &str = "topology.toml";

#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    /// The topology to release: every `build` image it names is built, packed and pinned.
    #[arg(long, default_value = topology::DEFAULT_PATH)]
    topology: PathBuf,
    /// The bundle folder (replaced as a whole).
    #[arg(long, default_value = DEFAULT_OUT)]
    out: PathBuf,
    /// Push to HOST[:PORT]/NAMESPACE and pin the pushed references. Without it the OCI layout and
    /// one docker-archive per image go into the bundle.
    #[arg(long, value_name = "HOST[:PORT]/NAMESPACE")]
    registry: Option<String>,
    /// Tag for every pushed image (repeatable).
    #[arg(long = "tag", value_name = "TAG", default_value = "latest")]
    tags: Vec<String>,
    /// Talk plain HTTP to the registry (local registries only).
    #[arg(long, conflicts_with = "ca_file")]
    plain_http: bool,
    /// Extra CA certificates (PEM) to trust for the registry.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Directory holding a user's own CUDA runtime libraries for inference-cuda; default: the
    /// pinned toolkit of deploy/cuda.lock, whose wheels the SBOM then lists.
    #[arg(long, env = "CAIRN_CUDA_DIR")]
    cuda_dir: Option<PathBuf>,
    /// How the binaries are built (default: nix when it works here, else cargo).
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// A CA bundle for /etc/ssl/certs/ca-certificates.crt; with it the system layer of cairn's
    /// own images comes from this machine's libraries instead of the pinned Debian packages
    /// (deploy/debian.lock), which is the default.
    #[arg(long, value_name = "PEM")]
    ca_bundle: Option<PathBuf>,
}

pub fn run(args: &ReleaseArgs) -> Result<()> {
    let root = project::root();
    let topology_path = root.join(&args.topology);
    // The exact bytes the bundle is rendered from, copied into it as `topology.toml`.
    let topology_bytes = std::fs::read(&topology_path)
        .with_context(|| format!("reading the topology {}", topology_path.display()))?;
    let topology = topology::load(&topology_path)?;
    let names = built_images(&topology, &topology_path)?;
    let out = root.join(&args.out);
    let parent = out
        .parent()
        .with_context(|| format!("--out {} has no parent folder", out.display()))?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".release-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a temporary folder in {}", parent.display()))?;
    let bundle = staging.path();

    // Always the shared layout: its blobs are what lets the layer cache skip unchanged layers.
    let layout_dir = root.join("target").join("oci");
    let image_args = image_args(&root, &names, &layout_dir, args);
    let plan = plan_from_args(&image_args, &root)?;
    let layout = LayoutDir::open(&layout_dir)?;
    let report = image::assemble(&plan, &layout)?;
    eprintln!(
        "images: {} ({} layers compressed this run)",
        names.join(", "),
        report.layers_compressed
    );

    let (references, pins) = match &args.registry {
        Some(registry) => {
            let references = push(args, registry, &layout_dir, &names)?;
            let pins = ImagePins::from_map(&topology, &references)?;
            (references, pins)
        }
        None => {
            copy_layout(&report, &layout, &bundle.join("oci"))?;
            write_archives(&report, &layout, bundle, plan.epoch)?;
            let tags = archive_tags(&report);
            let pins = ImagePins::from_loaded_archives(&topology, &tags)?;
            (tags, pins)
        }
    };

    let pieces = render::read_pieces(&root, &topology_path)?;
    let source = relative(&root, &topology_path);
    let rendering = render::render(&topology, &source, &pins, &pieces)?;
    render::write(&rendering, bundle)?;
    let shipped: Vec<guide::Shipped> = report
        .images
        .iter()
        .map(|image| guide::Shipped {
            name: image.name.clone(),
            reference: references[&image.name].clone(),
            archive: args
                .registry
                .is_none()
                .then(|| format!("images/{}.tar", image.name)),
        })
        .collect();
    let readme = guide::render_guide(
        &topology,
        &source,
        &shipped,
        args.registry.as_deref(),
        &rendering.variables,
    );
    write_atomically(&bundle.join("README.md"), readme.as_bytes())?;
    write_atomically(&bundle.join(TOPOLOGY_FILE), &topology_bytes)?;

    let mut images = Vec::new();
    for (spec, result) in plan.images.iter().zip(&report.images) {
        // The pinned wheels are what a GPU image's CUDA layers hold (unless --cuda-dir).
        let wheels = match (&spec.cuda, &args.cuda_dir) {
            (Some(_), None) => crate::cuda::lock(&root)?.wheels,
            _ => Vec::new(),
        };
        let sbom = write_sbom(&root, bundle, spec, result, &wheels)?;
        images.push(ReleasedImage {
            name: result.name.clone(),
            digest: result.digest.clone(),
            reference: references[&result.name].clone(),
            size: result.compressed_size,
            sbom,
            archive: args
                .registry
                .is_none()
                .then(|| format!("images/{}.tar", result.name)),
        });
    }
    let release = Release {
        revision: provenance::revision(&root),
        toolchain: toolchain(&plan.images)?,
        source_date_epoch: plan.epoch,
        topology: source,
        topology_file: TOPOLOGY_FILE.to_owned(),
        topology_sha256: crate::image::layer::sha256(&topology_bytes),
        registry: args.registry.clone(),
        images,
        servers: topology
            .servers
            .keys()
            .map(|s| format!("server-{s}"))
            .collect(),
    };
    let json = serde_json::to_string_pretty(&release).context("writing release.json")?;
    write_atomically(&bundle.join("release.json"), format!("{json}\n").as_bytes())?;
    replace(staging, &out)?;
    eprintln!("release bundle: {}", out.display());
    Ok(())
}

/// The cairn images `topology` builds, each checked to be one of cairn's images. A GPU image
/// builds anywhere: the pinned CUDA toolkit needs no GPU and no host CUDA.
fn built_images(topology: &Topology, path: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = topology
        .images
        .values()
        .filter_map(|image| match image {
            Image::Build(name) => Some(name.get_ref().clone()),
            Image::Reference(_) => None,
        })
        .collect();
    names.sort();
    names.dedup();
    for name in &names {
        CATALOG
            .iter()
            .find(|i| i.name == name.as_str())
            .with_context(|| {
                format!(
                    "{}: image {name:?} cannot be built: it is not one of cairn's images",
                    path.display()
                )
            })?;
    }
    Ok(names)
}

fn image_args(root: &Path, names: &[String], layout: &Path, args: &ReleaseArgs) -> ImageArgs {
    ImageArgs {
        images: names.to_vec(),
        out: layout.to_path_buf(),
        compression: Compression::Gzip,
        format: OutputFormat::Oci,
        archive: None,
        json: false,
        binaries: Vec::new(),
        launchers: Vec::new(),
        files: Vec::new(),
        trees: Vec::new(),
        programs: Vec::new(),
        env: Vec::new(),
        gpu_images: Vec::new(),
        cuda_dir: args.cuda_dir.clone(),
        cuda_groups: ["cudart", "cublas", "curand", "nvrtc"]
            .map(str::to_owned)
            .to_vec(),
        // None: the system layer comes from the pinned Debian packages (deploy/debian.lock).
        ca_bundle: args.ca_bundle.clone(),
        // One cache for every release, outside the bundle: an unchanged release packs nothing.
        cache_dir: Some(root.join("target").join("oci-cache")),
        backend: args.backend,
    }
}

fn push(
    args: &ReleaseArgs,
    registry: &str,
    layout_dir: &Path,
    names: &[String],
) -> Result<BTreeMap<String, String>> {
    let transport = if args.plain_http {
        Transport::PlainHttp
    } else {
        Transport::Https {
            ca_file: args.ca_file.clone(),
        }
    };
    let mut options = PushOptions::new(RegistryTarget::parse(registry)?, transport);
    options.tags = args.tags.clone();
    options.images = names.to_vec();
    options.progress = ProgressMode::detect();
    let layout = Layout::open(layout_dir)?;
    let report = registry::push(&layout, &options)
        .with_context(|| format!("pushing {} to {registry}", layout_dir.display()))?;
    eprintln!(
        "pushed to {registry}: {} blobs uploaded, {} already there",
        report.blobs_uploaded, report.blobs_present
    );
    Ok(report
        .images
        .into_iter()
        .map(|image| (image.name, image.reference))
        .collect())
}

/// An OCI layout of only the release's images: their blobs copied from `from`, index.json last.
fn copy_layout(report: &ImageReport, from: &LayoutDir, to: &Path) -> Result<()> {
    let layout = LayoutDir::open(to)?;
    let mut named = Vec::new();
    for image in &report.images {
        let digests = image
            .layers
            .iter()
            .map(|layer| &layer.digest)
            .chain([&image.config_digest, &image.digest]);
        for digest in digests {
            let target = layout.blob_path(digest);
            std::fs::copy(from.blob_path(digest), &target)
                .with_context(|| format!("copying blob {digest} into {}", to.display()))?;
        }
        let size = std::fs::metadata(layout.blob_path(&image.digest))
            .with_context(|| format!("reading the manifest of {}", image.name))?
            .len();
        let manifest = Descriptor {
            media_type: MANIFEST_MEDIA_TYPE.into(),
            digest: image.digest.clone(),
            size,
        };
        named.push((image.name.clone(), manifest));
    }
    layout.write_index(&named)?;
    Ok(())
}

/// One docker-archive per image under `images/`, each loadable with `docker load`.
fn write_archives(
    report: &ImageReport,
    layout: &LayoutDir,
    bundle: &Path,
    epoch: u64,
) -> Result<()> {
    for image in &report.images {
        let single = ImageReport {
            images: vec![image.clone()],
            ..report.clone()
        };
        let path = bundle.join("images").join(format!("{}.tar", image.name));
        std::fs::create_dir_all(bundle.join("images")).context("creating images/")?;
        docker_archive::write(&single, layout, &path, epoch)?;
    }
    Ok(())
}

/// Without a registry, compose pins each image by the content tag its docker-archive gives it,
/// `cairn/NAME:manifest-<hex>` ([`docker_archive::content_tag`]). A loaded docker-archive has no
/// repository digest, so `repo@sha256:<manifest>` would make compose pull; the config-digest
/// image ID is unknown to Docker's containerd image store; a tag both stores resolve.
fn archive_tags(report: &ImageReport) -> BTreeMap<String, String> {
    report
        .images
        .iter()
        .map(|image| {
            let tag = docker_archive::content_tag(&image.name, &image.digest);
            (image.name.clone(), tag)
        })
        .collect()
}

fn write_sbom(
    root: &Path,
    bundle: &Path,
    spec: &image::plan::ImageSpec,
    result: &image::ImageResult,
    wheels: &[crate::cuda::lock::PinnedWheel],
) -> Result<String> {
    let entry = CATALOG
        .iter()
        .find(|i| i.name == spec.name)
        .with_context(|| format!("image {} is not in the catalog", spec.name))?;
    let mut crates = match entry.workspace_binary() {
        Some((package, features)) => {
            let features: Vec<String> = features.iter().map(|f| (*f).to_owned()).collect();
            sbom::crates(root, package, &features)
                .with_context(|| format!("listing the crates of {}", spec.name))?
        }
        None => Vec::new(),
    };
    // The launcher (cuda-launch) is a second binary of the image: its crates too, once each.
    if let Some(launcher) = entry.launcher() {
        crates.extend(
            sbom::crates(root, launcher, &[])
                .with_context(|| format!("listing the crates of {launcher} in {}", spec.name))?,
        );
        crates.sort();
        crates.dedup();
    }
    let packages: Vec<sbom::Package> = result
        .debian_packages
        .iter()
        .map(|p| sbom::Package {
            name: p.package.clone(),
            version: p.version.clone(),
        })
        .collect();
    // A host system layer (the Nix backend, a GPU image's CUDA closure): its files, with dpkg's
    // word on them where it knows them.
    let libraries: Vec<sbom::Library> =
        match (&spec.binary, packages.is_empty() || spec.cuda.is_some()) {
            (Some(binary), true) => {
                let extra: Vec<PathBuf> = spec.cuda.iter().map(|c| c.dir.clone()).collect();
                let mut closure = elf::closure(binary, &extra)?;
                if let Some(launcher) = &spec.launcher {
                    for library in elf::closure(launcher, &extra)? {
                        if !closure.iter().any(|l| l.image_path == library.image_path) {
                            closure.push(library);
                        }
                    }
                }
                closure
                    .into_iter()
                    .map(|library| sbom::Library {
                        debian: sbom::debian_package(&library.host_path),
                        image_path: library.image_path,
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
    let mut document = sbom::document(&spec.name, &result.digest, &crates, &packages, &libraries);
    sbom::add_wheels(&mut document, wheels);
    let relative = format!("sbom/{}.cdx.json", spec.name);
    let path = bundle.join(&relative);
    std::fs::create_dir_all(bundle.join("sbom")).context("creating sbom/")?;
    let text = serde_json::to_string_pretty(&document).context("writing an SBOM")?;
    write_atomically(&path, format!("{text}\n").as_bytes())?;
    Ok(relative)
}

/// The Rust toolchain that built the images' binaries, as `rustc -V` prints it, read from the
/// binaries themselves (rustc's `.comment` entry): whichever backend, `RUSTC` or
/// rust-toolchain.toml chose the compiler, this is the one that ran. Binaries of another
/// compiler (none yet) are left out; several Rust versions are all named.
fn toolchain(images: &[image::plan::ImageSpec]) -> Result<String> {
    let mut versions = std::collections::BTreeSet::new();
    for binary in images.iter().filter_map(|spec| spec.binary.as_ref()) {
        if let Some(version) = elf::rustc_version(binary)? {
            versions.insert(version);
        }
    }
    if versions.is_empty() {
        bail!("no binary of the release names the rustc that built it (.comment section)");
    }
    Ok(versions.into_iter().collect::<Vec<_>>().join(", "))
}

/// Moves the staged bundle to `out`, replacing an older bundle there.
fn replace(staging: tempfile::TempDir, out: &Path) -> Result<()> {
    let staged = staging.keep();
    if out.exists() {
        let old = out.with_extension("old");
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(out, &old)
            .with_context(|| format!("moving the old bundle {} aside", out.display()))?;
        std::fs::remove_dir_all(&old)
            .with_context(|| format!("removing the old bundle {}", old.display()))?;
    }
    std::fs::rename(&staged, out)
        .with_context(|| format!("renaming {} to {}", staged.display(), out.display()))
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docker_archive` writes the content tag and `render` checks it, each on its own (render
    /// never depends on the image module): the tag one writes is the tag the other pins.
    #[test]
    fn the_archive_tag_is_what_render_pins() {
        assert_eq!(
            docker_archive::CONTENT_TAG_PREFIX,
            render::images::CONTENT_TAG_PREFIX
        );
        let path = project::root().join("xtask/tests/release_support/gateway.toml");
        let topology = topology::load(&path).expect("the release tests' topology");
        let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
        let tag = docker_archive::content_tag("gateway", &digest);
        assert_eq!(
            tag,
            "cairn/gateway:manifest-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        );
        let tags = BTreeMap::from([("gateway".to_owned(), tag.clone())]);
        let pins = ImagePins::from_loaded_archives(&topology, &tags).expect("pinned");
        assert_eq!(pins.reference("gateway"), tag);
        assert!(render::images::is_content_tag(&tag));
    }
}
