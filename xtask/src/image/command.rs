//! `cargo xtask image [IMAGE…]`: turns the command line and a build into an `ImagePlan`, calls
//! `assemble`, prints the table (or `--json`) and, with `--format docker-archive`, writes the
//! tarball. The catalog of cairn's images (which package, port and CUDA needs) lives here.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::cache::LayerCache;
use super::layer::Compression;
use super::layout::LayoutDir;
use super::plan::{CudaInput, ExtraFile, ImageSpec, Provenance};
use super::{ImagePlan, ImageReport, assemble, cuda, docker_archive};
use crate::build::{self, Backend, BuildRequest, provenance};
use crate::project;

/// One of cairn's images.
#[derive(Debug, Clone, Copy)]
pub struct CatalogImage {
    pub name: &'static str,
    pub package: &'static str,
    pub features: &'static [&'static str],
    pub port: u16,
    pub gpu: bool,
}

pub const CATALOG: &[CatalogImage] = &[
    CatalogImage {
        name: "gateway",
        package: "gateway",
        features: &[],
        port: 8080,
        gpu: false,
    },
    CatalogImage {
        name: "api",
        package: "api",
        features: &[],
        port: 8000,
        gpu: false,
    },
    CatalogImage {
        name: "inference",
        package: "inference",
        features: &[],
        port: 8001,
        gpu: false,
    },
    CatalogImage {
        name: "inference-cuda",
        package: "inference",
        features: &["cuda"],
        port: 8001,
        gpu: true,
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// The OCI image layout only.
    Oci,
    /// The layout and a tarball `docker load` accepts.
    DockerArchive,
}

#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// Images to write (default: the `--binary` images when any are given, else every service
    /// that exists, inference-cuda only with --cuda-dir).
    pub images: Vec<String>,
    /// The OCI layout directory.
    #[arg(long, default_value = "target/oci")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = Compression::Gzip)]
    pub compression: Compression,
    #[arg(long, value_enum, default_value_t = OutputFormat::Oci)]
    pub format: OutputFormat,
    /// Where --format docker-archive writes the tarball (default: `<out>.tar`).
    #[arg(long)]
    pub archive: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// `IMAGE=PATH`: use this binary instead of building it (a Nix store path, a prebuilt file).
    /// An IMAGE outside the catalog makes an image for any binary.
    #[arg(long = "binary", value_name = "IMAGE=PATH")]
    pub binaries: Vec<String>,
    /// `IMAGE=HOST_PATH:/IMAGE/PATH`: an extra file in the image's application layer.
    #[arg(long = "file", value_name = "IMAGE=HOST:/PATH")]
    pub files: Vec<String>,
    /// Treat IMAGE (a `--binary` image outside the catalog) as a GPU image with CUDA layers.
    #[arg(long = "gpu", value_name = "IMAGE")]
    pub gpu_images: Vec<String>,
    /// Directory holding the CUDA runtime libraries for GPU images (a user's own CUDA); default:
    /// the pinned toolkit's `lib64` (`cargo xtask cuda install`).
    #[arg(long, env = "CAIRN_CUDA_DIR")]
    pub cuda_dir: Option<PathBuf>,
    /// CUDA library groups GPU images pack, one layer each.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cudart,cublas,curand,nvrtc"
    )]
    pub cuda_groups: Vec<String>,
    #[arg(long, default_value = "/etc/ssl/certs/ca-certificates.crt")]
    pub ca_bundle: PathBuf,
    /// Layer cache directory (default: `<out>-cache`).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// How the binaries to pack are built (default: nix when it works here, else cargo).
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
}

