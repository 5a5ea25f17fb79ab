//! nginx as the edge test runs it: the default topology rendered by `cargo xtask render` with
//! its ports moved to free loopback ports, the local variant as a plain process, the TLS variant
//! in a private mount namespace laid out like its container, and `openssl s_client` as the TLS
//! client.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use testkit::ProcessGuard;

use super::{DEADLINE, workspace_root};

/// The site's server name in the default topology (and the test certificate's).
pub const SERVER_NAME: &str = "cairn.example.com";

/// The loopback ports of one run.
pub struct Ports {
    /// nginx's local variant.
    pub local: u16,
    /// nginx's TLS variant: the redirecting HTTP server and the HTTPS one.
    pub http: u16,
    pub https: u16,
    pub gateway: u16,
    pub api: u16,
}

impl Ports {
    pub fn free() -> Ports {
        Ports {
            local: testkit::free_port(),
            http: testkit::free_port(),
            https: testkit::free_port(),
            gateway: testkit::free_port(),
            api: testkit::free_port(),
        }
    }
}

/// Renders the default topology, its nginx ports and the gateway's port moved to `ports`,
/// through `cargo xtask render`; returns the server-a nginx folder.
pub fn render_nginx(dir: &Path, ports: &Ports) -> PathBuf {
    let root = workspace_root();
    let deploy = dir.join("deploy");
    std::fs::create_dir_all(deploy.join("files")).expect("deploy folder");
    let mut topology =
        std::fs::read_to_string(root.join("deploy/topology.toml")).expect("deploy/topology.toml");
    for (line, moved) in [
        (
            "\nlocal_port = 8088\n",
            format!("\nlocal_port = {}\n", ports.local),
        ),
        (
            "\nlocal_upstream = \"127.0.0.1:8080\"\n",
            format!("\nlocal_upstream = \"127.0.0.1:{}\"\n", ports.gateway),
        ),
        (
            "\nhttp_port = 8080\n",
            format!("\nhttp_port = {}\n", ports.http),
        ),
        (
            "\nhttps_port = 8443\n",
            format!("\nhttps_port = {}\n", ports.https),
        ),
        // The gateway service's port: the TLS variant's upstream is `gateway:PORT`.
        ("\nport = 8080\n", format!("\nport = {}\n", ports.gateway)),
    ] {
        assert_eq!(
            topology.matches(line).count(),
            1,
            "deploy/topology.toml: {line:?} moved"
        );
        topology = topology.replace(line, &moved);
    }
    std::fs::write(deploy.join("topology.toml"), topology).expect("write topology");
    for entry in std::fs::read_dir(root.join("deploy/files")).expect("deploy/files") {
        let path = entry.expect("entry").path();
        std::fs::copy(
            &path,
            deploy.join("files").join(path.file_name().expect("name")),
        )
        .expect("copy a server file");
    }
    let rendered = dir.join("rendered");
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("render")
        .arg("--topology")
        .arg(deploy.join("topology.toml"))
        .arg("--out")
        .arg(&rendered)
        .output()
        .expect("run xtask render");
    assert!(
        output.status.success(),
        "xtask render: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    rendered.join("server-a/nginx")
}

pub fn start_local_nginx(nginx: &Path, prefix: &Path) -> ProcessGuard {
    ProcessGuard::spawn(
        "nginx (local variant)",
        Command::new(nginx)
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(prefix.join("nginx-local.conf"))
            // One process: the guard's kill then leaves no orphaned worker behind.
            .args(["-e", "stderr", "-g", "daemon off; master_process off;"])
            .stdout(Stdio::null()),
    )
}

/// A folder laid out like the nginx container's `/etc/nginx`: the rendered server-a folder,
/// Debian's mime.types (the image's own) and a self-signed certificate for `SERVER_NAME` in
/// `certs/`, as the compose file mounts them. Returns the certificate's path.
pub fn container_etc_nginx(openssl: &Path, rendered: &Path, etc: &Path) -> PathBuf {
    let status = Command::new("cp")
        .arg("-a")
        .arg(rendered)
        .arg(etc)
        .status()
        .expect("cp");
    assert!(status.success(), "copying {}", rendered.display());
    testkit::nginx_container::add_mime_types_and_certificate(openssl, etc, SERVER_NAME)
}

/// The shipped TLS `nginx.conf` in a private mount namespace: `etc` over /etc/nginx, a hosts
/// file naming `gateway` over /etc/hosts, a fresh tmpfs over /tmp (its pid and temp paths). The
/// network namespace is the host's, so it listens on loopback next to the gateway.
pub fn start_tls_nginx(nginx: &Path, unshare: &Path, etc: &Path, dir: &Path) -> ProcessGuard {
    let script = format!(
        "{prelude}exec {nginx} -e stderr -p /etc/nginx/ -c /etc/nginx/nginx.conf -g 'daemon off; master_process off;'",
        prelude = testkit::nginx_container::mount_prelude(etc, dir),
        nginx = nginx.display(),
    );
    ProcessGuard::spawn(
        "nginx (TLS variant)",
        Command::new(unshare)
            .args(["-m", "sh", "-c", &script])
            .stdout(Stdio::null()),
    )
}

/// A TLS connection to nginx through `openssl s_client` (HTTP/1.1 by ALPN, TLS 1.3, the
/// certificate checked against `ca` and `SERVER_NAME`): the returned socket carries the
/// plaintext both ways.
pub fn tls_connection(openssl: &Path, port: u16, ca: &Path) -> (UnixStream, ProcessGuard) {
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    let stdin = theirs.try_clone().expect("clone");
    let client = ProcessGuard::spawn(
        "openssl s_client",
        Command::new(openssl)
            .args([
                "s_client",
                "-quiet",
                "-nocommands",
                "-tls1_3",
                "-alpn",
                "http/1.1",
            ])
            .args(["-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", SERVER_NAME, "-verify_hostname", SERVER_NAME])
            .arg("-CAfile")
            .arg(ca)
            .arg("-verify_return_error")
            .stdin(Stdio::from(OwnedFd::from(stdin)))
            .stdout(Stdio::from(OwnedFd::from(theirs))),
    );
    ours.set_read_timeout(Some(DEADLINE)).expect("timeout");
    (ours, client)
}
