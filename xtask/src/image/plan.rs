//! What goes into an image, decided without writing anything: the input (`ImageSpec`), the
//! layers in their fixed order (system, CUDA groups, application) and the image config document.
//!
//! The layer order and contents are the contract that makes layers shareable: the system layer
//! holds only the ELF closure and the base files, so every image built from the same libraries
//! gets the same system layer digest.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::cuda;
use super::elf::SharedLibrary;
use super::layer::{EntrySource, LayerEntry, LayerPlan};

/// The non-root user every image runs as.
pub const USER_ID: u64 = 65532;
pub const BIN_DIR: &str = "/usr/local/bin";
/// Where an image with a launcher keeps the binary the launcher execs (`cuda-launch`'s
/// `LIBEXEC_DIR`).
pub const LIBEXEC_DIR: &str = "/usr/local/libexec/cairn";
pub const CA_PATH: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A host file copied into the application layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraFile {
    pub host_path: PathBuf,
    pub image_path: String,
    pub mode: u32,
}

/// CUDA libraries for a GPU image: the directory they come from and the groups it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaInput {
    pub dir: PathBuf,
    pub groups: Vec<cuda::CudaGroup>,
}

/// The `org.opencontainers.image.*` labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    pub source: String,
    pub revision: String,
    pub version: String,
}

/// Everything one image is made from. The binary may come from a cargo build, a Nix store path
/// or anywhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The ref name in index.json (`gateway`, `inference-cuda`).
    pub name: String,
    /// cairn's binary at /usr/local/bin/`binary_name`; None for an image of packages only.
    pub binary: Option<PathBuf>,
    /// The file name under /usr/local/bin.
    pub binary_name: String,
    /// A launcher packed at /usr/local/bin/`binary_name` in the binary's place, the binary then
    /// at /usr/local/libexec/cairn/`binary_name` (GPU images: `cuda-launch`, which checks for the
    /// driver before it execs the CUDA build). Its ELF closure is packed with the binary's.
    pub launcher: Option<PathBuf>,
    /// The config's Entrypoint and Cmd (a service: its binary, no Cmd).
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// The config's StopSignal (PostgreSQL: SIGINT, its fast shutdown); None: SIGTERM.
    pub stop_signal: Option<String>,
    /// The Debian package set (of `deploy/debian.lock`) whose files the image carries whole.
    pub debian_set: Option<String>,
    /// Directories inside the image owned by the non-root user.
    pub writable_dirs: Vec<String>,
    pub extra_files: Vec<ExtraFile>,
    /// Programs from this machine (a Nix store closure) at their image paths, executable, their
    /// ELF closure in the system layer: what an image of packages is made of when it is built
    /// from a store closure instead of its Debian package set (`--program`).
    pub programs: Vec<ExtraFile>,
    pub ports: Vec<u16>,
    pub env: Vec<(String, String)>,
    pub cuda: Option<CudaInput>,
    pub provenance: Provenance,
}

fn root_entry(source: EntrySource, mode: u32) -> LayerEntry {
    LayerEntry {
        source,
        mode,
        uid: 0,
        gid: 0,
    }
}

/// The system layer: the ELF closure (minus CUDA libraries, as ready entries), the CA bundle
/// when the image has one, passwd, group, /tmp.
pub fn system_layer(
    libraries: Vec<(String, LayerEntry)>,
    ca_bundle: Option<EntrySource>,
) -> LayerPlan {
    let mut plan = LayerPlan::new("system");
    for (path, entry) in libraries {
        plan.insert(&path, entry);
    }
    if let Some(ca_bundle) = ca_bundle {
        plan.insert(CA_PATH, root_entry(ca_bundle, 0o644));
    }
    let passwd = format!(
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{USER_ID}:{USER_ID}:nonroot:/home/nonroot:/sbin/nologin\n"
    );
    let group = format!("root:x:0:\nnonroot:x:{USER_ID}:\n");
    plan.insert(
        "/etc/passwd",
        root_entry(EntrySource::Bytes(passwd.into_bytes()), 0o644),
    );
    plan.insert(
        "/etc/group",
        root_entry(EntrySource::Bytes(group.into_bytes()), 0o644),
    );
    plan.insert("/tmp", root_entry(EntrySource::Directory, 0o1777));
    plan.insert("/home/nonroot", owned_directory());
    plan
}

