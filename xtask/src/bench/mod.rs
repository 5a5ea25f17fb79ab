//! `cargo xtask bench NAME`: benchmarks that put a cairn component next to the real alternative
//! in one run and print the ratio (or, for the api, its numbers under load). One file per benchmark.

mod api;
mod gateway;
mod image;
mod inference;
mod nginx;
mod push;
mod wrk;

use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, clap::Subcommand)]
enum Bench {
    /// The gateway vs nginx `proxy_pass` (keepalive upstream), bare and doing the same header work, in front of the same upstream, with wrk.
    Gateway(gateway::GatewayBenchArgs),
    /// cairn push vs `skopeo copy oci:… docker://…` to a local registry: first push and re-push.
    Push(push::PushBenchArgs),
    /// The release api under concurrent load with wrk: `/api/health/ready` and an authenticated
    /// session listing, against a real PostgreSQL.
    Api(api::ApiBenchArgs),
    /// cairn's assembler vs umoci (new + insert + config) on the same files, plus a no-op re-run.
    Image(image::BenchImageArgs),
    /// Time to first token and decode tokens/s of the inference service on a Qwen2.5-0.5B-shaped
    /// random model, next to PyTorch + transformers running the same weights.
    Inference(inference::InferenceBenchArgs),
}

pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.bench {
        Bench::Gateway(args) => gateway::run(args),
        Bench::Push(args) => push::run(args),
        Bench::Api(args) => api::run(args),
        Bench::Image(args) => image::run(args),
        Bench::Inference(args) => inference::run(args),
    }
}
