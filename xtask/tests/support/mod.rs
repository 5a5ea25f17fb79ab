//! What the push tests share: a real distribution registry (Debian's `docker-registry`, nixpkgs'
//! `registry`)
//! configured by the test, an OCI layout built with umoci from random files, the push
//! command itself, and checks with skopeo.

pub mod pki;
pub mod proxy;
pub mod token;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use testkit::ProcessGuard;

pub const MIB: u64 = 1 << 20;

/// The tools these tests run; None (skip) outside CI when one is missing.
pub fn tools_present() -> bool {
    let registry = testkit::require_any_tool(
        testkit::REGISTRY_PROGRAMS,
        "apt-get install docker-registry, or nix develop",
    );
    registry.is_some()
        && [
            ("umoci", "apt-get install umoci"),
            ("skopeo", "apt-get install skopeo"),
            ("htpasswd", "apt-get install apache2-utils"),
        ]
        .iter()
        .all(|(program, install)| testkit::require_tool(program, install).is_some())
}

/// How the registry authenticates.
pub enum RegistryAuth<'a> {
    None,
    /// htpasswd Basic auth (needs TLS: distribution refuses Basic over plain HTTP).
    Htpasswd {
        file: &'a Path,
    },
    Token {
        realm: &'a str,
        rootcertbundle: &'a Path,
    },
}

/// TLS for the registry.
pub enum RegistryTls<'a> {
    Plain,
    Tls { cert: &'a Path, key: &'a Path },
}

/// Extra lines (two-space indented) for the `storage:` and `http:` sections.
#[derive(Default)]
pub struct ConfigExtras {
    pub storage: &'static str,
    pub http: &'static str,
}

pub struct Registry {
    pub port: u16,
    pub root: PathBuf,
    _process: ProcessGuard,
}

impl Registry {
    pub fn start(dir: &Path, auth: RegistryAuth, tls: RegistryTls) -> Registry {
        Registry::start_with(dir, auth, tls, ConfigExtras::default())
    }

    /// `start` with extra lines in the registry's configuration.
    pub fn start_with(
        dir: &Path,
        auth: RegistryAuth,
        tls: RegistryTls,
        extras: ConfigExtras,
    ) -> Registry {
        let port = testkit::free_port();
        let root = dir.join("registry-data");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n{}http:\n  addr: 127.0.0.1:{port}\n  secret: cairn-test-secret\n{}",
            root.display(),
            extras.storage,
            extras.http,
        );
        if let RegistryTls::Tls { cert, key } = tls {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        match auth {
            RegistryAuth::None => {}
            RegistryAuth::Htpasswd { file } => config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: cairn-test\n    path: {}\n",
                file.display()
            )),
            RegistryAuth::Token {
                realm,
                rootcertbundle,
            } => config.push_str(&format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                token::SERVICE,
                token::ISSUER,
                rootcertbundle.display()
            )),
        }
        let config_path = dir.join("registry.yml");
        std::fs::write(&config_path, config).expect("write registry config");
        let log = std::fs::File::create(dir.join("registry.log")).expect("registry log");
        let program =
            testkit::find_any_program(testkit::REGISTRY_PROGRAMS).expect("the registry program");
        let mut process = ProcessGuard::spawn(
            "docker-registry",
            Command::new(program)
                .arg("serve")
                .arg(&config_path)
                .stdout(Stdio::null())
                .stderr(log),
        );
        testkit::wait_for_port("docker-registry", port, Duration::from_secs(20));
        process.assert_running();
        Registry {
            port,
            root,
            _process: process,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Checks that every blob the registry stores hashes to its name: nothing corrupt.
    pub fn assert_blobs_intact(&self) -> usize {
        let blobs = self.root.join("docker/registry/v2/blobs/sha256");
        let mut count = 0;
        for prefix in std::fs::read_dir(&blobs).expect("registry blobs dir") {
            for blob in std::fs::read_dir(prefix.expect("entry").path()).expect("prefix dir") {
                let blob = blob.expect("entry").path();
                let name = blob
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned();
                let data = std::fs::read(blob.join("data")).expect("blob data");
                assert_eq!(hex_sha256(&data), name, "corrupt blob in the registry");
                count += 1;
            }
        }
        count
    }
}

pub fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `size` pseudo-random (incompressible) bytes to `path`.
fn random_file(path: &Path, size: u64, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut data = vec![0u8; usize::try_from(size).expect("size fits")];
    rng.fill(&mut data);
    std::fs::write(path, data).expect("write random file");
}

fn umoci(args: &[&str]) {
    let status = Command::new("umoci")
        .args(args)
        .status()
        .expect("run umoci");
    assert!(status.success(), "umoci {args:?} failed: {status}");
}

