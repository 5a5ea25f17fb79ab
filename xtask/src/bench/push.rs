//! `cargo xtask bench push`: cairn's push against `skopeo copy oci:… docker://…`, both
//! pushing the same OCI layout to fresh repositories of the same local distribution
//! registry, first push and re-push, each timed as a whole command (process start included).
//! skopeo copies one image per process, so its images run as parallel processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::project;
use crate::registry::layout::Layout;

#[derive(Debug, clap::Args)]
pub struct PushBenchArgs {
    /// The layout to push; a synthetic one (about 100 MiB in 3 images sharing a layer) when
    /// not given.
    #[arg(long, value_name = "DIR")]
    layout: Option<PathBuf>,
    /// Runs of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// One tool's timings.
#[derive(Debug, Default)]
struct Timings {
    first: Vec<Duration>,
    again: Vec<Duration>,
}

pub fn run(args: &PushBenchArgs) -> Result<()> {
    ensure!(
        testkit::find_any_program(testkit::REGISTRY_PROGRAMS).is_some(),
        "bench push needs the distribution registry on PATH ({})",
        testkit::REGISTRY_PROGRAMS.join(" or ")
    );
    for tool in ["skopeo", "umoci"] {
        ensure!(
            testkit::find_program(tool).is_some(),
            "bench push needs {tool} on PATH"
        );
    }
    let work = project::root().join("target").join("bench-push");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let layout = match &args.layout {
        Some(dir) => dir.clone(),
        None => synthetic_layout(&work)?,
    };
    let names = Layout::open(&layout)?.image_names();
    let mut cairn = Timings::default();
    let mut skopeo = Timings::default();
    for run in 0..args.runs.max(1) {
        // A fresh registry (new port, empty storage) per run: skopeo's blob-info cache keys
        // blob locations by host:port, so it cannot mount from an earlier run's repositories.
        let (_registry, host) = start_registry(&work.join(format!("run-{run}")))?;
        let cairn_ns = format!("{host}/bench-cairn");
        let skopeo_ns = format!("{host}/bench-skopeo");
        // Alternate who goes first, so neither always meets a warmer registry.
        for turn in [run % 2, 1 - run % 2] {
            if turn == 0 {
                cairn.first.push(time(|| push_cairn(&layout, &cairn_ns))?);
                cairn.again.push(time(|| push_cairn(&layout, &cairn_ns))?);
            } else {
                let first = time(|| push_skopeo(&layout, &names, &skopeo_ns))?;
                skopeo.first.push(first);
                let again = time(|| push_skopeo(&layout, &names, &skopeo_ns))?;
                skopeo.again.push(again);
            }
        }
        eprintln!(
            "run {run} ({host}): cairn {:.3}s then {:.3}s, skopeo {:.3}s then {:.3}s",
            cairn.first[run].as_secs_f64(),
            cairn.again[run].as_secs_f64(),
            skopeo.first[run].as_secs_f64(),
            skopeo.again[run].as_secs_f64()
        );
    }
    let size = layout_bytes(&layout)?;
    println!(
        "layout {} ({} images, {:.1} MiB of blobs), {} runs, median:",
        layout.display(),
        names.len(),
        size as f64 / (1 << 20) as f64,
        args.runs
    );
    println!(
        "{:<10} {:>10} {:>10} {:>14}",
        "", "cairn", "skopeo", "skopeo/cairn"
    );
    for (label, ours, theirs) in [
        ("first", &cairn.first, &skopeo.first),
        ("re-push", &cairn.again, &skopeo.again),
    ] {
        let (ours, theirs) = (median(ours), median(theirs));
        println!(
            "{label:<10} {:>9.3}s {:>9.3}s {:>13.2}x",
            ours.as_secs_f64(),
            theirs.as_secs_f64(),
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
    }
    Ok(())
}

fn time(action: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let start = Instant::now();
    action()?;
    Ok(start.elapsed())
}

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn push_cairn(layout: &Path, target: &str) -> Result<()> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let status = Command::new(exe)
        .args([
            "push",
            "--plain-http",
            "--quiet",
            "--registry",
            target,
            "--layout",
        ])
        .arg(layout)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running cairn push")?;
    ensure!(status.success(), "cairn push to {target} failed: {status}");
    Ok(())
}

fn push_skopeo(layout: &Path, names: &[String], target: &str) -> Result<()> {
    let children: Vec<_> = names
        .iter()
        .map(|name| {
            Command::new("skopeo")
                .args(["copy", "--quiet", "--dest-tls-verify=false"])
                .arg(format!("oci:{}:{name}", layout.display()))
                .arg(format!("docker://{target}/{name}:latest"))
                .stdout(Stdio::null())
                .spawn()
                .with_context(|| format!("starting skopeo copy of {name}"))
        })
        .collect::<Result<_>>()?;
    for mut child in children {
        let status = child.wait().context("waiting for skopeo")?;
        ensure!(status.success(), "skopeo copy to {target} failed: {status}");
    }
    Ok(())
}

fn start_registry(work: &Path) -> Result<(testkit::ProcessGuard, String)> {
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let port = testkit::free_port();
    let config = work.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: bench\n",
            work.join("registry-data").display()
        ),
    )
    .with_context(|| format!("writing {}", config.display()))?;
    let program = testkit::find_any_program(testkit::REGISTRY_PROGRAMS)
        .context("the distribution registry is not on PATH")?;
    let guard = testkit::ProcessGuard::spawn(
        "docker-registry",
        Command::new(program)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    testkit::wait_for_port("docker-registry", port, Duration::from_secs(20));
    Ok((guard, format!("127.0.0.1:{port}")))
}

/// Three images like cairn's: a shared 16 MiB "system" layer each, plus 4, 12 and 64 MiB of
/// their own, all incompressible.
fn synthetic_layout(work: &Path) -> Result<PathBuf> {
    let layout = work.join("oci");
    let files = work.join("files");
    std::fs::create_dir_all(&files).with_context(|| format!("creating {}", files.display()))?;
    let shared = random_file(&files.join("system.bin"), 16, 1)?;
    umoci(&["init", "--layout", &layout.display().to_string()])?;
    for (index, (name, mib)) in [("gateway", 4), ("api", 12), ("inference", 64)]
        .into_iter()
        .enumerate()
    {
        let own = random_file(&files.join(format!("{name}.bin")), mib, 10 + index as u64)?;
        let image = format!("{}:{name}", layout.display());
        umoci(&["new", "--image", &image])?;
        umoci(&[
            "insert",
            "--rootless",
            "--image",
            &image,
            &shared,
            "/system.bin",
        ])?;
        umoci(&[
            "insert",
            "--rootless",
            "--image",
            &image,
            &own,
            &format!("/{name}.bin"),
        ])?;
    }
    Ok(layout)
}

fn random_file(path: &Path, mib: usize, seed: u64) -> Result<String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut data = vec![0u8; mib << 20];
    rng.fill(&mut data);
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.display().to_string())
}

fn umoci(args: &[&str]) -> Result<()> {
    let status = Command::new("umoci")
        .args(args)
        .status()
        .context("running umoci")?;
    if !status.success() {
        bail!("umoci {} failed: {status}", args.join(" "));
    }
    Ok(())
}

fn layout_bytes(layout: &Path) -> Result<u64> {
    let blobs = layout.join("blobs").join("sha256");
    let mut total = 0;
    for entry in
        std::fs::read_dir(&blobs).with_context(|| format!("reading {}", blobs.display()))?
    {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}
