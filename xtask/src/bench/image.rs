//! `cargo xtask bench image`: the same files (a binary, its ELF closure, the CA bundle, passwd)
//! assembled into an image by cairn and by umoci (`new` + `insert` of the staged tree + `config`,
//! umoci's own repack of a layer), in one run, then cairn's no-op re-run. Prints both times and
//! the ratio; README's Performance section quotes it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::image::cache::LayerCache;
use crate::image::layer::{Compression, EntrySource};
use crate::image::layout::LayoutDir;
use crate::image::plan::{ImageSpec, Provenance};
use crate::image::{ImagePlan, SystemFiles, assemble, plan_layers};

#[derive(Debug, clap::Args)]
pub struct BenchImageArgs {
    /// The binary to package (default: the xtask binary itself).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Runs of each tool; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

pub fn run(args: &BenchImageArgs) -> Result<()> {
    let binary = match &args.binary {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("finding the xtask binary")?,
    };
    let spec = bench_spec(&binary);
    let ca_bundle = PathBuf::from("/etc/ssl/certs/ca-certificates.crt");
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let staged = scratch.path().join("rootfs");
    stage(&spec, &ca_bundle, &staged)?;
    let mut gzip = Timings::default();
    let mut zstd = Timings::default();
    let mut umoci = Vec::new();
    for run in 0..args.runs.max(1) {
        let dir = scratch.path().join(format!("run-{run}"));
        gzip.measure(&spec, &ca_bundle, Compression::Gzip, &dir.join("gzip"))?;
        zstd.measure(&spec, &ca_bundle, Compression::Zstd, &dir.join("zstd"))?;
        umoci.push(time(|| umoci_assemble(&staged, &dir.join("umoci")))?);
    }
    let umoci_size = blobs_size(&scratch.path().join("run-0/umoci"))?;
    let umoci = median(umoci);
    let size = std::fs::metadata(&binary).map(|m| m.len()).unwrap_or(0);
    println!(
        "bench image: {} ({:.1} MB binary + ELF closure + CA bundle), median of {} runs",
        binary.display(),
        size as f64 / 1e6,
        args.runs
    );
    println!(
        "  {:<34} {:>8} {:>10} {:>14}",
        "", "time", "blobs", "umoci/cairn"
    );
    let row = |name: &str, time: Duration, bytes: u64| {
        println!(
            "  {name:<34} {:>6.3} s {:>7.2} MB {:>13.2}x",
            time.as_secs_f64(),
            bytes as f64 / 1e6,
            umoci.as_secs_f64() / time.as_secs_f64()
        );
    };
    row("umoci new+insert+config (gzip)", umoci, umoci_size);
    row(
        "cairn assemble, gzip -6 (cold)",
        median(gzip.cold.clone()),
        gzip.size,
    );
    row(
        "cairn assemble, zstd -3 (cold)",
        median(zstd.cold.clone()),
        zstd.size,
    );
    row(
        "cairn assemble, gzip (no-op re-run)",
        median(gzip.noop.clone()),
        gzip.size,
    );
    Ok(())
}

/// cairn's cold and no-op times and the size of what it wrote, for one compression.
#[derive(Debug, Default)]
struct Timings {
    cold: Vec<Duration>,
    noop: Vec<Duration>,
    size: u64,
}

impl Timings {
    fn measure(
        &mut self,
        spec: &ImageSpec,
        ca_bundle: &Path,
        compression: Compression,
        dir: &Path,
    ) -> Result<()> {
        let plan = host_plan(spec, ca_bundle, compression, &dir.join("cache"));
        let layout = LayoutDir::open(&dir.join("layout"))?;
        self.cold.push(time(|| assemble(&plan, &layout).map(drop))?);
        self.noop.push(time(|| {
            let report = assemble(&plan, &layout)?;
            if report.layers_compressed != 0 {
                bail!(
                    "the no-op re-run compressed {} layers",
                    report.layers_compressed
                );
            }
            Ok(())
        })?);
        self.size = blobs_size(&layout.root)?;
        Ok(())
    }
}

/// Total bytes of a layout's blobs.
fn blobs_size(layout: &Path) -> Result<u64> {
    let dir = layout.join("blobs/sha256");
    let mut total = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}

/// The plan of the benchmark's one image, its system layer from this machine (what umoci gets).
fn host_plan(
    spec: &ImageSpec,
    ca_bundle: &Path,
    compression: Compression,
    cache: &Path,
) -> ImagePlan {
    ImagePlan {
        images: vec![spec.clone()],
        system: SystemFiles::Host {
            ca_bundle: ca_bundle.to_owned(),
        },
        debian_sets: Default::default(),
        compression,
        epoch: 0,
        cache: LayerCache {
            dir: cache.to_owned(),
        },
    }
}

fn bench_spec(binary: &Path) -> ImageSpec {
    ImageSpec {
        name: "bench".into(),
        binary: Some(binary.to_owned()),
        binary_name: "app".into(),
        launcher: None,
        entrypoint: vec!["/usr/local/bin/app".into()],
        cmd: Vec::new(),
        stop_signal: None,
        debian_set: None,
        writable_dirs: Vec::new(),
        extra_files: Vec::new(),
        programs: Vec::new(),
        ports: vec![8080],
        env: Vec::new(),
        cuda: None,
        provenance: Provenance {
            source: "bench".into(),
            revision: "bench".into(),
            version: "0.0.0".into(),
        },
    }
}

/// Copies every file cairn would pack into a directory tree, for umoci to insert.
fn stage(spec: &ImageSpec, ca_bundle: &Path, root: &Path) -> Result<()> {
    let plan = host_plan(
        spec,
        ca_bundle,
        Compression::Gzip,
        &root.join("unused-cache"),
    );
    for layer in plan_layers(spec, &plan)?.layers {
        for (path, entry) in &layer.entries {
            let target = root.join(path);
            match &entry.source {
                EntrySource::Directory => std::fs::create_dir_all(&target)?,
                EntrySource::HostFile(host) => {
                    std::fs::copy(host, &target)
                        .with_context(|| format!("staging {}", host.display()))?;
                }
                EntrySource::Bytes(bytes) => std::fs::write(&target, bytes)?,
                EntrySource::Symlink(link) => std::os::unix::fs::symlink(link, &target)?,
            }
        }
    }
    Ok(())
}

fn umoci_assemble(staged: &Path, layout: &Path) -> Result<()> {
    let image = format!("{}:bench", layout.display());
    umoci(&["init", "--layout", &layout.display().to_string()])?;
    umoci(&["new", "--image", &image])?;
    umoci(&[
        "insert",
        "--image",
        &image,
        &staged.display().to_string(),
        "/",
    ])?;
    umoci(&[
        "config",
        "--image",
        &image,
        "--config.user",
        "65532:65532",
        "--config.entrypoint",
        "/usr/local/bin/app",
    ])
}

fn umoci(args: &[&str]) -> Result<()> {
    let output = Command::new("umoci")
        .args(args)
        .output()
        .context("running umoci (apt-get install umoci)")?;
    if !output.status.success() {
        bail!(
            "umoci {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn time(work: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let start = Instant::now();
    work()?;
    Ok(start.elapsed())
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}
