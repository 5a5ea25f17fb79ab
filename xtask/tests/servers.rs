//! Both servers deployed from one release bundle, exactly as the bundle's README says, with
//! docker-compose and the images loaded from the bundle (nothing pulled):
//!
//! 1. `cargo xtask release --topology deploy/topology-cpu.toml` (the README's main job);
//! 2. `./init-env.sh SERVER_B_ADDRESS=…` writes both `.env` files;
//! 3. server B: the model in its model folder, `docker load`, `docker-compose up -d`;
//! 4. server A: a self-signed certificate placed by `certbot-deploy-hook.sh` from a folder laid
//!    out like Let's Encrypt's (`live/` symlinks into `archive/`, a root-only key),
//!    `docker load`, `docker-compose up -d`.
//!
//! The two servers are two compose projects. Server B's private address is the host's address
//! on a network this test creates: B publishes inference there, and A's gateway reaches it there
//! and nowhere else (no host networking, nothing shared between the projects). On two hosts a
//! packet for B's address arrives on B's interface; on one engine it goes from one compose
//! network's bridge to another's, which Docker's isolation rules drop, so the test lets through
//! (in `DOCKER-USER`, the chain Docker leaves to operators) exactly the connections addressed to
//! B's private address and port, as the network between two servers would, and removes the rule
//! afterwards.
//!
//! Then, over TLS through nginx as a browser would: register, log in, a chat reply streamed
//! event by event from B's inference, the reply read back from the PostgreSQL container, a file
//! through Garage, `/api/health/all`; B's `/v1` without the key is refused; `down` and `up -d`
//! keep the user, the chat and the file; every container is non-root, read-only and without
//! capabilities.

mod site_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use site_support::{Event, chat, post, session_id};

/// The host's address on the test's private network stands for server B's private address.
const PRIVATE_SUBNET: &str = "172.31.251.0/24";
const SERVER_B_ADDRESS: &str = "172.31.251.1";
const PRIVATE_NETWORK: &str = "cairn-servers-private";
/// Compose project names: the README's `cd server-X && docker compose up -d` with the names
/// pinned, so that nothing else on this engine is touched.
const PROJECT_A: &str = "cairn-servers-a";
const PROJECT_B: &str = "cairn-servers-b";
const DOMAIN: &str = "cairn.test";
/// From `up -d` to every container healthy (health checks run every 10 s, in dependency order).
const HEALTHY_DEADLINE: Duration = Duration::from_secs(300);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `command`, panicking with its output when it fails.
fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}",
        text(&output)
    );
    output
}

struct Tools {
    docker: PathBuf,
    compose: PathBuf,
    iptables: PathBuf,
}

/// One server: its folder of the bundle and its compose project.
struct Server {
    folder: PathBuf,
    project: &'static str,
}

impl Server {
    fn compose(&self, tools: &Tools, args: &[&str]) -> Command {
        let mut command = Command::new(&tools.compose);
        command
            .current_dir(&self.folder)
            .env("COMPOSE_PROJECT_NAME", self.project)
            .args(args);
        command
    }

    /// `docker-compose up -d`, then every container healthy; the time it took.
    fn up(&self, tools: &Tools) -> Duration {
        let started = Instant::now();
        run(&mut self.compose(tools, &["up", "-d"]));
        self.wait_healthy(tools, started);
        started.elapsed()
    }