pub fn run(args: &ImageArgs) -> Result<()> {
    let root = project::root();
    let out = root.join(&args.out);
    let plan = plan_from_args(args, &root)?;
    let layout = LayoutDir::open(&out)?;
    let report = assemble(&plan, &layout)?;
    if args.format == OutputFormat::DockerArchive {
        let archive = args
            .archive
            .clone()
            .map(|path| root.join(path))
            .unwrap_or_else(|| out.with_extension("tar"));
        docker_archive::write(&report, &layout, &archive, plan.epoch)?;
        eprintln!("docker archive: {}", archive.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// The report as the table the command prints.
pub fn table(report: &ImageReport) -> String {
    let mut text = format!(
        "{:<16} {:<73} {:>10} {:>7}\n",
        "IMAGE", "DIGEST", "SIZE", "LAYERS"
    );
    for image in &report.images {
        text.push_str(&format!(
            "{:<16} {:<73} {:>10} {:>7}\n",
            image.name,
            image.digest,
            human_size(image.compressed_size),
            image.layers.len()
        ));
    }
    text.push_str(&format!(
        "layout {} ({} layers compressed this run)\n",
        report.layout.display(),
        report.layers_compressed
    ));
    text
}

fn human_size(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1_000_000.0)
}

/// The images to write, the binaries to build, and the plan.
pub fn plan_from_args(args: &ImageArgs, root: &Path) -> Result<ImagePlan> {
    let given = parse_pairs(&args.binaries, "--binary")?;
    let names = selected_images(args, root, &given)?;
    let to_build: Vec<(String, BuildRequest)> = names
        .iter()
        .filter(|name| !given.iter().any(|(image, _)| image == *name))
        .filter_map(|name| catalog(name).map(|entry| (name.clone(), request(entry))))
        .collect();
    let requests: Vec<BuildRequest> = to_build.iter().map(|(_, r)| r.clone()).collect();
    let built = if requests.is_empty() {
        Vec::new()
    } else {
        build::build(build::choose(args.backend), &requests)?
    };
    let mut images = Vec::new();
    for name in &names {
        let (binary, version) = match given.iter().find(|(image, _)| image == name) {
            Some((_, path)) => (
                PathBuf::from(path),
                std::env::var("CAIRN_VERSION").unwrap_or_else(|_| "0.0.0".into()),
            ),
            None => {
                let entry = catalog(name).with_context(|| format!("unknown image {name:?}"))?;
                let binary = built
                    .iter()
                    .find(|b| b.package == entry.package && b.features == request(entry).features)
                    .with_context(|| format!("no binary was built for {name}"))?;
                (binary.path.clone(), binary.version.clone())
            }
        };
        images.push(spec(args, root, name, binary, version)?);
    }
    let out = root.join(&args.out);
    Ok(ImagePlan {
        images,
        ca_bundle: args.ca_bundle.clone(),
        compression: args.compression,
        epoch: provenance::source_date_epoch()?,
        cache: args
            .cache_dir
            .clone()
            .map(|dir| LayerCache {
                dir: root.join(dir),
            })
            .unwrap_or_else(|| LayerCache::beside(&out)),
    })
}

fn catalog(name: &str) -> Option<CatalogImage> {
    CATALOG.iter().copied().find(|image| image.name == name)
}

fn request(entry: CatalogImage) -> BuildRequest {
    BuildRequest {
        package: entry.package.into(),
        bin: entry.package.into(),
        features: entry.features.iter().map(|f| (*f).to_owned()).collect(),
    }
}

fn selected_images(
    args: &ImageArgs,
    root: &Path,
    given: &[(String, String)],
) -> Result<Vec<String>> {
    if !args.images.is_empty() {
        for name in &args.images {
            if catalog(name).is_none() && !given.iter().any(|(image, _)| image == name) {
                let known: Vec<&str> = CATALOG.iter().map(|i| i.name).collect();
                bail!(
                    "unknown image {name:?}: known images are {}, or name a binary with --binary {name}=PATH",
                    known.join(", ")
                );
            }
        }
        return Ok(args.images.clone());
    }
    if !given.is_empty() {
        return Ok(given.iter().map(|(image, _)| image.clone()).collect());
    }
    let names: Vec<String> = CATALOG
        .iter()
        .filter(|image| {
            root.join("services")
                .join(image.package)
                .join("Cargo.toml")
                .exists()
        })
        .filter(|image| !image.gpu || args.cuda_dir.is_some())
        .map(|image| image.name.to_owned())
        .collect();
    if names.is_empty() {
        bail!(
            "no image to write: no service under {}/services and no --binary given",
            root.display()
        );
    }
    Ok(names)
}

fn spec(
    args: &ImageArgs,
    root: &Path,
    name: &str,
    binary: PathBuf,
    version: String,
) -> Result<ImageSpec> {
    let entry = catalog(name);
    let binary_name = match entry {
        Some(entry) => entry.package.to_owned(),
        None => binary
            .file_name()
            .with_context(|| format!("--binary {name}={} names no file", binary.display()))?
            .to_string_lossy()
            .into_owned(),
    };
    let gpu = entry.is_some_and(|e| e.gpu) || args.gpu_images.iter().any(|g| g == name);
    let cuda = match gpu {
        false => None,
        true => {
            let dir = match args.cuda_dir.clone() {
                Some(dir) => dir,
                None => crate::cuda::toolkit()
                    .with_context(|| format!("image {name} needs the pinned CUDA libraries"))?
                    .library_dir(),
            };
            let groups = args
                .cuda_groups
                .iter()
                .map(|g| cuda::group(g))
                .collect::<Result<_>>()?;
            Some(CudaInput { dir, groups })
        }
    };
    let extra_files = parse_pairs(&args.files, "--file")?
        .into_iter()
        .filter(|(image, _)| image == name)
        .map(|(_, value)| extra_file(&value))
        .collect::<Result<_>>()?;
    Ok(ImageSpec {
        name: name.to_owned(),
        binary,
        binary_name,
        extra_files,
        ports: entry.map(|e| vec![e.port]).unwrap_or_default(),
        env: Vec::new(),
        cuda,
        provenance: Provenance {
            source: provenance::source(root),
            revision: provenance::revision(root),
            version,
        },
    })
}

fn parse_pairs(values: &[String], flag: &str) -> Result<Vec<(String, String)>> {
    values
        .iter()
        .map(|value| {
            value
                .split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("{flag} {value:?}: expected IMAGE=VALUE"))
        })
        .collect()
}

fn extra_file(value: &str) -> Result<ExtraFile> {
    let (host, image) = value
        .split_once(":/")
        .with_context(|| format!("--file {value:?}: expected HOST_PATH:/IMAGE/PATH"))?;
    Ok(ExtraFile {
        host_path: PathBuf::from(host),
        image_path: format!("/{image}"),
        mode: 0o644,
    })
}
