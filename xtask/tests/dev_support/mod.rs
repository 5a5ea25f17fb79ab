//! What the tests of the local stack share: the service binaries, a set of free ports, the
//! `xtask` command, and the detached stack itself, stopped with `dev down` however a test ends.
//! Used by the `dev` and `browser` test binaries; each uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Ports of the default topology the stack uses (before the offset).
pub const TOPOLOGY_PORTS: [u16; 6] = [5432, 3900, 8000, 8001, 8080, 8088];
pub const NGINX_PORT: u16 = 8088;
pub const POSTGRES_PORT: u16 = 5432;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// `target/debug`, where this test binary's profile puts the service binaries.
pub fn service_binaries() -> PathBuf {
    let test_binary = std::env::current_exe().expect("test binary path");
    let profile_dir = test_binary
        .parent()
        .and_then(Path::parent)
        .expect("profile directory")
        .to_owned();
    let missing = ["gateway", "api", "inference"]
        .iter()
        .any(|name| !profile_dir.join(name).is_file());
    if missing {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--locked",
                "-p",
                "gateway",
                "-p",
                "api",
                "-p",
                "inference",
            ])
            .current_dir(workspace_root())
            .status()
            .expect("cargo build");
        assert!(status.success(), "building the services");
    }
    profile_dir
}

pub fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// An offset that puts every port of the stack on a free port (other stacks may run here).
pub fn free_offset() -> u16 {
    for _ in 0..200 {
        let offset = 20000 + fastrand::u16(0..20000);
        if TOPOLOGY_PORTS
            .iter()
            .all(|port| port_is_free(port + offset))
        {
            return offset;
        }
    }
    panic!("no free set of ports found");
}

pub fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .expect("run xtask")
}

pub fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A temporary directory and the stack's state directory inside it. Run as root, PostgreSQL
/// runs as the postgres account, which must be able to enter the directory.
pub fn scratch_state_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod the temp dir");
    let state_dir = dir.path().join("dev");
    (dir, state_dir)
}

/// Stops the stack when the test ends, however it ends.
pub struct Stack {
    pub state_dir: PathBuf,
}

impl Stack {
    /// `cargo xtask dev --detach` on the ports moved by `offset`, with the service binaries of
    /// `bin_dir`; panics with the command's output when it fails. Returns its output.
    pub fn up_detached(state_dir: &Path, offset: u16, bin_dir: &Path) -> (Stack, String) {
        let stack = Stack {
            state_dir: state_dir.to_owned(),
        };
        let up = xtask(&[
            "dev",
            "--detach",
            "--state-dir",
            &state_dir.display().to_string(),
            "--port-offset",
            &offset.to_string(),
            "--bin-dir",
            &bin_dir.display().to_string(),
            // s3s-fs when installed (CI installs it), else the api's local directory.
            "--storage",
            "auto",
        ]);
        let up_text = text(&up);
        assert!(up.status.success(), "dev --detach failed:\n{up_text}");
        (stack, up_text)
    }

    pub fn down(&self) -> Output {
        xtask(&[
            "dev",
            "down",
            "--state-dir",
            &self.state_dir.display().to_string(),
        ])
    }

    pub fn state(&self) -> Value {
        let path = self.state_dir.join("dev.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).expect("dev.json is JSON")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.down();
    }
}