    fn containers(&self, tools: &Tools) -> Vec<String> {
        let output = run(&mut self.compose(tools, &["ps", "-q"]));
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn wait_healthy(&self, tools: &Tools, started: Instant) {
        loop {
            let containers = self.containers(tools);
            let states: Vec<String> = containers
                .iter()
                .map(|id| {
                    let output = run(Command::new(&tools.docker).args([
                        "inspect",
                        "-f",
                        "{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
                        id,
                    ]));
                    String::from_utf8_lossy(&output.stdout).trim().to_owned()
                })
                .collect();
            if !states.is_empty() && states.iter().all(|s| s.ends_with(" running healthy")) {
                return;
            }
            if started.elapsed() > HEALTHY_DEADLINE {
                let logs = self
                    .compose(tools, &["logs", "--no-color", "--tail", "40"])
                    .output();
                panic!(
                    "{} not healthy after {HEALTHY_DEADLINE:?}: {states:?}\n{}",
                    self.project,
                    logs.map(|o| text(&o)).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// The one container of `service`.
    fn container(&self, tools: &Tools, service: &str) -> String {
        let output = run(&mut self.compose(tools, &["ps", "-q", service]));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

/// Removes both projects (with their volumes) and the private network, before and after.
struct Deployment<'t> {
    tools: &'t Tools,
    servers: Vec<Server>,
}

impl Deployment<'_> {
    fn clean(&self) {
        for server in &self.servers {
            if server.folder.join("compose.yaml").exists() {
                let _ = server
                    .compose(self.tools, &["down", "-v", "--timeout", "5"])
                    .output();
            }
        }
        let _ = Command::new(&self.tools.docker)
            .args(["network", "rm", PRIVATE_NETWORK])
            .output();
        // Every copy of the rule (a killed earlier run may have left one).
        while Command::new(&self.tools.iptables)
            .args(["-w", "-D"])
            .args(PRIVATE_ROUTE)
            .output()
            .is_ok_and(|o| o.status.success())
        {}
    }

    /// Lets through what is addressed to server B's private address, as between two hosts.
    fn route_private_address(&self) {
        run(Command::new(&self.tools.iptables)
            .arg("-I")
            .args(PRIVATE_ROUTE));
    }
}

/// The `DOCKER-USER` rule (after `-I`/`-D`): connections whose original destination is server
/// B's published inference port on its private address, both directions.
const PRIVATE_ROUTE: [&str; 11] = [
    "DOCKER-USER",
    "-p",
    "tcp",
    "-m",
    "conntrack",
    "--ctorigdst",
    SERVER_B_ADDRESS,
    "--ctorigdstport",
    "8001",
    "-j",
    "ACCEPT",
];

impl Drop for Deployment<'_> {
    fn drop(&mut self) {
        if std::env::var_os("CAIRN_KEEP_SERVERS").is_some() {
            eprintln!("CAIRN_KEEP_SERVERS: leaving {PROJECT_A} and {PROJECT_B} running");
            return;
        }
        self.clean();
    }
}

/// Reads `key` from a server's `.env`.
fn env_value(folder: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(folder.join(".env")).expect(".env");
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} not in {}/.env", folder.display()))
        .to_owned()
}

/// A self-signed certificate for DOMAIN in a folder laid out like Let's Encrypt's: `live/DOMAIN`
/// holds symlinks into `archive/DOMAIN`, and the key is readable by root only.
fn letsencrypt_lineage(dir: &Path) -> (PathBuf, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec![DOMAIN.to_owned()]).expect("params");
    let certificate = params.self_signed(&key).expect("certificate");
    let archive = dir.join("archive").join(DOMAIN);
    let live = dir.join("live").join(DOMAIN);
    std::fs::create_dir_all(&archive).expect("archive");
    std::fs::create_dir_all(&live).expect("live");
    std::fs::write(archive.join("fullchain1.pem"), certificate.pem()).expect("fullchain");
    let private = archive.join("privkey1.pem");
    std::fs::write(&private, key.serialize_pem()).expect("key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    for name in ["fullchain", "privkey"] {
        std::os::unix::fs::symlink(
            format!("../../archive/{DOMAIN}/{name}1.pem"),
            live.join(format!("{name}.pem")),
        )
        .expect("symlink");
    }
    (live, certificate.pem())
}

/// The site as a browser reaches it: `https://DOMAIN` on the published port, trusting the
/// self-signed certificate.
struct Site {
    client: reqwest::blocking::Client,
    base: String,
}

impl Site {
    fn new(certificate_pem: &str) -> Site {
        let certificate =
            reqwest::Certificate::from_pem(certificate_pem.as_bytes()).expect("certificate");
        let client = reqwest::blocking::Client::builder()
            .add_root_certificate(certificate)
            .resolve(DOMAIN, "127.0.0.1:443".parse().expect("address"))
            .timeout(Duration::from_secs(180))
            .build()
            .expect("client");
        Site {
            client,
            base: format!("https://{DOMAIN}"),
        }
    }

    fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        post(&self.client, &format!("{}{path}", self.base), token, body)
    }

    fn get(&self, path: &str, token: &str) -> reqwest::blocking::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    fn log_in(&self, credentials: &Value) -> String {
        let (code, answer) = self.post("/api/auth/login", None, credentials);
        assert_eq!(code, 200, "login: {answer}");
        answer["token"].as_str().expect("token").to_owned()
    }
}

#[test]
fn both_servers_come_up_from_the_release_bundle_and_serve_the_site_over_tls() {
    let Some(docker) = testkit::require_docker() else {
        return;
    };
    let Some(compose) = testkit::require_tool("docker-compose", "apt-get install docker-compose")
    else {
        return;
    };
    let Some(iptables) = testkit::require_tool("iptables", "apt-get install iptables") else {
        return;
    };
    let tools = Tools {
        docker,
        compose,
        iptables,
    };
    let mut scratch = tempfile::Builder::new()
        .prefix("cairn-servers-")
        .tempdir()
        .expect("temp dir");
    // Kept with the servers, so that they can be inspected and taken down by hand.
    scratch.disable_cleanup(std::env::var_os("CAIRN_KEEP_SERVERS").is_some());
    let bundle = scratch.path().join("bundle");
    let server_a = Server {
        folder: bundle.join("server-a"),
        project: PROJECT_A,
    };
    let server_b = Server {
        folder: bundle.join("server-b"),
        project: PROJECT_B,
    };
    let deployment = Deployment {
        tools: &tools,
        servers: vec![server_a, server_b],
    };
    let (server_a, server_b) = (&deployment.servers[0], &deployment.servers[1]);

    // The README's main job.
    let started = Instant::now();
    run(Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(workspace_root())
        .args(["release", "--topology", "deploy/topology-cpu.toml", "--out"])
        .arg(&bundle));
    eprintln!("release: {:.0?}", started.elapsed());

    // The operator's folders, and the one command that writes both .env files.
    let srv = scratch.path().join("srv");
    let certificates = srv.join("certs");
    let acme = srv.join("acme");
    let model = srv.join("model");
    for dir in [&acme, &model] {
        std::fs::create_dir_all(dir).expect("operator folder");
    }
    run(Command::new(bundle.join("init-env.sh")).args([
        format!("SERVER_B_ADDRESS={SERVER_B_ADDRESS}"),
        format!("CERTIFICATES_DIR={}", certificates.display()),
        format!("ACME_WEBROOT={}", acme.display()),
        format!("MODEL_HOST_DIR={}", model.display()),
    ]));
    // What an earlier run may have left (compose needs the .env files to take it down).
    deployment.clean();

    // The network of the two servers' private addresses.
    run(Command::new(&tools.docker).args([
        "network",
        "create",
        "--subnet",
        PRIVATE_SUBNET,
        "--gateway",
        SERVER_B_ADDRESS,
        PRIVATE_NETWORK,
    ]));
    deployment.route_private_address();

    let loaded = |names: &[&str]| {
        for name in names {
            run(Command::new(&tools.docker)
                .arg("load")
                .arg("-i")
                .arg(bundle.join("images").join(format!("{name}.tar"))));
        }
    };

    // Server B: the model (a tiny random one, written by the image's own binary), the image,
    // up.
    loaded(&["inference"]);
    let inference_image = compose_image(&server_b.folder, "inference");
    run(Command::new(&tools.docker)
        .args(["run", "--rm", "--network", "none", "--user", "0", "-v"])
        .arg(format!("{}:/model", model.display()))
        .args([&inference_image, "tiny-model", "/model"]));
    // Readable by the containers' user, as the README says for a downloaded model.
    run(Command::new("chmod").arg("-R").arg("a+rX").arg(&model));
    let b_healthy = server_b.up(&tools);
    eprintln!("server B: up -d to all healthy in {b_healthy:.1?}");

    // Server A: the certificate through the deploy hook, the images, up.
    let (lineage, certificate_pem) = letsencrypt_lineage(&scratch.path().join("letsencrypt"));
    run(Command::new(server_a.folder.join("certbot-deploy-hook.sh"))
        .env("RENEWED_LINEAGE", &lineage));
    loaded(&["nginx", "gateway", "api", "postgres", "garage"]);
    let a_healthy = server_a.up(&tools);
    eprintln!("server A: up -d to all healthy in {a_healthy:.1?}");

    // ACME http-01: what certbot writes into the webroot is served on port 80.
    let challenge = acme.join(".well-known/acme-challenge");
    std::fs::create_dir_all(&challenge).expect("challenge folder");
    std::fs::write(challenge.join("token-1"), "token-1.thumbprint").expect("challenge");
    let answer = reqwest::blocking::get("http://127.0.0.1:80/.well-known/acme-challenge/token-1")
        .expect("GET the challenge on port 80");
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(answer.text().expect("body"), "token-1.thumbprint");

    let site = Site::new(&certificate_pem);
    let credentials =
        json!({ "email": "operator@example.org", "password": "correct horse battery" });
    let (code, registered) = site.post("/api/auth/register", None, &credentials);
    assert_eq!(code, 201, "register: {registered}");
    let token = site.log_in(&credentials);
    let (code, session) = site.post(
        "/api/sessions",
        Some(&token),
        &json!({ "title": "servers" }),
    );
    assert_eq!(code, 201, "session: {session}");
    let session_id = session_id(&session);

    // A reply streamed from server B, event by event (a random model sometimes stops early:
    // ask again, at most 8 times, for a reply long enough to show streaming).
    let mut asked = 0;
    let events = loop {
        asked += 1;
        let events = chat(
            &site.client,
            &site.base,
            &token,
            &session_id,
            "hello from server A",
        );
        let deltas = events.iter().filter(|e| e.name == "delta").count();
        if deltas >= 16 || asked == 8 {
            break events;
        }
    };
    assert_eq!(
        events.last().map(|e| e.name.as_str()),
        Some("done"),
        "{events:?}"
    );
    let deltas: Vec<&Event> = events.iter().filter(|e| e.name == "delta").collect();
    let reads: std::collections::BTreeSet<usize> = deltas.iter().map(|e| e.read).collect();
    assert!(reads.len() >= 2, "all deltas in one read: {events:?}");
    let streamed: String = deltas
        .iter()
        .map(|e| e.data["content"].as_str().expect("delta content"))
        .collect();
    eprintln!("{} deltas over {} reads", deltas.len(), reads.len());

    // The reply, read back from the PostgreSQL container.
    let postgres = server_a.container(&tools, "postgres");
    let stored = run(Command::new(&tools.docker).args([
        "exec",
        &postgres,
        "/usr/lib/postgresql/15/bin/psql",
        "-X",
        "-A",
        "-t",
        "-h",
        "/var/lib/postgresql/data",
        "-U",
        "cairn",
        "-d",
        "cairn",
        "-c",
        &format!(
            "SELECT content FROM messages WHERE session_id = '{session_id}' AND role = 'assistant' ORDER BY seq DESC LIMIT 1"
        ),
    ]));
    assert_eq!(
        String::from_utf8_lossy(&stored.stdout).trim_end_matches('\n'),
        streamed,
        "the stored reply is what was streamed"
    );

    // A file through Garage.
    let upload: Vec<u8> = (0..=255u8).cycle().take(3 << 20).collect();
    let response = site
        .client
        .post(format!("{}/api/files?name=data.bin", site.base))
        .bearer_auth(&token)
        .header("content-type", "application/pdf")
        .body(upload.clone())
        .send()
        .expect("POST /api/files");
    assert_eq!(response.status().as_u16(), 201);
    let file: Value = response.json().expect("file JSON");
    let file_id = file["id"].as_str().expect("file id").to_owned();
    let downloaded = site.get(&format!("/api/files/{file_id}"), &token);
    assert_eq!(downloaded.status().as_u16(), 200);
    assert!(
        downloaded.bytes().expect("body") == upload,
        "the file comes back"
    );

    let health = site.get("/api/health/all", &token);
    assert_eq!(health.status().as_u16(), 200);

    // Server B's /v1 on its private address: refused without the key, served with it.
    let inference = format!("http://{SERVER_B_ADDRESS}:8001/v1/models");
    let refused = reqwest::blocking::get(&inference).expect("GET B's /v1 without the key");
    assert_eq!(refused.status().as_u16(), 401);
    let key = env_value(&server_b.folder, "INFERENCE_API_KEY");
    let allowed = reqwest::blocking::Client::new()
        .get(&inference)
        .bearer_auth(&key)
        .send()
        .expect("GET B's /v1 with the key");
    assert_eq!(allowed.status().as_u16(), 200);

    // Every container: non-root, read-only root, every capability dropped, no new privileges.
    for server in [server_a, server_b] {
        for id in server.containers(&tools) {
            let output = run(Command::new(&tools.docker).args([
                "inspect",
                "-f",
                "{{.Name}}|{{.Config.User}}|{{.HostConfig.ReadonlyRootfs}}|{{.HostConfig.CapDrop}}|{{.HostConfig.SecurityOpt}}|{{.HostConfig.Privileged}}",
                &id,
            ]));
            let line = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            let fields: Vec<&str> = line.split('|').collect();
            let user = fields[1];
            assert!(
                !user.is_empty() && !user.starts_with("0") && !user.starts_with("root"),
                "{line}"
            );
            assert_eq!(fields[2], "true", "{line}");
            assert_eq!(fields[3], "[ALL]", "{line}");
            assert!(fields[4].contains("no-new-privileges"), "{line}");
            assert_eq!(fields[5], "false", "{line}");
        }
    }

    // down, then up -d: the user, the chat and the file are still there.
    for server in [server_a, server_b] {
        run(&mut server.compose(&tools, &["down", "--timeout", "10"]));
    }
    let b_again = server_b.up(&tools);
    let a_again = server_a.up(&tools);
    eprintln!("after down: server B healthy in {b_again:.1?}, server A in {a_again:.1?}");
    let token = site.log_in(&credentials);
    let session = site.get(&format!("/api/sessions/{session_id}"), &token);
    assert_eq!(session.status().as_u16(), 200);
    let session: Value = session.json().expect("session JSON");
    let replies: Vec<&str> = session["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "assistant")
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(
        replies.last(),
        Some(&streamed.as_str()),
        "the reply survives down/up: {session}"
    );
    let downloaded = site.get(&format!("/api/files/{file_id}"), &token);
    assert_eq!(downloaded.status().as_u16(), 200);
    assert!(
        downloaded.bytes().expect("body") == upload,
        "the file survives down/up"
    );
    eprintln!(
        "servers: first start healthy in {b_healthy:.1?} (B) and {a_healthy:.1?} (A); after down/up {b_again:.1?} (B) and {a_again:.1?} (A)"
    );
}

/// The `image:` compose runs for `service` (the bundle pins cairn's images).
fn compose_image(folder: &Path, service: &str) -> String {
    let text = std::fs::read_to_string(folder.join("compose.yaml")).expect("compose.yaml");
    let document: Value = serde_norway::from_str(&text).expect("compose YAML");
    document["services"][service]["image"]
        .as_str()
        .expect("image")
        .to_owned()
}
