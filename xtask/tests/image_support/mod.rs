//! What the image tests share: running the xtask binary, compiling the fixture server, reading a
//! layout's index, finding the cached Garage binary, running a compose project of loaded images.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const FIXTURE_SOURCE: &str = include_str!("fixture.rs");

/// The CA bundle the tests' images carry: one self-signed certificate made for these tests (its
/// key was discarded), so that no test reads the host's /etc/ssl, which a Nix build sandbox
/// lacks. Fixed bytes, so that images built from it are reproducible.
const TEST_CA_BUNDLE: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBzDCCAXOgAwIBAgIUbfYMzbX9pdTaaaJRaX0LVDpj7u4wCgYIKoZIzj0EAwIw\n\
OzE5MDcGA1UEAwwwY2Fpcm4gdGVzdCBDQSBidW5kbGUgKHRlc3RzIG9ubHksIGtl\n\
eSBkaXNjYXJkZWQpMCAXDTI2MTIwNDIzMjMwNVoYDzIxMjYxMTEwMjMyMzA1WjA7\n\
MTkwNwYDVQQDDDBjYWlybiB0ZXN0IENBIGJ1bmRsZSAodGVzdHMgb25seSwga2V5\n\
IGRpc2NhcmRlZCkwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAR+ghDUPE8e7G86\n\
IasYmWETrnOuY7BjfYJc1hTMrClSmfW+OSSFz8WbFzljCy/Es2kyTdE56tl3446Z\n\
m3cep9aro1MwUTAdBgNVHQ4EFgQUUY8DRqiUHLcgJkbZCsS+s6M/Y2gwHwYDVR0j\n\
BBgwFoAUUY8DRqiUHLcgJkbZCsS+s6M/Y2gwDwYDVR0TAQH/BAUwAwEB/zAKBggq\n\
hkjOPQQDAgNHADBEAiBE5qTfdEfvJS2218Mqo+lbm/E7S9xSlcLvV/ZL3rReXwIg\n\
Z4zs7CPO99Ec6QMjsAY1YKLvs29ZkwmAUCD2f3Px1q0=\n\
-----END CERTIFICATE-----\n\
";

/// The test CA bundle as a file (written once per test binary, through temp + rename, since
/// tests run in parallel).
pub fn test_ca_bundle() -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-ca-bundle.pem");
    if std::fs::read(&path).ok().as_deref() != Some(TEST_CA_BUNDLE.as_bytes()) {
        let temp = path.with_extension(format!(
            "pem.{}.{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&temp, TEST_CA_BUNDLE).expect("write the test CA bundle");
        std::fs::rename(&temp, &path).expect("rename the test CA bundle into place");
    }
    path
}

/// Runs `xtask ARGS` with `envs`; panics with its output when it fails.
pub fn xtask(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let output = xtask_unchecked(args, envs);
    assert!(
        output.status.success(),
        "xtask {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `xtask ARGS` with `envs`. `xtask image` gets the test CA bundle unless ARGS name one.
pub fn xtask_unchecked(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command.args(args).env("SOURCE_DATE_EPOCH", "1700000000");
    if args.first() == Some(&"image") && !args.contains(&"--ca-bundle") {
        command.arg("--ca-bundle").arg(test_ca_bundle());
    }
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().expect("running xtask")
}

/// Compiles the fixture server into `dir` (with `marker` baked in, so two fixtures differ).
pub fn compile_fixture(dir: &Path, name: &str, marker: &str) -> PathBuf {
    let source = dir.join(format!("{name}.rs"));
    std::fs::write(
        &source,
        format!("{FIXTURE_SOURCE}\n// {marker}\nstatic _MARKER: &str = {marker:?};\n"),
    )
    .expect("write fixture source");
    let binary = dir.join(name);
    let status = Command::new("rustc")
        .args(["--edition", "2021", "-O", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("running rustc");
    assert!(status.success(), "rustc failed on the fixture");
    binary
}

/// The images named in a layout's index.json: (ref name, manifest digest).
pub fn index(layout: &Path) -> Vec<(String, String)> {
    let text = std::fs::read(layout.join("index.json")).expect("index.json");
    let index: serde_json::Value = serde_json::from_slice(&text).expect("index JSON");
    index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| {
            (
                m["annotations"]["org.opencontainers.image.ref.name"]
                    .as_str()
                    .expect("ref name")
                    .to_owned(),
                m["digest"].as_str().expect("digest").to_owned(),
            )
        })
        .collect()
}

/// A blob of the layout as JSON.
pub fn blob_json(layout: &Path, digest: &str) -> serde_json::Value {
    let path = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    serde_json::from_slice(&std::fs::read(path).expect("blob")).expect("blob JSON")
}

/// The layer digests of image `name`.
pub fn layers(layout: &Path, name: &str) -> Vec<String> {
    let (_, digest) = index(layout)
        .into_iter()
        .find(|(n, _)| n == name)
        .expect("image in index");
    blob_json(layout, &digest)["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest").to_owned())
        .collect()
}

/// The cached Garage binary; built first under CI, None (skip) elsewhere when not built.
pub fn garage_binary() -> Option<PathBuf> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command.args(["build", "garage", "--json"]);
    if !testkit::in_ci() {
        command.arg("--no-build");
    }
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .expect("run xtask build garage");
    if !output.status.success() {
        assert!(
            !testkit::in_ci(),
            "cargo xtask build garage failed under CI"
        );
        eprintln!("SKIPPED: garage is not built (run `cargo xtask build garage`, about 25 min)");
        return None;
    }
    let built: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("build --json prints JSON");
    Some(PathBuf::from(
        built[0]["path"].as_str().expect("a path for garage"),
    ))
}

/// The Docker CLI and docker-compose, with a running engine; None (skipped) outside CI when one
/// is missing, a failure under `CI=true`.
pub fn docker_tools() -> Option<(PathBuf, PathBuf)> {
    let docker = testkit::require_docker()?;
    let compose = testkit::require_tool("docker-compose", "apt-get install docker-compose")?;
    Some((docker, compose))
}

/// One compose project of the test and the images it loaded: `down` and `rmi` on drop, so a
/// failed assertion leaves no container, network or image behind.
pub struct ComposeProject {
    pub docker: PathBuf,
    pub compose: PathBuf,
    pub file: PathBuf,
    pub name: String,
    pub env: Vec<(String, String)>,
    pub images: Vec<String>,
}

impl ComposeProject {
    pub fn command(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.compose)
            .arg("--project-name")
            .arg(&self.name)
            .arg("--file")
            .arg(&self.file)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run docker-compose")
    }

    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.docker)
            .args(args)
            .output()
            .expect("run docker")
    }

    /// `docker inspect --format FORMAT TARGET`, trimmed; empty when it fails.
    pub fn inspect(&self, format: &str, target: &str) -> String {
        let output = self.docker(&["inspect", "--format", format, target]);
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        let _ = self.command(&["down", "--volumes", "--remove-orphans"]);
        for image in &self.images {
            let _ = self.docker(&["rmi", "--force", image]);
        }
    }
}

/// The stderr of a finished command, for assertion messages.
pub fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
