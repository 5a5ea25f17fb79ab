//! The one way cairn runs a PostgreSQL cluster of its own: the api's tests, `cargo xtask bench
//! api` and `cargo xtask dev` all use it. A cluster is a directory (`DIR/data` holds the data,
//! `DIR` the unix socket) and a loopback port; it is created with `initdb` (trust
//! authentication, superuser `postgres`) and served by `postgres` itself, in the foreground, so
//! the caller owns the process. Run as root, both run as the `postgres` account, since initdb
//! refuses root.
//!
//! It never decides where a cluster lives or which port it takes: callers do.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::ProcessGuard;

/// The Debian command that installs every program this module runs.
pub const INSTALL: &str = "apt-get install -y postgresql";

/// A PostgreSQL program (`initdb`, `postgres`, `pg_isready`, `psql`, …): on PATH, or where
/// Debian's `postgresql` package puts the server programs (`/usr/lib/postgresql/<newest>/bin`,
/// not on PATH).
pub fn program(name: &str) -> Option<PathBuf> {
    if let Some(path) = crate::find_program(name) {
        return Some(path);
    }
    let candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    newest(candidates)
}

/// The program of the newest major version. Version directories sort as text only up to
/// 9 -> 10, so they are compared as numbers.
fn newest(mut candidates: Vec<PathBuf>) -> Option<PathBuf> {
    candidates.sort_by_key(|p| major_version(p));
    candidates.pop()
}

fn major_version(program: &Path) -> u32 {
    program
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|v| v.to_str())
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// True when `initdb` and `postgres` are installed. For a test: under CI a missing PostgreSQL
/// panics; elsewhere it prints why the test is skipped and returns false.
#[must_use]
pub fn require() -> bool {
    let missing: Vec<&str> = ["initdb", "postgres"]
        .into_iter()
        .filter(|name| program(name).is_none())
        .collect();
    match missing.as_slice() {
        [] => true,
        _ if crate::in_ci() => panic!(
            "{} required under CI=true but missing: {INSTALL}",
            missing.join(", ")
        ),
        _ => {
            eprintln!(
                "SKIPPED: {} not found (install with: {INSTALL})",
                missing.join(", ")
            );
            false
        }
    }
}

/// A cluster directory and the loopback port its server listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Holds `data/` and the server's unix socket (keep it short: socket paths end near 100
    /// bytes).
    pub dir: PathBuf,
    pub port: u16,
}

impl Cluster {
    pub fn new(dir: impl Into<PathBuf>, port: u16) -> Cluster {
        Cluster {
            dir: dir.into(),
            port,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The superuser's connection URL over TCP (trust authentication, no password).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// True when `initdb` has completed here (a data directory with its version file).
    pub fn is_initialised(&self) -> bool {
        self.data_dir().join("PG_VERSION").is_file()
    }

    /// Runs `initdb` into `data_dir()`: UTF-8, trust authentication, superuser `postgres`.
    pub fn init(&self) -> io::Result<()> {
        let initdb = program("initdb").ok_or_else(|| missing("initdb"))?;
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            io::Error::new(e.kind(), format!("creating {}: {e}", self.dir.display()))
        })?;
        let data = self.data_dir();
        let mut init = Command::new(&initdb);
        init.args([
            "--auth=trust",
            "--username=postgres",
            "--no-sync",
            "--encoding=UTF8",
            "-D",
        ])
        .arg(&data)
        .stdin(Stdio::null());
        self.run_as_postgres(&mut init)?;
        let output = init
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("running {}: {e}", initdb.display())))?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "initdb -D {} failed ({}): {}",
                data.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(())
    }

    /// The server in the foreground: `postgres -D DIR/data -p PORT`, TCP on 127.0.0.1 only,
    /// its socket in `dir`, plus `settings` as `-c NAME=VALUE`. Standard streams are left to
    /// the caller.
    pub fn server_command(&self, settings: &[(&str, &str)]) -> io::Result<Command> {
        let postgres = program("postgres").ok_or_else(|| missing("postgres"))?;
        let mut server = Command::new(postgres);
        server
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(&self.dir)
            .stdin(Stdio::null());
        for (name, value) in settings {
            server.arg("-c").arg(format!("{name}={value}"));
        }
        self.run_as_postgres(&mut server)?;
        Ok(server)
    }

    /// True when the server accepts connections (see [`is_ready`]).
    pub fn is_ready(&self) -> bool {
        is_ready(self.port)
    }

    /// Initialises the cluster when needed, starts its server (output discarded) and waits up
    /// to `deadline` for it to accept connections.
    pub fn start(&self, settings: &[(&str, &str)], deadline: Duration) -> io::Result<Running> {
        if !self.is_initialised() {
            self.init()?;
        }
        let mut command = self.server_command(settings)?;
        command.stdout(Stdio::null()).stderr(Stdio::null());
        let mut server = ProcessGuard::spawn("postgres", &mut command);
        let start = Instant::now();
        while !self.is_ready() {
            if let Some(status) = server.exit_status() {
                return Err(io::Error::other(format!(
                    "postgres -D {} on port {} exited at start-up: {status}",
                    self.data_dir().display(),
                    self.port
                )));
            }
            if start.elapsed() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "postgres on 127.0.0.1:{} not ready after {deadline:?}",
                        self.port
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Running {
            cluster: self.clone(),
            server,
        })
    }

    /// As root, hands the cluster directory to the `postgres` account and runs `command` as it.
    fn run_as_postgres(&self, command: &mut Command) -> io::Result<()> {
        if !crate::is_root() {
            return Ok(());
        }
        let (uid, gid) = postgres_account()?;
        unreachable_ancestor(&self.dir)?;
        std::os::unix::fs::chown(&self.dir, Some(uid), Some(gid))
            .map_err(|e| io::Error::new(e.kind(), format!("chown {}: {e}", self.dir.display())))?;
        command.uid(uid).gid(gid);
        Ok(())
    }
}