/// The host libraries of `elf::closure` as layer entries (a file reached twice: a symlink).
pub fn host_library_entries(libraries: &[SharedLibrary]) -> Vec<(String, LayerEntry)> {
    libraries
        .iter()
        .map(|library| {
            let source = match &library.same_as {
                Some(first) => EntrySource::Symlink(first.clone()),
                None => EntrySource::HostFile(library.host_path.clone()),
            };
            (library.image_path.clone(), root_entry(source, 0o755))
        })
        .collect()
}

fn owned_directory() -> LayerEntry {
    LayerEntry {
        source: EntrySource::Directory,
        mode: 0o755,
        uid: USER_ID,
        gid: USER_ID,
    }
}

/// The application layer: the binary, the extra files, the programs and the user's writable
/// directories. A program wins over an extra file at the same path (a tree of a store path
/// that holds it), so it keeps its executable mode.
pub fn app_layer(spec: &ImageSpec) -> LayerPlan {
    let mut plan = LayerPlan::new("app");
    if let Some(binary) = &spec.binary {
        plan.insert(
            &binary_path(spec),
            root_entry(EntrySource::HostFile(binary.clone()), 0o755),
        );
    }
    if let Some(launcher) = &spec.launcher {
        plan.insert(
            &format!("{BIN_DIR}/{}", spec.binary_name),
            root_entry(EntrySource::HostFile(launcher.clone()), 0o755),
        );
    }
    for dir in &spec.writable_dirs {
        plan.insert(dir, owned_directory());
    }
    for extra in &spec.extra_files {
        plan.insert(
            &extra.image_path,
            root_entry(EntrySource::HostFile(extra.host_path.clone()), extra.mode),
        );
    }
    for program in &spec.programs {
        plan.insert(
            &program.image_path,
            root_entry(EntrySource::HostFile(program.host_path.clone()), 0o755),
        );
    }
    plan
}

/// Where the binary sits in the image: /usr/local/bin, or behind its launcher in
/// /usr/local/libexec/cairn.
pub fn binary_path(spec: &ImageSpec) -> String {
    match spec.launcher {
        Some(_) => format!("{LIBEXEC_DIR}/{}", spec.binary_name),
        None => format!("{BIN_DIR}/{}", spec.binary_name),
    }
}

