//! `cargo xtask bench NAME`: benchmarks that measure a cairn component under load (and, where
//! one exists, next to the real alternative). One file per benchmark; this module only dispatches.

mod api;

use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, clap::Subcommand)]
enum Bench {
    /// The release api under concurrent load with wrk: `/api/health/ready` and an authenticated
    /// session listing, against a real PostgreSQL.
    Api(api::ApiBenchArgs),
}

pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.bench {
        Bench::Api(args) => api::run(args),
    }
}
