//! `cargo xtask`: cairn's build tool. Each subcommand is one stage of the pipeline in
//! DESIGN.md and lives in its own module; `main` only parses the command line and dispatches.

mod bench;
mod build;
mod cuda;
mod debian;
mod dev;
mod image;
mod pin;
mod project;
mod push;
mod registry;
mod release;
mod render;
mod test;
mod topology;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Build, package and test cairn", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build release binaries of services (reproducibly: paths remapped, SOURCE_DATE_EPOCH fixed).
    Build(build::BuildArgs),
    /// The pinned CUDA toolchain (`cuda install`, `cuda env`): nvcc and libraries from PyPI wheels.
    Cuda(cuda::CudaArgs),
    /// Write the OCI images into one layout (target/oci), optionally a docker-archive too.
    Image(Box<image::command::ImageArgs>),
    /// Push the images of an OCI layout to a registry (same digests as built).
    Push(push::PushArgs),
    /// Pin the topology's upstream images to the digests their tags name (`--check`: fail when one moved).
    Pin(pin::PinArgs),
    /// Pin the Debian packages of every image (deploy/debian.lock) with the host's apt.
    Lock(debian::LockArgs),
    /// Render nginx, compose and .env examples for every server from the topology.
    Render(render::RenderArgs),
    /// Build, pack, push (with --registry), render with the digests, and bundle a release.
    Release(release::ReleaseArgs),
    /// Run the whole stack locally (PostgreSQL, storage, inference, api, gateway, nginx); `dev status|logs|down` for a detached one.
    Dev(dev::DevArgs),
    /// Run a benchmark against the real alternative (`cargo xtask bench gateway|image|push|inference|api`).
    Bench(bench::BenchArgs),
    /// Run the whole test suite: fmt, clippy, install missing tools, every test of the workspace.
    Test(test::TestArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Build(args) => build::run(&args),
        Command::Cuda(args) => cuda::run(&args),
        Command::Image(args) => image::command::run(&args),
        Command::Push(args) => push::run(&args),
        Command::Pin(args) => pin::run(&args),
        Command::Lock(args) => debian::run_lock(&args),
        Command::Render(args) => render::run(&args),
        Command::Release(args) => release::run(&args),
        Command::Dev(args) => dev::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Test(args) => test::run(&args),
    }
}
