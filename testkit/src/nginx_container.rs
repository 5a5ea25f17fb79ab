//! nginx laid out as in its container, for tests that run the shipped config as root: Debian's
//! `mime.types` and a self-signed certificate in an `/etc/nginx`-shaped folder, and the shell
//! prelude that mounts that folder (and a hosts file naming `gateway`) in a private mount
//! namespace started by `unshare -m`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Copies Debian's `mime.types` into `etc` and writes `certs/privkey.pem` and
/// `certs/fullchain.pem`: a one-day P-256 certificate for `server_name`. Returns the
/// certificate's path (a client's CA for it).
pub fn add_mime_types_and_certificate(openssl: &Path, etc: &Path, server_name: &str) -> PathBuf {
    std::fs::copy("/etc/nginx/mime.types", etc.join("mime.types")).expect("copy mime.types");
    let certs = etc.join("certs");
    std::fs::create_dir_all(&certs).expect("create certs/");
    let status = Command::new(openssl)
        .args(["req", "-x509", "-nodes", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-days", "1"])
        .args(["-subj", &format!("/CN={server_name}")])
        .args(["-addext", &format!("subjectAltName=DNS:{server_name}")])
        .arg("-keyout")
        .arg(certs.join("privkey.pem"))
        .arg("-out")
        .arg(certs.join("fullchain.pem"))
        .stderr(Stdio::null())
        .status()
        .expect("run openssl req");
    assert!(status.success(), "openssl req");
    certs.join("fullchain.pem")
}

/// The first lines of a `sh -c` script for `unshare -m`: `etc` over /etc/nginx, a hosts file
/// (written into `scratch`) naming `gateway` over /etc/hosts, fresh tmpfs over /tmp and over
/// /var/cache/nginx (the config's pid and temp paths: a volume in the container).
pub fn mount_prelude(etc: &Path, scratch: &Path) -> String {
    let hosts = scratch.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost gateway\n").expect("write hosts");
    format!(
        "set -e\nmount --bind {hosts} /etc/hosts\nmount --bind {etc} /etc/nginx\nmount -t tmpfs tmpfs /tmp\nmkdir -p /var/cache/nginx\nmount -t tmpfs tmpfs /var/cache/nginx\n",
        hosts = hosts.display(),
        etc = etc.display(),
    )
}
