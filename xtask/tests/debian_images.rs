//! The images cairn makes from pinned Debian packages, run as a user would run them: `cargo
//! xtask image postgres nginx --format docker-archive`, `docker load`, then `docker run` with a
//! read-only root, every capability dropped and the non-root user. PostgreSQL initialises an
//! empty volume, takes a password login with awkward characters and keeps its data across a
//! restart; nginx serves its page and passes `nginx -t`.

mod image_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use image_support::{index, xtask};
use testkit::require_docker;

const USER: &str = "65532:65532";
/// Every character a URL or a shell would mangle.
const PASSWORD: &str = "pa@ss:/?#%$word 'x\"";

/// Writes `images` and their `docker load` archive under `dir`.
fn build_archive(dir: &Path, images: &[&str]) -> (PathBuf, PathBuf) {
    let out = dir.join("oci");
    let archive = dir.join("images.tar");
    let (out_arg, archive_arg) = (out.display().to_string(), archive.display().to_string());
    let mut args = vec!["image"];
    args.extend_from_slice(images);
    args.extend_from_slice(&[
        "--out",
        &out_arg,
        "--format",
        "docker-archive",
        "--archive",
        &archive_arg,
    ]);
    xtask(&args, &[]);
    (out, archive)
}

/// Containers, volumes and images of one test, removed on drop (names carry this process's id).
struct Docker {
    docker: PathBuf,
    prefix: String,
    containers: Vec<String>,
    volumes: Vec<String>,
    images: Vec<String>,
}

impl Docker {
    fn new(docker: PathBuf, what: &str) -> Docker {
        Docker {
            docker,
            prefix: format!("cairn-imgtest-{what}-{}", std::process::id()),
            containers: Vec::new(),
            volumes: Vec::new(),
            images: Vec::new(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.docker)
            .args(args)
            .output()
            .expect("running docker")
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "docker {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// `docker load` of the archive; the image IDs (config digests) by name.
    fn load(&mut self, layout: &Path, archive: &Path) -> Vec<(String, String)> {
        self.ok(&["load", "-i", &archive.display().to_string()]);
        index(layout)
            .into_iter()
            .map(|(name, manifest)| {
                let config = image_support::blob_json(layout, &manifest)["config"]["digest"]
                    .as_str()
                    .expect("config digest")
                    .to_owned();
                self.images.push(config.clone());
                (name, config)
            })
            .collect()
    }

    fn volume(&mut self, name: &str) -> String {
        let volume = format!("{}-{name}", self.prefix);
        self.ok(&["volume", "create", &volume]);
        self.volumes.push(volume.clone());
        volume
    }

    /// `docker run -d` hardened as compose runs it, plus `extra` arguments before the image.
    fn start(&mut self, name: &str, extra: &[&str], image: &str) -> String {
        let container = format!("{}-{name}", self.prefix);
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &container,
            "--read-only",
            "--cap-drop",
            "ALL",
            "--user",
            USER,
            "--security-opt",
            "no-new-privileges:true",
        ];
        args.extend_from_slice(extra);
        args.push(image);
        self.ok(&args);
        self.containers.push(container.clone());
        container
    }

    fn logs(&self, container: &str) -> String {
        let output = self.run(&["logs", container]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        for container in &self.containers {
            let _ = self.run(&["rm", "-f", "-v", container]);
        }
        for volume in &self.volumes {
            let _ = self.run(&["volume", "rm", "-f", volume]);
        }
        for image in &self.images {
            let _ = self.run(&["rmi", "-f", image]);
        }
    }
}

fn image_id(images: &[(String, String)], name: &str) -> String {
    images
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, id)| id.clone())
        .unwrap_or_else(|| panic!("image {name} in the layout"))
}

