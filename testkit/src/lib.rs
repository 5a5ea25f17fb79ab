//! What cairn's tests share to run real components (nginx, PostgreSQL, the registry, runc,
//! the services themselves) as the standards ask: processes owned by a guard that kills and
//! reaps on drop, ports from binding port 0, readiness polled with a deadline (never a fixed
//! sleep), and a tool that is missing failing loudly under `CI=true`.
//!
//! Services use it as a dev-dependency only; xtask uses its tool lookup to install what the
//! suite needs, and `postgres` to run the scratch clusters of `bench api` and `dev`. Nothing in a shipped service binary may depend on it.

pub mod nginx_container;
pub mod postgres;
pub mod sse;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A child process that is killed and reaped when the guard drops, so a failing test never
/// leaves a server behind.
#[derive(Debug)]
pub struct ProcessGuard {
    name: String,
    child: Child,
}

impl ProcessGuard {
    /// Spawns `command`; panics with the program's name when it cannot start.
    pub fn spawn(name: &str, command: &mut Command) -> ProcessGuard {
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name} ({command:?}): {err}"));
        ProcessGuard {
            name: name.to_owned(),
            child,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Panics when the process has already exited (a server that died at start-up).
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early with {status}", self.name);
        }
    }

    /// The exit status when the process has exited (it is reaped then), else None.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM and waits up to `deadline` for a clean exit; returns the exit status.
    pub fn terminate(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait_for_exit(deadline)
    }

    /// Waits up to `deadline` for the process to exit; returns its status, None on timeout.
    pub fn wait_for_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if start.elapsed() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port that was free a moment ago on 127.0.0.1 (bound to port 0, then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Polls `ready` every 20 ms until it returns true; panics naming `what` after `deadline`.
pub fn wait_until(what: &str, deadline: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < deadline,
            "{what} not ready after {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
pub fn wait_for_port(what: &str, port: u16, deadline: Duration) {
    wait_until(what, deadline, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// True when running under CI (`CI=true`), where a missing tool is a failure, never a skip.
pub fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// Finds `program` on PATH, in cargo's bin directory (for `cargo install`ed tools) and in the
/// sbin directories Debian uses for daemons.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|home| home.join("bin"));
    std::env::split_paths(&path)
        .chain(cargo_bin)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The distribution registry's program names: `docker-registry` in Debian's package,
/// `registry` in nixpkgs' `distribution` (and upstream's releases). Both take `serve CONFIG`.
pub const REGISTRY_PROGRAMS: &[&str] = &["docker-registry", "registry"];

/// The first of `programs` that [`find_program`] finds: one tool that distributions install
/// under different names.
pub fn find_any_program(programs: &[&str]) -> Option<PathBuf> {
    programs.iter().find_map(|program| find_program(program))
}

/// The path of a tool a test needs. Under CI a missing tool panics; elsewhere it prints why the
/// test is skipped and returns `None`, and the test returns early. `install` is the command that
/// provides it, e.g. `apt-get install skopeo`.
#[must_use]
pub fn require_tool(program: &str, install: &str) -> Option<PathBuf> {
    require_any_tool(&[program], install)
}

/// Like [`require_tool`] for a tool that goes by any of `programs` (e.g.
/// [`REGISTRY_PROGRAMS`]); the first found is used.
#[must_use]
pub fn require_any_tool(programs: &[&str], install: &str) -> Option<PathBuf> {
    let names = programs.join(" or ");
    match find_any_program(programs) {
        Some(path) => Some(path),
        None if in_ci() => panic!("{names} is required under CI=true but missing: {install}"),
        None => {
            eprintln!("SKIPPED: {names} not found (install with: {install})");
            None
        }
    }
}

/// A binary of the workspace at `target/<profile>/NAME`, beside the directory holding the
/// running test binary (built there by `cargo test --workspace`, i.e. `cargo xtask test`). Like
/// [`require_tool`]: missing, it panics under CI and is skipped with a reason elsewhere.
#[must_use]
pub fn require_workspace_binary(name: &str) -> Option<PathBuf> {
    let test_binary = std::env::current_exe().expect("test binary path");
    let profile_dir = test_binary.parent()?.parent()?;
    let binary = profile_dir.join(name);
    if binary.is_file() {
        return Some(binary);
    }
    let why = format!("{} is not built (cargo build -p {name})", binary.display());
    assert!(!in_ci(), "{why}");
    eprintln!("SKIPPED: {why}");
    None
}

/// The Docker CLI, when its engine answers. Like [`require_tool`]: under CI a missing CLI or an
/// engine that does not answer `docker info` panics; elsewhere the test is skipped with a reason.
pub fn require_docker() -> Option<PathBuf> {
    let docker = require_tool("docker", "apt-get install docker.io")?;
    let engine = std::process::Command::new(&docker)
        .arg("info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    match engine {
        true => Some(docker),
        false if in_ci() => panic!("the Docker engine is not running (`docker info` fails)"),
        false => {
            eprintln!("SKIPPED: the Docker engine is not running");
            None
        }
    }
}

/// True when the test may go on as root. Under CI a test that needs root panics when it is not
/// (CI runs as root); elsewhere it prints why the test is skipped and returns false, and the
/// test returns early. `needs` says what root is for ("runc", "a mount namespace").
#[must_use]
pub fn require_root(needs: &str) -> bool {
    match is_root() {
        true => true,
        false if in_ci() => panic!("{needs} needs root, and CI runs as root"),
        false => {
            eprintln!("SKIPPED: {needs} needs root");
            false
        }
    }
}

/// True when the process runs as root (runc, unshare and apt-get need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(1).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        TcpListener::bind(("127.0.0.1", port)).expect("port was free");
    }

    #[test]
    fn guard_kills_on_drop() {
        let guard = ProcessGuard::spawn("sleep", Command::new("sleep").arg("60"));
        let pid = guard.id();
        drop(guard);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn finds_sh() {
        assert!(find_program("sh").is_some());
        assert!(find_program("surely-no-such-program-cairn").is_none());
    }
}
