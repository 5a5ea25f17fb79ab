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

/// A tool the test suite runs, described by what provides it rather than by one path: the names
/// the program goes by (any one found will do: Debian's registry is `docker-registry`,
/// nixpkgs' is `registry`), the Debian package `cargo xtask test` installs with apt on a
/// Debian-like system, and the nixpkgs package `nix develop` puts on PATH (nix/shells.nix).
#[derive(Debug, Clone, Copy)]
pub struct DebianTool {
    /// What the suite uses it for (printed when it is missing).
    pub purpose: &'static str,
    /// The program's names; the first found on PATH (or where [`find_tool`] looks) is used.
    pub programs: &'static [&'static str],
    /// The Debian package that provides it.
    pub package: &'static str,
    /// The nixpkgs attribute that provides it (`pkgs.NAME`, listed in nix/shells.nix).
    pub nixpkgs: &'static str,
}

/// Every system tool some test runs, one entry per tool. Tests find them with
/// `testkit::require_tool` (or `require_any_tool`).
pub const DEBIAN_TOOLS: &[DebianTool] = &[
    DebianTool {
        purpose: "the edge tests and `nginx -t` of the rendered config",
        programs: &["nginx"],
        package: "nginx",
        nixpkgs: "nginx",
    },
    DebianTool {
        purpose: "the HTTP benchmarks",
        programs: &["wrk"],
        package: "wrk",
        nixpkgs: "wrk",
    },
    DebianTool {
        purpose: "parsing and evaluating the flake's files",
        programs: &["nix-instantiate"],
        package: "nix-bin",
        nixpkgs: "nix",
    },
    DebianTool {
        purpose: "the store-like closure of the Nix image test",
        programs: &["patchelf"],
        package: "patchelf",
        nixpkgs: "patchelf",
    },
    DebianTool {
        purpose: "nginx -t and the Nix image test in fresh namespaces",
        programs: &["unshare"],
        package: "util-linux",
        nixpkgs: "util-linux",
    },
    DebianTool {
        purpose: "network namespaces for the render tests",
        programs: &["ip"],
        package: "iproute2",
        nixpkgs: "iproute2",
    },
    DebianTool {
        purpose: "self-signed certificates for nginx",
        programs: &["openssl"],
        package: "openssl",
        nixpkgs: "openssl",
    },
    DebianTool {
        purpose: "docker-compose's own reading of the rendered compose files, and both servers deployed from a bundle",
        programs: &["docker-compose"],
        package: "docker-compose",
        nixpkgs: "docker-compose",
    },
    DebianTool {
        purpose: "the servers test's route to server B's private address (a DOCKER-USER rule)",
        programs: &["iptables"],
        package: "iptables",
        nixpkgs: "iptables",
    },
    DebianTool {
        purpose: "the distribution registry of the push and release tests",
        programs: testkit::REGISTRY_PROGRAMS,
        package: "docker-registry",
        nixpkgs: "distribution",
    },
    DebianTool {
        purpose: "inspecting and copying images",
        programs: &["skopeo"],
        package: "skopeo",
        nixpkgs: "skopeo",
    },
    DebianTool {
        purpose: "building and unpacking OCI layouts",
        programs: &["umoci"],
        package: "umoci",
        nixpkgs: "umoci",
    },
    DebianTool {
        purpose: "the registry's Basic auth users",
        programs: &["htpasswd"],
        package: "apache2-utils",
        nixpkgs: "apacheHttpd",
    },
    DebianTool {
        purpose: "booting images without a Docker engine (as root)",
        programs: &["runc"],
        package: "runc",
        nixpkgs: "runc",
    },
    DebianTool {
        purpose: "docker load / run of the images (needs a running engine)",
        programs: &["docker"],
        package: "docker.io",
        nixpkgs: "docker-client",
    },
    DebianTool {
        purpose: "downloading the CUDA wheels",
        programs: &["pip3"],
        package: "python3-pip",
        nixpkgs: "python3Packages.pip",
    },
    // The web app's browser test: headless Chromium driven over WebDriver.
    DebianTool {
        purpose: "the web app's browser test (headless)",
        programs: &["chromium"],
        package: "chromium",
        nixpkgs: "chromium",
    },
    DebianTool {
        purpose: "driving the browser over WebDriver",
        programs: &["chromedriver"],
        package: "chromium-driver",
        nixpkgs: "chromedriver",
    },
    DebianTool {
        purpose: "the revision and commit time of builds",
        programs: &["git"],
        package: "git",
        nixpkgs: "git",
    },
    // The api's tests run initdb and postgres: on PATH (nixpkgs, and some Debian setups) or in
    // Debian's /usr/lib/postgresql/<version>/bin (testkit::postgres::program looks there).
    DebianTool {
        purpose: "PostgreSQL clusters for the api's tests and the dev stack",
        programs: &["initdb"],
        package: "postgresql",
        nixpkgs: "postgresql",
    },
    // `cargo xtask dev`'s end-to-end test reads the stored chat back with psql (pg_isready, the
    // dev stack's PostgreSQL readiness check, comes in the same package).
    DebianTool {
        purpose: "reading the dev stack's database back",
        programs: &["psql"],
        package: "postgresql-client",
        nixpkgs: "postgresql",
    },
];

/// Where `tool` is: the first of its programs on PATH, in cargo's bin directory, the sbin
/// directories, or Debian's PostgreSQL directory.
pub fn find_tool(tool: &DebianTool) -> Option<std::path::PathBuf> {
    tool.programs
        .iter()
        .find_map(|program| testkit::postgres::program(program))
}

