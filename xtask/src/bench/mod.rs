//! `cargo xtask bench NAME`: benchmarks that measure cairn against the real alternative and
//! print ratios. One file per benchmark.

mod push;

use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, clap::Subcommand)]
enum Bench {
    /// cairn push vs `skopeo copy oci:… docker://…` to a local registry: first push and re-push.
    Push(push::PushBenchArgs),
}

pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.bench {
        Bench::Push(args) => push::run(args),
    }
}
