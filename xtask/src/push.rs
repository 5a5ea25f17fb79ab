//! `cargo xtask push`: the command line of `registry::push`. It turns flags into
//! `PushOptions`, runs the push and prints the report (`--json` on stdout, a summary on
//! stderr otherwise). Everything about the protocol lives in `registry`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::project;
use crate::registry::client::{RetryPolicy, Transport};
use crate::registry::layout::Layout;
use crate::registry::progress::ProgressMode;
use crate::registry::{self, PushOptions, PushReport, RegistryTarget};

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// Where to push: HOST[:PORT]/NAMESPACE; image NAME goes to NAMESPACE/NAME.
    #[arg(long, value_name = "HOST[:PORT]/NAMESPACE")]
    registry: String,
    /// Tag for every pushed image (repeatable).
    #[arg(long = "tag", value_name = "TAG", default_value = "latest")]
    tags: Vec<String>,
    /// The OCI image layout to push from.
    #[arg(long, value_name = "DIR")]
    layout: Option<PathBuf>,
    /// Images to push, by their org.opencontainers.image.ref.name; all when none is given.
    images: Vec<String>,
    /// Blob uploads at once.
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Blobs larger than this many MiB go up in chunks of this size (and can resume).
    #[arg(long, default_value_t = 16, value_name = "MIB")]
    chunk_mib: u64,
    /// Retries of a failed request (429, 5xx, dropped connection), with exponential backoff.
    #[arg(long, default_value_t = 5)]
    retries: u32,
    /// Extra CA certificates (PEM) to trust besides the system roots.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Talk plain HTTP instead of HTTPS (local registries only; prints a warning).
    #[arg(long, conflicts_with = "ca_file")]
    plain_http: bool,
    /// Print the report as JSON on stdout (every reference and digest).
    #[arg(long)]
    json: bool,
    /// No progress output (errors still go to stderr).
    #[arg(long, short)]
    quiet: bool,
}

impl PushArgs {
    fn options(&self) -> Result<PushOptions> {
        let target = RegistryTarget::parse(&self.registry)?;
        let transport = if self.plain_http {
            Transport::PlainHttp
        } else {
            Transport::Https {
                ca_file: self.ca_file.clone(),
            }
        };
        let mut options = PushOptions::new(target, transport);
        options.tags = self.tags.clone();
        options.images = self.images.clone();
        options.jobs = self.jobs.max(1);
        options.chunk_size = self.chunk_mib.max(1) << 20;
        options.retry = RetryPolicy {
            retries: self.retries,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        };
        options.progress = if self.quiet {
            ProgressMode::Quiet
        } else {
            ProgressMode::detect()
        };
        Ok(options)
    }
}

pub fn run(args: &PushArgs) -> Result<()> {
    let options = args.options()?;
    let dir = args
        .layout
        .clone()
        .unwrap_or_else(|| project::root().join("target").join("oci"));
    let layout = Layout::open(&dir)?;
    let report = registry::push(&layout, &options)
        .with_context(|| format!("pushing {} to {}", dir.display(), args.registry))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(())
}

fn print_summary(report: &PushReport) {
    for image in &report.images {
        println!("{}", image.reference);
    }
    eprintln!(
        "{} images in {:.2}s: {} blobs uploaded ({}), {} mounted, {} already there; {} resumes",
        report.images.len(),
        report.seconds,
        report.blobs_uploaded,
        registry::progress::human_size(report.bytes_uploaded),
        report.blobs_mounted,
        report.blobs_present,
        report.resumes
    );
}
