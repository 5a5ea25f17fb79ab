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
use crate::image::{ImagePlan, assemble, plan_layers};

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
    let mut cairn_cold = Vec::new();
    let mut cairn_noop = Vec::new();
    let mut umoci = Vec::new();
    for run in 0..args.runs.max(1) {
        let dir = scratch.path().join(format!("run-{run}"));
        let plan = ImagePlan {
            images: vec![spec.clone()],
            ca_bundle: ca_bundle.clone(),
            compression: Compression::Gzip,
            epoch: 0,
            cache: LayerCache {
                dir: dir.join("cache"),
            },
        };
        let layout = LayoutDir::open(&dir.join("cairn"))?;
        cairn_cold.push(time(|| assemble(&plan, &layout).map(drop))?);
        cairn_noop.push(time(|| {
            let report = assemble(&plan, &layout)?;
            if report.layers_compressed != 0 {
                bail!(
                    "the no-op re-run compressed {} layers",
                    report.layers_compressed
                );
            }
            Ok(())
        })?);
        umoci.push(time(|| umoci_assemble(&staged, &dir.join("umoci")))?);
    }
    let (cold, noop, umoci) = (median(cairn_cold), median(cairn_noop), median(umoci));
    let size = std::fs::metadata(&binary).map(|m| m.len()).unwrap_or(0);
    println!(
        "bench image: {} ({:.1} MB binary + ELF closure + CA bundle), median of {} runs",
        binary.display(),
        size as f64 / 1e6,
        args.runs
    );
    println!("  umoci new+insert+config  {:>8.3} s", umoci.as_secs_f64());
    println!("  cairn assemble (cold)    {:>8.3} s", cold.as_secs_f64());
    println!("  cairn assemble (no-op)   {:>8.3} s", noop.as_secs_f64());
    println!(
        "  umoci / cairn cold       {:>8.2}x",
        umoci.as_secs_f64() / cold.as_secs_f64()
    );
    println!(
        "  umoci / cairn no-op      {:>8.1}x",
        umoci.as_secs_f64() / noop.as_secs_f64()
    );
    Ok(())
}

fn bench_spec(binary: &Path) -> ImageSpec {
    ImageSpec {
        name: "bench".into(),
        binary: binary.to_owned(),
        binary_name: "app".into(),
        extra_files: Vec::new(),
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
    for layer in plan_layers(spec, ca_bundle)? {
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
