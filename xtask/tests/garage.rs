//! The Garage binary `cargo xtask build garage` builds, run for real as a single node: the
//! first-start setup an operator (or server A's setup step) does with Garage's own CLI (layout,
//! keys, bucket, grant), and the `--single-node --default-bucket` start that does the same by
//! itself; then S3 PutObject/GetObject with `object_store` configured exactly as the api
//! configures it.
//!
//! Under CI the binary is built when the cache lacks it (a long build, once per machine);
//! elsewhere the tests skip with a reason until `cargo xtask build garage` has run.

mod image_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use image_support::garage_binary;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use testkit::ProcessGuard;

const RPC_SECRET: &str = "3c4b0e1a5f2d7c8b9a6e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a";
const ADMIN_TOKEN: &str = "cairn-test-admin-token";
/// Garage's own key format (`GK` + 24 hex, 64 hex secret); any id of 8+ characters works.
const KEY_ID: &str = "GK0123456789abcdef01234567";
const SECRET_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const BUCKET: &str = "cairn";
const DEADLINE: Duration = Duration::from_secs(60);

/// One Garage node: its configuration file, ports, and the server process.
struct Node {
    binary: PathBuf,
    config: PathBuf,
    s3_port: u16,
    admin_port: u16,
    server: Option<ProcessGuard>,
}