/// A program the test suite runs that comes from crates.io, installed with `cargo install`.
#[derive(Debug, Clone, Copy)]
pub struct CargoTool {
    pub program: &'static str,
    /// Arguments to `cargo install`, e.g. `["--locked", "s3s-fs", "--version", "0.14.1"]`.
    pub install_args: &'static [&'static str],
    /// The nixpkgs attribute `nix develop` provides it from, if nixpkgs has it; otherwise
    /// `cargo xtask test` installs it with cargo inside the shell too.
    pub nixpkgs: Option<&'static str>,
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
        nixpkgs: None,
    },
    // The Nix checks: unused code in every .nix file.
    CargoTool {
        program: "deadnix",
        install_args: &["--locked", "deadnix", "--version", "1.3.1"],
        nixpkgs: Some("deadnix"),
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

/// The tools none of whose programs is found.
fn missing_tools() -> Vec<&'static DebianTool> {
    DEBIAN_TOOLS
        .iter()
        .filter(|tool| find_tool(tool).is_none())
        .collect()
}

/// The Debian packages that provide `tools`, sorted and once each.
fn debian_packages(tools: &[&DebianTool]) -> Vec<&'static str> {
    let mut packages: Vec<&str> = tools.iter().map(|tool| tool.package).collect();
    packages.sort_unstable();
    packages.dedup();
    packages
}

/// True on Debian and its derivatives, where the packages are installed with apt.
fn is_debian_like() -> bool {
    std::path::Path::new("/etc/debian_version").exists()
        || testkit::find_program("apt-get").is_some()
}

/// What to tell a user of another system: each missing tool, what it is for, and where it
/// comes from.
fn missing_report(missing: &[&DebianTool]) -> String {
    let lines: Vec<String> = missing
        .iter()
        .map(|tool| {
            format!(
                "  {} ({}): nixpkgs `{}`, Debian `{}`",
                tool.programs.join(" or "),
                tool.purpose,
                tool.nixpkgs,
                tool.package
            )
        })
        .collect();
    lines.join("\n")
}

fn ensure_debian_tools(sh: &Shell) -> Result<()> {
    let missing = missing_tools();
    if missing.is_empty() {
        eprintln!("all {} system tools present", DEBIAN_TOOLS.len());
        return Ok(());
    }
    if !is_debian_like() {
        let report = missing_report(&missing);
        let advice = "`nix develop` (nix/shells.nix) provides every one of them; or install them \
                      with this system's package manager";
        if testkit::in_ci() {
            bail!("the test suite needs tools that are missing:\n{report}\n{advice}");
        }
        eprintln!("missing tools (no apt here; their tests skip, saying why):\n{report}\n{advice}");
        return Ok(());
    }
    let packages = debian_packages(&missing);
    let install = format!(
        "apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    );
    if !testkit::is_root() {
        bail!(
            "the test suite needs Debian packages that are missing; as root run:\n  apt-get update && {install}"
        );
    }
    eprintln!("installing: {}", packages.join(" "));
    cmd!(sh, "apt-get update -qq")
        .run()
        .context("apt-get update")?;
    cmd!(
        sh,
        "apt-get install -y -qq --no-install-recommends {packages...}"
    )
    .env("DEBIAN_FRONTEND", "noninteractive")
    .run()
    .with_context(|| format!("installing Debian packages: {install}"))?;
    let still_missing = debian_packages(&missing_tools());
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
        let nix = tool
            .nixpkgs
            .map(|attribute| format!(" (`nix develop` has it: nixpkgs `{attribute}`)"))
            .unwrap_or_default();
        eprintln!(
            "installing {} with cargo install {}{nix}",
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

    /// `nix develop` must hold every tool the suite runs: each nixpkgs attribute named above
    /// appears in nix/shells.nix's test tools as `pkgs.ATTR`.
    #[test]
    fn the_dev_shell_provides_every_system_tool() {
        let path = project::root().join("nix/shells.nix");
        let shells = std::fs::read_to_string(&path).expect("read nix/shells.nix");
        let attributes = DEBIAN_TOOLS
            .iter()
            .map(|tool| tool.nixpkgs)
            .chain(CARGO_TOOLS.iter().filter_map(|tool| tool.nixpkgs));
        // `pkgs.ATTR` not followed by more of an attribute path (`pkgs.nix` is not `pkgs.nixfmt`).
        let names = |attribute: &str| {
            let needle = format!("pkgs.{attribute}");
            shells.match_indices(&needle).any(|(at, _)| {
                shells[at + needle.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
            })
        };
        let missing: Vec<&str> = attributes.filter(|attribute| !names(attribute)).collect();
        assert!(
            missing.is_empty(),
            "{} lacks these nixpkgs attributes of xtask/src/test.rs: {missing:?}",
            path.display()
        );
    }

    #[test]
    fn a_missing_tool_is_reported_with_its_nixpkgs_and_debian_packages() {
        let registry = DEBIAN_TOOLS
            .iter()
            .find(|tool| tool.package == "docker-registry")
            .expect("the registry entry");
        let report = missing_report(&[registry]);
        assert_eq!(
            report,
            "  docker-registry or registry (the distribution registry of the push and release \
             tests): nixpkgs `distribution`, Debian `docker-registry`"
        );
    }

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
