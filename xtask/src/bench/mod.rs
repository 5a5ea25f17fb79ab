//! `cargo xtask bench NAME`: benchmarks that print their numbers beside the real alternative's.
//! One file per benchmark.

pub mod image;

use anyhow::Result;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// cairn's assembler vs umoci (insert + repack) on the same files, plus a no-op re-run.
    Image(image::BenchImageArgs),
}

pub fn run(command: &BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Image(args) => image::run(args),
    }
}