/// True when a server on 127.0.0.1:port accepts connections: `pg_isready` when installed (a
/// server that is still starting up or recovering answers "no"), else a TCP connect.
pub fn is_ready(port: u16) -> bool {
    // Asked every few milliseconds while a server starts: look the program up once.
    static PG_ISREADY: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    match PG_ISREADY.get_or_init(|| program("pg_isready")) {
        Some(pg_isready) => Command::new(pg_isready)
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-t", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        None => std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    }
}

/// The `postgres` account must be able to enter every directory above the cluster (a
/// temporary directory is 0700 root): fail naming the first one it cannot.
fn unreachable_ancestor(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let absolute = std::path::absolute(dir)?;
    for ancestor in absolute.ancestors().skip(1) {
        let mode = std::fs::metadata(ancestor)?.permissions().mode();
        if mode & 0o001 == 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "PostgreSQL runs as the postgres account (initdb refuses root), which cannot enter {} (mode {:o}): put the cluster {} under a directory others may enter",
                    ancestor.display(),
                    mode & 0o7777,
                    dir.display()
                ),
            ));
        }
    }
    Ok(())
}

fn missing(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{name} is not installed: {INSTALL}"),
    )
}

/// The uid and gid of the `postgres` account in /etc/passwd.
fn postgres_account() -> io::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| io::Error::new(e.kind(), format!("reading /etc/passwd: {e}")))?;
    let fields: Option<(u32, u32)> = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .and_then(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
        });
    fields.ok_or_else(|| {
        io::Error::other(format!(
            "running PostgreSQL as root needs a postgres account in /etc/passwd: {INSTALL}"
        ))
    })
}

/// A running server owned by the caller: a fast shutdown (SIGINT) when dropped, so no backend
/// is left behind, then SIGKILL if it has not exited within 10 s.
#[derive(Debug)]
pub struct Running {
    pub cluster: Cluster,
    server: ProcessGuard,
}

impl Running {
    pub fn url(&self) -> String {
        self.cluster.url()
    }

    pub fn port(&self) -> u16 {
        self.cluster.port
    }

    /// Stops the server with a fast shutdown and returns its exit status (None: it had to be
    /// killed).
    pub fn stop(mut self) -> Option<ExitStatus> {
        self.fast_shutdown()
    }

    fn fast_shutdown(&mut self) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-INT", &self.server.id().to_string()])
            .status();
        self.server.wait_for_exit(Duration::from_secs(10))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.server.exit_status().is_none() {
            self.fast_shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_major_version_wins() {
        let found = vec![
            PathBuf::from("/usr/lib/postgresql/9.6/bin/initdb"),
            PathBuf::from("/usr/lib/postgresql/15/bin/initdb"),
            PathBuf::from("/usr/lib/postgresql/10/bin/initdb"),
        ];
        assert_eq!(
            newest(found),
            Some(PathBuf::from("/usr/lib/postgresql/15/bin/initdb"))
        );
        assert_eq!(newest(Vec::new()), None);
    }

    #[test]
    fn url_names_the_port() {
        let cluster = Cluster::new("/tmp/x", 5544);
        assert_eq!(cluster.url(), "postgres://postgres@127.0.0.1:5544/postgres");
        assert_eq!(cluster.data_dir(), PathBuf::from("/tmp/x/data"));
    }

    #[test]
    fn starts_a_cluster_that_accepts_connections_and_stops() {
        if !require() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("cairn-pg-testkit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let running = Cluster::new(&dir, crate::free_port())
            .start(&[("fsync", "off")], Duration::from_secs(30))
            .expect("PostgreSQL starts");
        assert!(running.cluster.is_initialised());
        assert!(running.cluster.is_ready());
        let port = running.port();
        let status = running.stop().expect("fast shutdown within 10 s");
        assert!(status.success(), "postgres exited with {status}");
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
