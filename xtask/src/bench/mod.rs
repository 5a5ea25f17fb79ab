//! `cargo xtask bench NAME`: benchmarks that measure cairn against the real alternative and
//! print the ratio. One file per benchmark; this module only dispatches.

mod inference;

use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, clap::Subcommand)]
enum Bench {
    /// Time to first token and decode tokens/s of the inference service on a Qwen2.5-0.5B-shaped
    /// random model, next to PyTorch + transformers running the same weights.
    Inference(inference::InferenceBenchArgs),
}

pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.bench {
        Bench::Inference(args) => inference::run(args),
    }
}
