//! `cargo xtask test`: THE test command (README, `.ci/run`). It checks formatting and clippy,
//! installs the system tools the suite needs when they are missing, then runs every test of the
//! workspace in the debug profile.
//!
//! The list of tools lives here, next to the command that installs them, so that a test which
//! needs a new tool adds one line below and CI on a fresh machine gets it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use crate::project;

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Skip `cargo fmt --check` and clippy (for quick local runs; CI never skips them).
    #[arg(long)]
    skip_lint: bool,
    /// Arguments passed on to `cargo test` (e.g. `-- --nocapture`, or a test name filter).
    #[arg(last = true)]
    cargo_test_args: Vec<String>,
}

/// A program the test suite runs, and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct DebianTool {
    pub program: &'static str,
    pub package: &'static str,
}

/// Every system program some test runs. Tests find them with `testkit::require_tool`.
pub const DEBIAN_TOOLS: &[DebianTool] = &[
    DebianTool {
        program: "nginx",
        package: "nginx",
    },
    DebianTool {
        program: "wrk",
        package: "wrk",
    },
    DebianTool {
        program: "nix-instantiate",
        package: "nix-bin",
    },
    DebianTool {
        program: "patchelf",
        package: "patchelf",
    },
    // render: nginx -t in fresh namespaces with a self-signed certificate, and docker-compose's
    // own reading of the rendered compose files.
    DebianTool {
        program: "unshare",
        package: "util-linux",
    },
    DebianTool {
        program: "ip",
        package: "iproute2",
    },
    DebianTool {
        program: "openssl",
        package: "openssl",
    },
    DebianTool {
        program: "docker-compose",
        package: "docker-compose",
    },
    // The registry and image tests: the distribution registry, OCI tools, runc, htpasswd.
    DebianTool {
        program: "docker-registry",
        package: "docker-registry",
    },
    DebianTool {
        program: "skopeo",
        package: "skopeo",
    },
    DebianTool {
        program: "umoci",
        package: "umoci",
    },
    DebianTool {
        program: "htpasswd",
        package: "apache2-utils",
    },
    DebianTool {
        program: "runc",
        package: "runc",
    },
    DebianTool {
        program: "docker",
        package: "docker.io",
    },
    DebianTool {
        program: "pip3",
        package: "python3-pip",
    },
    // The web app's browser test: headless Chromium driven over WebDriver.
    DebianTool {
        program: "chromium",
        package: "chromium",
    },
    DebianTool {
        program: "chromedriver",
        package: "chromium-driver",
    },
    DebianTool {
        program: "git",
        package: "git",
    },
    // The api's tests run initdb and postgres from /usr/lib/postgresql/<version>/bin (Debian
    // keeps them off PATH); pg_ctlcluster is on PATH whenever the package is installed.
    DebianTool {
        program: "pg_ctlcluster",
        package: "postgresql",
    },
    // `cargo xtask dev`'s end-to-end test reads the stored chat back with psql (pg_isready, the
    // dev stack's PostgreSQL readiness check, comes in the same package).
    DebianTool {
        program: "psql",
        package: "postgresql-client",
    },
];

/// A program the test suite runs that comes from crates.io, installed with `cargo install`.
#[derive(Debug, Clone, Copy)]
pub struct CargoTool {
    pub program: &'static str,
    /// Arguments to `cargo install`, e.g. `["--locked", "s3s-fs", "--version", "0.14.1"]`.
    pub install_args: &'static [&'static str],
}

pub const CARGO_TOOLS: &[CargoTool] = &[
    // The S3 server the api's object-storage tests run (0.15+ needs Rust 1.96).
    CargoTool {
        program: "s3s-fs",
        install_args: &[
            "--locked",
            "s3s-fs",
            "--version",
            "0.14.1",
            "--features",
            "binary",
        ],
    },
    // The Nix checks: unused code in every .nix file.
    CargoTool {
        program: "deadnix",
        install_args: &["--locked", "deadnix", "--version", "1.3.1"],
    },
];

