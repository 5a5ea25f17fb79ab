//! `cargo xtask image [IMAGE…]`: turns the command line and a build into an `ImagePlan`, calls
//! `assemble`, prints the table (or `--json`) and, with `--format docker-archive`, writes the
//! tarball. What each image is made of is the `catalog`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use std::collections::BTreeMap;

use super::cache::LayerCache;
use super::catalog;
use super::layer::Compression;
use super::layout::LayoutDir;
use super::plan::{BIN_DIR, CudaInput, ExtraFile, ImageSpec, Provenance};
use super::{ImagePlan, ImageReport, SystemFiles, assemble, cuda, docker_archive};
use crate::build::{self, Backend, BuildRequest, provenance};
use crate::debian;
use crate::project;

pub use super::catalog::{CATALOG, CatalogImage, ImageContent};

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
    /// `IMAGE=PATH`: pack this launcher at /usr/local/bin/NAME and the binary at
    /// /usr/local/libexec/cairn/NAME (inference-cuda's `cuda-launch`, built when not given).
    #[arg(long = "launcher", value_name = "IMAGE=PATH")]
    pub launchers: Vec<String>,
    /// `IMAGE=HOST_PATH:/IMAGE/PATH`: an extra file in the image's application layer.
    #[arg(long = "file", value_name = "IMAGE=HOST:/PATH")]
    pub files: Vec<String>,
    /// `IMAGE=HOST_DIR:/IMAGE/DIR`: every file under HOST_DIR (and every link to a file; links
    /// to directories are left out) in the application layer at the same path under /IMAGE/DIR,
    /// like one --file each (a store path given whole: its data files, modules, time zones).
    #[arg(long = "tree", value_name = "IMAGE=HOST:/DIR")]
    pub trees: Vec<String>,
    /// `IMAGE=HOST_PATH:/IMAGE/PATH`: a program from this machine (a Nix store path) at that
    /// path, executable, its ELF closure in the system layer. A catalog image of Debian packages
    /// given programs is made of them (and its `--file`s) instead of its package set; everything
    /// else (entrypoint, cmd, stop signal, env, writable directories, helper, site) stays the
    /// catalog's. Needs --ca-bundle (the system layer from this machine).
    #[arg(long = "program", value_name = "IMAGE=HOST:/PATH")]
    pub programs: Vec<String>,
    /// `IMAGE=NAME=VALUE`: sets (or replaces) an environment variable of the image's config
    /// (e.g. a PATH naming where a store closure's programs are).
    #[arg(long = "env", value_name = "IMAGE=NAME=VALUE")]
    pub env: Vec<String>,
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
    /// Take service images' system layer from this machine: the binary's ELF closure as found
    /// here (a Nix store closure) and this CA bundle. Without it, both come from the pinned
    /// Debian base set of deploy/debian.lock.
    #[arg(long)]
    pub ca_bundle: Option<PathBuf>,
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
    let given_launchers = parse_pairs(&args.launchers, "--launcher")?;
    let names = selected_images(args, root, &given)?;
    let mut to_build: Vec<BuildRequest> = names
        .iter()
        .filter(|name| !given.iter().any(|(image, _)| image == *name))
        .filter_map(|name| catalog::find(name).and_then(request))
        .collect();
    to_build.extend(
        names
            .iter()
            .filter(|name| !given_launchers.iter().any(|(image, _)| image == *name))
            .filter_map(|name| catalog::find(name).and_then(CatalogImage::launcher))
            .map(launcher_request),
    );
    let built = if to_build.is_empty() {
        Vec::new()
    } else {
        build::build(build::choose(args.backend), &to_build)?
    };
    let mut images = Vec::new();
    for name in &names {
        let entry = catalog::find(name);
        let given_binary = given.iter().find(|(image, _)| image == name);
        let (binary, version) = match (given_binary, entry) {
            (Some((_, path)), _) => (
                Some(PathBuf::from(path)),
                std::env::var("CAIRN_VERSION").unwrap_or_else(|_| "0.0.0".into()),
            ),
            (None, Some(entry)) => match request(entry) {
                Some(wanted) => {
                    let binary = built
                        .iter()
                        .find(|b| b.package == wanted.package && b.features == wanted.features)
                        .with_context(|| format!("no binary was built for {name}"))?;
                    (Some(binary.path.clone()), binary.version.clone())
                }
                None => match entry.content {
                    ImageContent::Prebuilt(prebuilt) => {
                        let path = (prebuilt.binary)(root)
                            .with_context(|| format!("building the binary of image {name}"))?;
                        (Some(path), "0.0.0".to_owned())
                    }
                    _ => (None, env!("CARGO_PKG_VERSION").to_owned()),
                },
            },
            (None, None) => bail!("unknown image {name:?}"),
        };
        let launcher = match (
            given_launchers.iter().find(|(image, _)| image == name),
            entry.and_then(CatalogImage::launcher),
        ) {
            (Some((_, path)), _) => Some(PathBuf::from(path)),
            (None, Some(package)) => Some(
                built
                    .iter()
                    .find(|b| b.package == package && b.features.is_empty())
                    .with_context(|| format!("no launcher {package} was built for {name}"))?
                    .path
                    .clone(),
            ),
            (None, None) => None,
        };
        images.push(spec(args, root, name, binary, launcher, version)?);
    }
    let needs_base = images.iter().any(|image| image.debian_set.is_none());
    let system = match (&args.ca_bundle, needs_base) {
        (Some(ca_bundle), _) => SystemFiles::Host {
            ca_bundle: ca_bundle.clone(),
        },
        (None, true) => SystemFiles::Debian(debian::load_set(root, "base")?),
        // No service image: the base set is not needed (nor fetched).
        (None, false) => SystemFiles::Host {
            ca_bundle: PathBuf::new(),
        },
    };
    let mut debian_sets = BTreeMap::new();
    for set in images.iter().filter_map(|image| image.debian_set.clone()) {
        if let std::collections::btree_map::Entry::Vacant(slot) = debian_sets.entry(set) {
            let pinned = debian::load_set(root, slot.key())?;
            slot.insert(pinned);
        }
    }
    let out = root.join(&args.out);
    Ok(ImagePlan {
        images,
        system,
        debian_sets,
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

/// A launcher's build: its package, without features.
fn launcher_request(package: &str) -> BuildRequest {
    BuildRequest {
        package: package.into(),
        bin: package.into(),
        features: Vec::new(),
    }
}

/// The workspace binary an image needs built, if any.
fn request(entry: &CatalogImage) -> Option<BuildRequest> {
    entry
        .workspace_binary()
        .map(|(package, features)| BuildRequest {
            package: package.into(),
            bin: package.into(),
            features: features.iter().map(|f| (*f).to_owned()).collect(),
        })
}

fn selected_images(
    args: &ImageArgs,
    root: &Path,
    given: &[(String, String)],
) -> Result<Vec<String>> {
    if !args.images.is_empty() {
        for name in &args.images {
            if catalog::find(name).is_none() && !given.iter().any(|(image, _)| image == name) {
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
        .filter(|image| match image.content {
            ImageContent::Service { package, .. } => root
                .join("services")
                .join(package)
                .join("Cargo.toml")
                .exists(),
            ImageContent::Debian(_) | ImageContent::Prebuilt(_) => false,
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
    binary: Option<PathBuf>,
    launcher: Option<PathBuf>,
    version: String,
) -> Result<ImageSpec> {
    let entry = catalog::find(name);
    let binary_name = match (entry.map(|e| e.content), &binary) {
        (Some(ImageContent::Service { package, .. }), _) => package.to_owned(),
        (Some(ImageContent::Debian(debian)), _) => debian.helper.unwrap_or_default().to_owned(),
        (Some(ImageContent::Prebuilt(prebuilt)), _) => prebuilt.binary_name.to_owned(),
        (None, Some(binary)) => binary
            .file_name()
            .with_context(|| format!("--binary {name}={} names no file", binary.display()))?
            .to_string_lossy()
            .into_owned(),
        (None, None) => bail!("image {name:?} has no binary"),
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
    let mut extra_files: Vec<ExtraFile> = parse_pairs(&args.files, "--file")?
        .into_iter()
        .filter(|(image, _)| image == name)
        .map(|(_, value)| extra_file(&value))
        .collect::<Result<_>>()?;
    for (_, value) in parse_pairs(&args.trees, "--tree")?
        .into_iter()
        .filter(|(image, _)| image == name)
    {
        let tree = extra_file(&value).with_context(|| format!("--tree {name}={value}"))?;
        extra_files.extend(
            tree_files(&tree.host_path, &tree.image_path)
                .with_context(|| format!("--tree {name}={value}"))?,
        );
    }
    let programs: Vec<ExtraFile> = parse_pairs(&args.programs, "--program")?
        .into_iter()
        .filter(|(image, _)| image == name)
        .map(|(_, value)| {
            extra_file(&value)
                .map(|program| ExtraFile {
                    mode: 0o755,
                    ..program
                })
                .with_context(|| format!("--program {name}={value}"))
        })
        .collect::<Result<_>>()?;
    if !programs.is_empty() && args.ca_bundle.is_none() {
        bail!(
            "--program {name}=…: programs bring their ELF closure from this machine, so the \
             system layer must come from it too: give --ca-bundle"
        );
    }
    let env_overrides: Vec<(String, String)> = parse_pairs(&args.env, "--env")?
        .into_iter()
        .filter(|(image, _)| image == name)
        .map(|(_, value)| {
            value
                .split_once('=')
                .filter(|(key, _)| !key.is_empty())
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .with_context(|| format!("--env {name}={value:?}: expected IMAGE=NAME=VALUE"))
        })
        .collect::<Result<_>>()?;
    let owned = |dirs: &[&str]| dirs.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>();
    let service_entrypoint = vec![format!("{BIN_DIR}/{binary_name}")];
    let stop_signal = match entry.map(|e| e.content) {
        Some(ImageContent::Debian(debian)) => debian.stop_signal.map(str::to_owned),
        _ => None,
    };
    let (entrypoint, cmd, debian_set, writable_dirs, mut env) = match entry.map(|e| e.content) {
        Some(ImageContent::Debian(debian)) => {
            let mut files = (debian.files)(root)
                .with_context(|| format!("collecting the files of image {name}"))?;
            files.append(&mut extra_files);
            extra_files = files;
            let env = debian
                .env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            (
                owned(debian.entrypoint),
                owned(debian.cmd),
                // Programs given: the image is made of them, not of the package set.
                programs.is_empty().then(|| debian.set.to_owned()),
                owned(debian.writable_dirs),
                env,
            )
        }
        Some(ImageContent::Prebuilt(prebuilt)) => (
            service_entrypoint,
            owned(prebuilt.cmd),
            None,
            owned(prebuilt.writable_dirs),
            Vec::new(),
        ),
        Some(ImageContent::Service { .. }) | None => {
            (service_entrypoint, Vec::new(), None, Vec::new(), Vec::new())
        }
    };
    for (key, value) in env_overrides {
        env.retain(|(existing, _)| *existing != key);
        env.push((key, value));
    }
    Ok(ImageSpec {
        name: name.to_owned(),
        binary,
        binary_name,
        launcher,
        entrypoint,
        cmd,
        stop_signal,
        debian_set,
        writable_dirs,
        extra_files,
        programs,
        ports: entry.map(|e| e.ports.to_vec()).unwrap_or_default(),
        env,
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

/// The files of `--tree HOST:/DIR`: each regular file under `host` (links to files included,
/// packed as the file they name; links to directories left out, as their files are reached at
/// their own paths), sorted, at the same relative path under `image_dir`. A file given as the
/// tree is itself at `image_dir`.
fn tree_files(host: &Path, image_dir: &str) -> Result<Vec<ExtraFile>> {
    let file = |host_path: PathBuf, image_path: String| ExtraFile {
        host_path,
        image_path,
        mode: 0o644,
    };
    let meta = std::fs::metadata(host).with_context(|| format!("reading {}", host.display()))?;
    if meta.is_file() {
        return Ok(vec![file(host.to_owned(), image_dir.to_owned())]);
    }
    let mut found = Vec::new();
    let mut pending = vec![host.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry
                .with_context(|| format!("reading {}", dir.display()))?
                .path();
            let link = std::fs::symlink_metadata(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .file_type()
                .is_symlink();
            // A dangling link has no metadata: left out like a link to a directory.
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_dir() && !link => pending.push(path),
                Ok(meta) if meta.is_file() => {
                    let relative = path
                        .strip_prefix(host)
                        .with_context(|| format!("{} outside {}", path.display(), host.display()))?
                        .to_string_lossy()
                        .into_owned();
                    let image_path = format!("{}/{relative}", image_dir.trim_end_matches('/'));
                    found.push(file(path, image_path));
                }
                _ => {}
            }
        }
    }
    found.sort_by(|a, b| a.image_path.cmp(&b.image_path));
    Ok(found)
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        image: ImageArgs,
    }

    fn args(argv: &[&str]) -> ImageArgs {
        Cli::try_parse_from(std::iter::once("image").chain(argv.iter().copied()))
            .expect("arguments parse")
            .image
    }

    /// A catalog image of packages given programs from a store closure: the catalog's
    /// metadata, the programs instead of the package set, and the given env over the catalog's.
    #[test]
    fn image_of_packages_from_programs_keeps_the_catalogs_metadata() {
        let root = tempfile::tempdir().expect("tempdir");
        let args = args(&[
            "postgres",
            "--binary",
            "postgres=/nix/store/x-pg-entrypoint/bin/pg-entrypoint",
            "--program",
            "postgres=/nix/store/y-postgresql/bin/initdb:/nix/store/y-postgresql/bin/initdb",
            "--env",
            "postgres=PATH=/usr/local/bin:/nix/store/y-postgresql/bin",
            "--ca-bundle",
            "/ca.crt",
        ]);
        let spec = spec(
            &args,
            root.path(),
            "postgres",
            args_binary(&args),
            None,
            "1".into(),
        )
        .expect("spec");
        assert_eq!(
            spec.debian_set, None,
            "made of the programs, not of Debian packages"
        );
        assert_eq!(spec.entrypoint, ["/usr/local/bin/pg-entrypoint"]);
        assert_eq!(spec.binary_name, "pg-entrypoint");
        assert_eq!(spec.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(spec.writable_dirs, ["/var/lib/postgresql/data"]);
        assert_eq!(
            spec.programs,
            [ExtraFile {
                host_path: "/nix/store/y-postgresql/bin/initdb".into(),
                image_path: "/nix/store/y-postgresql/bin/initdb".into(),
                mode: 0o755,
            }]
        );
        let env: Vec<&str> = spec
            .env
            .iter()
            .filter(|(key, _)| key == "PATH")
            .map(|(_, value)| value.as_str())
            .collect();
        assert_eq!(env, ["/usr/local/bin:/nix/store/y-postgresql/bin"]);
        assert!(spec.env.iter().any(|(key, _)| key == "PGDATA"));
    }

    fn args_binary(args: &ImageArgs) -> Option<PathBuf> {
        parse_pairs(&args.binaries, "--binary")
            .expect("pairs")
            .first()
            .map(|(_, path)| PathBuf::from(path))
    }

    #[test]
    fn without_programs_the_image_is_made_of_its_package_set() {
        let root = tempfile::tempdir().expect("tempdir");
        let args = args(&["nginx"]);
        let spec = spec(&args, root.path(), "nginx", None, None, "1".into()).expect("spec");
        assert_eq!(spec.debian_set.as_deref(), Some("nginx"));
        assert_eq!(spec.cmd, ["-g", "daemon off;"]);
        assert!(spec.programs.is_empty());
    }

    #[test]
    fn programs_without_a_host_system_layer_are_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let args = args(&[
            "nginx",
            "--program",
            "nginx=/nix/store/z/bin/nginx:/usr/sbin/nginx",
        ]);
        let err = spec(&args, root.path(), "nginx", None, None, "1".into())
            .expect_err("no --ca-bundle")
            .to_string();
        assert!(
            err.contains("--program nginx=") && err.contains("--ca-bundle"),
            "{err}"
        );
    }

    #[test]
    fn a_tree_is_its_files_and_links_to_files_at_the_same_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("pkg");
        std::fs::create_dir_all(tree.join("share/zoneinfo/Etc")).expect("dirs");
        std::fs::write(tree.join("share/zoneinfo/Etc/UTC"), "tz").expect("file");
        std::os::unix::fs::symlink("Etc/UTC", tree.join("share/zoneinfo/UTC")).expect("link");
        std::os::unix::fs::symlink(".", tree.join("share/zoneinfo/posix")).expect("dir link");
        std::os::unix::fs::symlink("missing", tree.join("share/dangling")).expect("dangling");
        let files = tree_files(&tree, "/nix/store/x-pkg").expect("tree");
        let paths: Vec<&str> = files.iter().map(|f| f.image_path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/nix/store/x-pkg/share/zoneinfo/Etc/UTC",
                "/nix/store/x-pkg/share/zoneinfo/UTC"
            ]
        );
        let single = tree_files(&tree.join("share/zoneinfo/Etc/UTC"), "/etc/utc").expect("file");
        assert_eq!(single[0].image_path, "/etc/utc");
        let err = tree_files(&dir.path().join("absent"), "/x")
            .expect_err("absent")
            .to_string();
        assert!(err.contains("absent"), "{err}");
    }

    #[test]
    fn a_malformed_env_names_the_flag() {
        let root = tempfile::tempdir().expect("tempdir");
        let args = args(&["garage", "--env", "garage=NOVALUE"]);
        let err = spec(
            &args,
            root.path(),
            "garage",
            Some("/g".into()),
            None,
            "1".into(),
        )
        .expect_err("no NAME=VALUE")
        .to_string();
        assert!(err.contains("--env garage=\"NOVALUE\""), "{err}");
    }
}