/// The environment of the config, sorted by name after PATH.
pub fn environment(spec: &ImageSpec) -> Vec<String> {
    let mut env: Vec<(String, String)> = vec![("PATH".into(), format!("{BIN_DIR}:/usr/bin:/bin"))];
    // Images of Debian packages carry no CA bundle (nginx and PostgreSQL verify no peers).
    if spec.debian_set.is_none() {
        env.push(("SSL_CERT_FILE".into(), CA_PATH.into()));
    }
    if spec.cuda.is_some() {
        env.extend(
            cuda::ENV
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
    }
    for (key, value) in &spec.env {
        env.retain(|(existing, _)| existing != key);
        env.push((key.clone(), value.clone()));
    }
    env.sort_by(|a, b| (a.0 != "PATH", &a.0).cmp(&(b.0 != "PATH", &b.0)));
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The image config document (before canonical encoding).
pub fn config(spec: &ImageSpec, created: &str, diff_ids: &[String]) -> Value {
    let ports: serde_json::Map<String, Value> = spec
        .ports
        .iter()
        .map(|port| (format!("{port}/tcp"), json!({})))
        .collect();
    let labels = json!({
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.revision": spec.provenance.revision,
        "org.opencontainers.image.source": spec.provenance.source,
        "org.opencontainers.image.version": spec.provenance.version,
    });
    let mut config = json!({
        "User": format!("{USER_ID}:{USER_ID}"),
        "Entrypoint": spec.entrypoint,
        "Env": environment(spec),
        "WorkingDir": "/",
        "Labels": labels,
    });
    if !spec.cmd.is_empty() {
        config["Cmd"] = json!(spec.cmd);
    }
    if let Some(signal) = &spec.stop_signal {
        config["StopSignal"] = json!(signal);
    }
    if !ports.is_empty() {
        config["ExposedPorts"] = Value::Object(ports);
    }
    json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ImageSpec {
        ImageSpec {
            name: "gateway".into(),
            binary: Some("/bin/true".into()),
            binary_name: "gateway".into(),
            launcher: None,
            entrypoint: vec!["/usr/local/bin/gateway".into()],
            cmd: vec![],
            stop_signal: None,
            debian_set: None,
            writable_dirs: vec![],
            extra_files: vec![],
            programs: vec![],
            ports: vec![8080],
            env: vec![("RUST_LOG".into(), "info".into())],
            cuda: None,
            provenance: Provenance {
                source: "https://example.org/cairn".into(),
                revision: "abc".into(),
                version: "0.1.0".into(),
            },
        }
    }

    #[test]
    fn config_runs_as_nonroot_with_labels() {
        let config = config(&spec(), "1970-01-01T00:00:00Z", &["sha256:aa".into()]);
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(config["config"]["Entrypoint"][0], "/usr/local/bin/gateway");
        assert_eq!(config["config"]["ExposedPorts"]["8080/tcp"], json!({}));
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.revision"],
            "abc"
        );
        assert_eq!(
            config["config"]["Env"],
            json!([
                "PATH=/usr/local/bin:/usr/bin:/bin",
                "RUST_LOG=info",
                "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"
            ])
        );
    }

    #[test]
    fn gpu_images_find_the_injected_driver() {
        let mut gpu = spec();
        gpu.cuda = Some(CudaInput {
            dir: "/cuda".into(),
            groups: vec![],
        });
        let env = environment(&gpu);
        assert!(env.contains(&"NVIDIA_DRIVER_CAPABILITIES=compute,utility".to_owned()));
        assert!(
            env.iter()
                .any(|e| e.starts_with("LD_LIBRARY_PATH=/usr/local/cuda/lib64:"))
        );
    }

    #[test]
    fn a_launcher_takes_the_binarys_place() {
        let mut launched = spec();
        launched.launcher = Some("/bin/false".into());
        let plan = app_layer(&launched);
        let source = |path: &str| match &plan.entries[path].source {
            EntrySource::HostFile(host) => host.display().to_string(),
            other => panic!("{path}: {other:?}"),
        };
        assert_eq!(source("usr/local/bin/gateway"), "/bin/false");
        assert_eq!(source("usr/local/libexec/cairn/gateway"), "/bin/true");
        assert_eq!(plan.entries["usr/local/libexec/cairn/gateway"].mode, 0o755);
    }

    #[test]
    fn writable_directories_belong_to_the_nonroot_user() {
        let mut garage_like = spec();
        garage_like.writable_dirs =
            vec!["/var/lib/garage/data".into(), "/var/lib/garage/meta".into()];
        let plan = app_layer(&garage_like);
        for dir in ["var/lib/garage/data", "var/lib/garage/meta"] {
            assert_eq!(
                (plan.entries[dir].uid, plan.entries[dir].gid),
                (USER_ID, USER_ID)
            );
        }
        assert_eq!(plan.entries["var/lib/garage"].uid, 0, "parents stay root's");
    }

    #[test]
    fn system_layer_has_a_sticky_tmp_and_the_nonroot_user() {
        let plan = system_layer(
            Vec::new(),
            Some(EntrySource::HostFile(
                "/etc/ssl/certs/ca-certificates.crt".into(),
            )),
        );
        assert_eq!(plan.entries["tmp"].mode, 0o1777);
        let EntrySource::Bytes(passwd) = &plan.entries["etc/passwd"].source else {
            panic!("passwd is generated");
        };
        assert!(String::from_utf8_lossy(passwd).contains(":65532:65532:"));
    }
}
