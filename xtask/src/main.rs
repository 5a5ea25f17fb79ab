//! `cargo xtask`: cairn's build tool. Each subcommand is one stage of the pipeline in
//! DESIGN.md and lives in its own module; `main` only parses the command line and dispatches.

mod bench;
mod project;
mod push;
mod registry;
mod test;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Build, package and test cairn", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole test suite: fmt, clippy, install missing tools, every test of the workspace.
    Test(test::TestArgs),
    /// Push the images of an OCI layout to a registry (same digests as built).
    Push(push::PushArgs),
    /// Run a benchmark against the real alternative (`cargo xtask bench gateway|push`).
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Test(args) => test::run(&args),
        Command::Push(args) => push::run(&args),
        Command::Bench(args) => bench::run(&args),
    }
}