pub fn run(args: &TestArgs) -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(project::root());
    if !args.skip_lint {
        step("cargo fmt --check");
        cmd!(sh, "cargo fmt --all -- --check")
            .run()
            .context("formatting differs: run `cargo fmt --all`")?;
        step("cargo clippy");
        cmd!(
            sh,
            "cargo clippy --workspace --all-targets --locked -- -D warnings"
        )
        .run()
        .context("clippy found problems")?;
    }
    step("system tools");
    ensure_debian_tools(&sh)?;
    ensure_cargo_tools(&sh)?;
    step("cargo test");
    let tally = run_cargo_test(&args.cargo_test_args)?;
    // One plain closing line for the whole workspace: cargo's own last line is that of the last
    // test binary alone (often a doc-test run with nothing in it).
    println!(
        "\nworkspace: {} passed, {} failed",
        tally.passed, tally.failed
    );
    if tally.failed > 0 || !tally.all_binaries_succeeded {
        bail!("tests failed");
    }
    Ok(())
}

/// The sum of the `test result:` lines of every test binary cargo ran.
#[derive(Debug, Default, PartialEq, Eq)]
struct TestTally {
    passed: u64,
    failed: u64,
    all_binaries_succeeded: bool,
}

impl TestTally {
    /// Adds one line of `cargo test` output when it is a `test result:` line.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                _ => {}
            }
        }
    }
}

/// Runs `cargo test` over the workspace, echoing its output while tallying the results.
fn run_cargo_test(extra_args: &[String]) -> Result<TestTally> {
    let mut child = Command::new(env!("CARGO"))
        .current_dir(project::root())
        .args(["test", "--workspace", "--locked", "--no-fail-fast"])
        .args(extra_args)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    let mut tally = TestTally::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        tally.add_line(&line);
    }
    tally.all_binaries_succeeded = child.wait().context("waiting for cargo test")?.success();
    Ok(tally)
}

fn step(name: &str) {
    eprintln!("\n==> {name}");
}

fn missing_debian_packages() -> Vec<&'static str> {
    let mut packages: Vec<&str> = DEBIAN_TOOLS
        .iter()
        .filter(|tool| testkit::find_program(tool.program).is_none())
        .map(|tool| tool.package)
        .collect();
    packages.sort_unstable();
    packages.dedup();
    packages
}

fn ensure_debian_tools(sh: &Shell) -> Result<()> {
    let missing = missing_debian_packages();
    if missing.is_empty() {
        eprintln!("all {} system tools present", DEBIAN_TOOLS.len());
        return Ok(());
    }
    let install = format!(
        "apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !testkit::is_root() {
        bail!(
            "the test suite needs Debian packages that are missing; as root run:\n  apt-get update && {install}"
        );
    }
    eprintln!("installing: {}", missing.join(" "));
    cmd!(sh, "apt-get update -qq")
        .run()
        .context("apt-get update")?;
    cmd!(
        sh,
        "apt-get install -y -qq --no-install-recommends {missing...}"
    )
    .env("DEBIAN_FRONTEND", "noninteractive")
    .run()
    .with_context(|| format!("installing Debian packages: {install}"))?;
    let still_missing = missing_debian_packages();
    if !still_missing.is_empty() {
        bail!(
            "still missing after apt-get install: {}",
            still_missing.join(" ")
        );
    }
    Ok(())
}

fn ensure_cargo_tools(sh: &Shell) -> Result<()> {
    for tool in CARGO_TOOLS {
        if testkit::find_program(tool.program).is_some() {
            continue;
        }
        let install_args = tool.install_args;
        eprintln!(
            "installing {} with cargo install {}",
            tool.program,
            install_args.join(" ")
        );
        cmd!(sh, "cargo install {install_args...}")
            .run()
            .with_context(|| format!("cargo install {}", install_args.join(" ")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_sums_result_lines_and_ignores_the_rest() {
        let mut tally = TestTally::default();
        for line in [
            "running 3 tests",
            "test tests::a ... ok",
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s",
            "test result: FAILED. 5 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s",
        ] {
            tally.add_line(line);
        }
        assert_eq!((tally.passed, tally.failed), (8, 2));
    }
}
