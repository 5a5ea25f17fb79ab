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
    pub binary: PathBuf,
    /// The file name under /usr/local/bin, also the entrypoint.
    pub binary_name: String,
    pub extra_files: Vec<ExtraFile>,
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

/// The system layer: the ELF closure (minus CUDA libraries), CA certificates, passwd, group, /tmp.
pub fn system_layer(libraries: &[SharedLibrary], ca_bundle: &std::path::Path) -> LayerPlan {
    let mut plan = LayerPlan::new("system");
    for library in libraries {
        let source = match &library.same_as {
            Some(first) => EntrySource::Symlink(first.clone()),
            None => EntrySource::HostFile(library.host_path.clone()),
        };
        plan.insert(&library.image_path, root_entry(source, 0o755));
    }
    plan.insert(
        CA_PATH,
        root_entry(EntrySource::HostFile(ca_bundle.to_owned()), 0o644),
    );
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
    plan.insert(
        "/home/nonroot",
        LayerEntry {
            source: EntrySource::Directory,
            mode: 0o755,
            uid: USER_ID,
            gid: USER_ID,
        },
    );
    plan
}

/// The application layer: the binary and the extra files.
pub fn app_layer(spec: &ImageSpec) -> LayerPlan {
    let mut plan = LayerPlan::new("app");
    plan.insert(
        &format!("{BIN_DIR}/{}", spec.binary_name),
        root_entry(EntrySource::HostFile(spec.binary.clone()), 0o755),
    );
    for extra in &spec.extra_files {
        plan.insert(
            &extra.image_path,
            root_entry(EntrySource::HostFile(extra.host_path.clone()), extra.mode),
        );
    }
    plan
}

/// The environment of the config, sorted by name after PATH.
pub fn environment(spec: &ImageSpec) -> Vec<String> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), format!("{BIN_DIR}:/usr/bin:/bin")),
        ("SSL_CERT_FILE".into(), CA_PATH.into()),
    ];
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
        "Entrypoint": [format!("{BIN_DIR}/{}", spec.binary_name)],
        "Env": environment(spec),
        "WorkingDir": "/",
        "Labels": labels,
    });
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
            binary: "/bin/true".into(),
            binary_name: "gateway".into(),
            extra_files: vec![],
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
    fn system_layer_has_a_sticky_tmp_and_the_nonroot_user() {
        let plan = system_layer(
            &[],
            std::path::Path::new("/etc/ssl/certs/ca-certificates.crt"),
        );
        assert_eq!(plan.entries["tmp"].mode, 0o1777);
        let EntrySource::Bytes(passwd) = &plan.entries["etc/passwd"].source else {
            panic!("passwd is generated");
        };
        assert!(String::from_utf8_lossy(passwd).contains(":65532:65532:"));
    }
}