#[test]
fn postgres_initialises_a_volume_takes_a_password_and_keeps_its_data() {
    let Some(docker) = require_docker() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (layout, archive) = build_archive(dir.path(), &["postgres", "nginx"]);
    let mut engine = Docker::new(docker, "pg");
    let images = engine.load(&layout, &archive);
    let image = image_id(&images, "postgres");
    let volume = engine.volume("data");
    let mount = format!("{volume}:/var/lib/postgresql/data");
    let password_env = format!("POSTGRES_PASSWORD={PASSWORD}");
    let container = engine.start(
        "server",
        &[
            "-v",
            &mount,
            "-e",
            &password_env,
            "-e",
            "POSTGRES_USER=cairn",
            "-e",
            "POSTGRES_DB=cairn",
        ],
        &image,
    );
    let healthy = |engine: &Docker| {
        eventually(Duration::from_secs(90), || {
            engine
                .run(&["exec", &container, "pg-entrypoint", "healthcheck"])
                .status
                .success()
        })
    };
    assert!(
        healthy(&engine),
        "postgres never got ready:\n{}",
        engine.logs(&container)
    );

    // Over TCP, so pg_hba's scram rule (not the socket's trust) decides.
    let psql = |engine: &Docker, password: &str, sql: &str| {
        engine.run(&[
            "exec",
            "-e",
            &format!("PGPASSWORD={password}"),
            &container,
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "cairn",
            "-d",
            "cairn",
            "-tAc",
            sql,
        ])
    };
    let created = psql(
        &engine,
        PASSWORD,
        "CREATE TABLE kept (note text); INSERT INTO kept VALUES ('still here')",
    );
    assert!(
        created.status.success(),
        "login with the password: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    let refused = psql(&engine, "wrong", "SELECT 1");
    assert!(!refused.status.success(), "a wrong password is refused");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    engine.ok(&["restart", &container]);
    assert!(
        healthy(&engine),
        "postgres never came back:\n{}",
        engine.logs(&container)
    );
    let read = psql(&engine, PASSWORD, "SELECT note FROM kept");
    assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), "still here");
    let logs = engine.logs(&container);
    assert_eq!(
        logs.matches("pg-entrypoint: initialising").count(),
        1,
        "initialised once, then only started:\n{logs}"
    );
    assert!(
        !logs.contains(PASSWORD),
        "the password never reaches the log"
    );
}

#[test]
fn nginx_serves_its_page_and_passes_its_config_test() {
    let Some(docker) = require_docker() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (layout, archive) = build_archive(dir.path(), &["postgres", "nginx"]);
    let mut engine = Docker::new(docker, "nginx");
    let images = engine.load(&layout, &archive);
    let image = image_id(&images, "nginx");
    let volume = engine.volume("cache");
    let mount = format!("{volume}:/var/cache/nginx");

    let test = engine.run(&[
        "run",
        "--rm",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--user",
        USER,
        "-v",
        &mount,
        &image,
        "-t",
    ]);
    assert!(
        test.status.success(),
        "nginx -t in the image: {}",
        String::from_utf8_lossy(&test.stderr)
    );

    let container = engine.start("web", &["-v", &mount, "-p", "127.0.0.1::8080"], &image);
    let address = engine.ok(&["port", &container, "8080/tcp"]);
    let address = address.lines().next().unwrap_or_default().to_owned();
    let mut page = String::new();
    let served = eventually(Duration::from_secs(30), || {
        match testkit_get(&address, "/") {
            Some(body) => {
                page = body;
                true
            }
            None => false,
        }
    });
    assert!(
        served,
        "nginx never answered on {address}:\n{}",
        engine.logs(&container)
    );
    let expected = match Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/index.html") {
        path if path.is_file() => std::fs::read_to_string(path).expect("web/index.html"),
        _ => "without a web app".to_owned(),
    };
    let needle: String = expected.chars().take(200).collect();
    assert!(page.contains(needle.trim()), "the site's page: {page}");
    assert_eq!(
        engine.ok(&["inspect", "--format", "{{.Config.User}}", &container]),
        USER
    );
}

/// GET `path` from `address` (`127.0.0.1:PORT`) with plain HTTP/1.0; the body on a 200.
fn testkit_get(address: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// Polls `ready` every 250 ms until it holds (true) or `deadline` passes (false), so a failure
/// can print the container's log.
fn eventually(deadline: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < deadline {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    false
}

/// Garage from its cached crates.io build: hardened as compose runs it, on fresh named volumes
/// (their owner comes from the image's directories), with the deployment's own config; its
/// health check (`garage status`, which needs the metadata database it opened on the volume)
/// passes.
#[test]
fn garage_starts_on_fresh_volumes_and_answers_its_health_check() {
    let Some(docker) = require_docker() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, archive) = build_archive(dir.path(), &["garage"]);
    let mut engine = Docker::new(docker, "garage");
    let images = engine.load(&out, &archive);
    let image = image_id(&images, "garage");
    let meta = format!("{}:/var/lib/garage/meta", engine.volume("meta"));
    let data = format!("{}:/var/lib/garage/data", engine.volume("data"));
    let config = format!(
        "{}:/etc/garage.toml:ro",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/files/garage.toml")
            .display()
    );
    let rpc_secret = format!("GARAGE_RPC_SECRET={}", "ab".repeat(32));
    let container = engine.start(
        "s3",
        &[
            "--tmpfs",
            "/tmp",
            "-e",
            &rpc_secret,
            "-e",
            "GARAGE_ADMIN_TOKEN=test-admin-token",
            "-v",
            &meta,
            "-v",
            &data,
            "-v",
            &config,
        ],
        &image,
    );
    let healthy = eventually(Duration::from_secs(30), || {
        engine
            .run(&["exec", &container, "/usr/local/bin/garage", "status"])
            .status
            .success()
    });
    assert!(
        healthy,
        "garage status never passed:\n{}",
        engine.logs(&container)
    );
    assert_eq!(
        engine.ok(&["inspect", "--format", "{{.State.Running}}", &container]),
        "true"
    );
}