impl Node {
    /// Writes a single-node configuration (replication factor 1, LMDB metadata) under `dir`.
    fn configure(binary: &Path, dir: &Path) -> Node {
        let (rpc_port, s3_port, admin_port) = (
            testkit::free_port(),
            testkit::free_port(),
            testkit::free_port(),
        );
        let config = dir.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{meta}\"\n\
                 data_dir = \"{data}\"\n\
                 db_engine = \"lmdb\"\n\
                 replication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
                 rpc_secret = \"{RPC_SECRET}\"\n\
                 \n\
                 [s3_api]\n\
                 s3_region = \"garage\"\n\
                 api_bind_addr = \"127.0.0.1:{s3_port}\"\n\
                 \n\
                 [admin]\n\
                 api_bind_addr = \"127.0.0.1:{admin_port}\"\n\
                 admin_token = \"{ADMIN_TOKEN}\"\n",
                meta = dir.join("meta").display(),
                data = dir.join("data").display(),
            ),
        )
        .expect("write garage.toml");
        Node {
            binary: binary.to_path_buf(),
            config,
            s3_port,
            admin_port,
            server: None,
        }
    }

    /// Starts `garage server` with `args` and `env`, and waits until the admin API answers.
    fn start(&mut self, args: &[&str], env: &[(&str, &str)]) {
        let log = std::fs::File::create(self.config.with_file_name("server.log")).expect("log");
        let mut command = Command::new(&self.binary);
        command
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "garage=info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let mut server = ProcessGuard::spawn("garage server", &mut command);
        testkit::wait_for_port("garage admin API", self.admin_port, DEADLINE);
        server.assert_running();
        self.server = Some(server);
    }

    fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let status = server.terminate(DEADLINE);
            assert!(status.is_some(), "garage server did not stop on SIGTERM");
        }
    }

    /// `garage -c CONFIG ARGS…`, which must succeed; its stdout.
    fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run garage");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "garage {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// Whether `garage -c CONFIG ARGS…` exits 0 (for `health`, the container health check).
    fn cli_succeeds(&self, args: &[&str]) -> bool {
        Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run garage")
            .success()
    }

    /// The status of the admin API's unauthenticated `GET /health`.
    fn health(&self) -> u16 {
        reqwest::blocking::get(format!("http://127.0.0.1:{}/health", self.admin_port))
            .map(|response| response.status().as_u16())
            .unwrap_or(0)
    }

    fn wait_healthy(&self) {
        testkit::wait_until("garage /health 200", DEADLINE, || self.health() == 200);
    }

    /// The S3 store the api would build for this node (see services/api/src/storage.rs).
    fn bucket(&self) -> impl ObjectStore {
        // As in the api: reqwest's rustls comes without a provider; ring is ours.
        let _ = rustls::crypto::ring::default_provider().install_default();
        AmazonS3Builder::new()
            .with_endpoint(format!("http://127.0.0.1:{}", self.s3_port))
            .with_bucket_name(BUCKET)
            .with_region("garage")
            .with_access_key_id(KEY_ID)
            .with_secret_access_key(SECRET_KEY)
            .with_allow_http(true)
            .build()
            .expect("S3 client")
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn put_then_get(store: &impl ObjectStore, key: &str, body: &[u8]) {
    let path = ObjectPath::from(key);
    store
        .put(&path, PutPayload::from(body.to_vec()))
        .await
        .expect("PutObject");
    let got = store
        .get(&path)
        .await
        .expect("GetObject")
        .bytes()
        .await
        .expect("object body");
    assert_eq!(got.as_ref(), body);
}

async fn get(store: &impl ObjectStore, key: &str) -> Vec<u8> {
    store
        .get(&ObjectPath::from(key))
        .await
        .expect("GetObject")
        .bytes()
        .await
        .expect("object body")
        .to_vec()
}

#[test]
fn first_start_setup_with_the_cli_then_s3_put_and_get() {
    let Some(binary) = garage_binary() else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("cairn-garage-cli-")
        .tempdir()
        .expect("temp dir");
    let mut node = Node::configure(&binary, dir.path());
    node.start(&[], &[]);

    let status = node.cli(&["status"]);
    assert!(
        status.contains("NO ROLE ASSIGNED"),
        "a fresh node has no role: {status}"
    );
    assert_eq!(node.health(), 503, "no layout: Garage cannot serve yet");
    assert!(
        !node.cli_succeeds(&["health", "-q"]),
        "`garage health` fails while no layout is applied"
    );

    let node_id = node.cli(&["node", "id", "-q"]);
    let node_id = node_id.trim().split('@').next().expect("node id");
    node.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", node_id]);
    node.cli(&["layout", "apply", "--version", "1"]);
    node.wait_healthy();
    assert!(
        node.cli_succeeds(&["health", "-q"]),
        "healthy once laid out"
    );

    node.cli(&[
        "key",
        "import",
        "--yes",
        "-n",
        "cairn-api",
        KEY_ID,
        SECRET_KEY,
    ]);
    let created = node.cli(&["key", "create", "cairn-other"]);
    assert!(created.contains("GK"), "a created key is shown: {created}");
    node.cli(&["bucket", "create", BUCKET]);
    node.cli(&[
        "bucket",
        "allow",
        "--read",
        "--write",
        "--owner",
        BUCKET,
        "--key",
        "cairn-api",
    ]);
    let info = node.cli(&["bucket", "info", BUCKET]);
    assert!(info.contains("cairn-api"), "the key is granted: {info}");

    runtime().block_on(put_then_get(
        &node.bucket(),
        "uploads/hello.txt",
        b"hello from cairn",
    ));
    node.stop();
}

#[test]
fn single_node_default_bucket_start_is_ready_and_keeps_data_across_a_restart() {
    let Some(binary) = garage_binary() else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("cairn-garage-single-")
        .tempdir()
        .expect("temp dir");
    let mut node = Node::configure(&binary, dir.path());
    let env = [
        ("GARAGE_DEFAULT_ACCESS_KEY", KEY_ID),
        ("GARAGE_DEFAULT_SECRET_KEY", SECRET_KEY),
        ("GARAGE_DEFAULT_BUCKET", BUCKET),
    ];
    let flags = ["--single-node", "--default-bucket"];
    node.start(&flags, &env);
    node.wait_healthy();
    let body: Vec<u8> = (0..=255u8).cycle().take(3 << 20).collect();
    runtime().block_on(put_then_get(&node.bucket(), "big.bin", &body));
    node.stop();

    // The same start again: layout, key and bucket already exist and are kept.
    node.start(&flags, &env);
    node.wait_healthy();
    let again = runtime().block_on(get(&node.bucket(), "big.bin"));
    assert!(again == body, "the object survives a restart");
    node.stop();
}