/// An OCI layout with two images: `gateway` (a 3 MiB layer) and `api` (the same 3 MiB layer,
/// so it is shared, plus a `big_mib` layer). Returns the layout directory.
pub fn build_layout(dir: &Path, big_mib: u64) -> PathBuf {
    let layout = dir.join("oci");
    let layout_str = layout.to_str().expect("utf-8 path");
    let files = dir.join("files");
    std::fs::create_dir_all(&files).expect("files dir");
    let shared = files.join("shared.bin");
    let big = files.join("big.bin");
    random_file(&shared, 3 * MIB, 1);
    random_file(&big, big_mib * MIB, 2);
    umoci(&["init", "--layout", layout_str]);
    for image in ["gateway", "api"] {
        let reference = format!("{layout_str}:{image}");
        umoci(&["new", "--image", &reference]);
        umoci(&[
            "insert",
            "--rootless",
            "--image",
            &reference,
            shared.to_str().expect("utf-8"),
            "/shared.bin",
        ]);
    }
    umoci(&[
        "insert",
        "--rootless",
        "--image",
        &format!("{layout_str}:api"),
        big.to_str().expect("utf-8"),
        "/big.bin",
    ]);
    layout
}

/// An OCI layout holding one image, `name`, with one 64 KiB file made from `seed`: two seeds
/// give two different images under the same name.
#[allow(dead_code)] // used by tests/pin.rs; tests/push.rs shares this module
pub fn build_one_image_layout(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let layout = dir.join("oci");
    let layout_str = layout.to_str().expect("utf-8 path");
    std::fs::create_dir_all(dir).expect("layout parent");
    let file = dir.join(format!("content-{seed}.bin"));
    random_file(&file, 64 << 10, seed);
    let reference = format!("{layout_str}:{name}");
    umoci(&["init", "--layout", layout_str]);
    umoci(&["new", "--image", &reference]);
    umoci(&[
        "insert",
        "--rootless",
        "--image",
        &reference,
        file.to_str().expect("utf-8"),
        "/content.bin",
    ]);
    layout
}

/// Runs `cargo xtask push … --json` and returns its report; panics with stderr on failure.
pub fn push(
    layout: &Path,
    registry: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let output = push_command(layout, registry, extra, env)
        .output()
        .expect("run xtask push");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "push failed: {stderr}");
    eprintln!("{stderr}");
    serde_json::from_slice(&output.stdout).expect("push --json prints JSON")
}

pub fn push_command(
    layout: &Path,
    registry: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Command {
    let mut command = registry_xtask();
    command
        .args(["push", "--json", "--layout"])
        .arg(layout)
        .args(["--registry", registry])
        .args(extra)
        // An empty Docker config: the tests never read the user's own credentials.
        .env(
            "DOCKER_CONFIG",
            layout
                .parent()
                .expect("layout parent")
                .join("no-docker-config"),
        );
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// The digest index.json of `layout` gives the image named `name`.
pub fn layout_digest(layout: &Path, name: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index.json parses");
    index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == name)
        .and_then(|m| m["digest"].as_str())
        .expect("image in index")
        .to_owned()
}

/// Flags that let skopeo reach the registry: TLS verification off for plain HTTP, or the
/// test CA, plus credentials.
pub struct SkopeoAccess {
    pub flags: Vec<String>,
}

/// Asserts that `skopeo inspect` reports the layout's digest for `name:tag`, and that
/// `skopeo copy` back into a fresh OCI layout gives identical manifest and blobs.
pub fn assert_round_trip(
    layout: &Path,
    host_repo: &str,
    name: &str,
    tag: &str,
    access: &SkopeoAccess,
    scratch: &Path,
) {
    let expected = layout_digest(layout, name);
    let reference = format!("docker://{host_repo}/{name}:{tag}");
    let inspect = Command::new("skopeo")
        .arg("inspect")
        .args(&access.flags)
        .arg(&reference)
        .output()
        .expect("run skopeo inspect");
    assert!(
        inspect.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let inspected: serde_json::Value =
        serde_json::from_slice(&inspect.stdout).expect("inspect JSON");
    assert_eq!(
        inspected["Digest"],
        expected.as_str(),
        "registry digest of {reference}"
    );

    let copy = scratch.join(format!("copy-{name}-{tag}"));
    let _ = std::fs::remove_dir_all(&copy);
    let src_flags: Vec<String> = access
        .flags
        .iter()
        .map(|f| f.replacen("--", "--src-", 1))
        .collect();
    let status = Command::new("skopeo")
        .arg("copy")
        .args(&src_flags)
        .arg(&reference)
        .arg(format!("oci:{}:{name}", copy.display()))
        .stdout(Stdio::null())
        .status()
        .expect("run skopeo copy");
    assert!(status.success(), "skopeo copy {reference}");
    assert_eq!(
        layout_digest(&copy, name),
        expected,
        "copied manifest digest"
    );
    let copied_blobs = copy.join("blobs/sha256");
    for entry in std::fs::read_dir(&copied_blobs).expect("copied blobs") {
        let entry = entry.expect("entry");
        let ours = layout.join("blobs/sha256").join(entry.file_name());
        let theirs = std::fs::read(entry.path()).expect("copied blob");
        assert_eq!(
            hex_sha256(&theirs),
            entry.file_name().to_string_lossy(),
            "copied blob hash"
        );
        assert_eq!(
            std::fs::read(&ours).expect("our blob with the same digest"),
            theirs
        );
    }
}

/// `xtask` for a command that talks to the test's registry: on loopback only (a proxy from the
/// environment must not sit between it and the registry), and never with the user's registry
/// credentials from the environment.
pub fn registry_xtask() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    for variable in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "CAIRN_REGISTRY_USERNAME",
        "CAIRN_REGISTRY_PASSWORD",
    ] {
        command.env_remove(variable);
    }
    command
}
