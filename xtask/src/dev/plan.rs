//! The local stack as data: which processes run, with which command, environment and port,
//! what each waits for, how it is probed and how it is stopped. [`plan`] derives it from the
//! topology (ports, the site, body limits) and the options (port offset, state directory,
//! installed tools); it is pure, so start order, ports and environment are unit-tested
//! without starting anything. The supervisor only executes a plan.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use testkit::postgres::Cluster;

use crate::render::nginx;
use crate::topology::{Image, Topology};

/// The model name the tiny random model is served as (what the api asks for).
pub const TINY_MODEL_NAME: &str = "tiny";

/// Where the stack's binaries and tools are, and what the user asked for.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Holds every byte the stack writes: pgdata, storage, model, nginx prefix, logs, state.
    pub state_dir: PathBuf,
    /// Added to every port of the topology.
    pub port_offset: u16,
    /// Directory of the built gateway, api and inference binaries.
    pub bin_dir: PathBuf,
    /// A Hugging Face model directory to serve instead of the tiny random model.
    pub model: Option<ModelChoice>,
    /// `nginx`, when installed: without it the stack is reached through the gateway.
    pub nginx: Option<PathBuf>,
    /// `s3s-fs`, when installed and wanted: the api then stores files over S3.
    pub s3_server: Option<PathBuf>,
    /// The hand-written nginx pieces (`nginx/*.conf`) the rendered config includes, by name.
    pub nginx_snippets: BTreeMap<String, String>,
    /// The web app nginx serves at `/` (the workspace's `web/`, served in place).
    pub web_root: PathBuf,
    /// HS256 secret shared by the api and the gateway; never printed.
    pub jwt_secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelChoice {
    pub dir: PathBuf,
    pub served_name: String,
}

/// The whole stack, processes in start order (each after everything it depends on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPlan {
    pub processes: Vec<DevProcess>,
    /// What the user opens, printed once every process is healthy.
    pub urls: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevProcess {
    pub name: String,
    pub launch: Launch,
    pub env: Vec<(String, String)>,
    pub port: u16,
    pub depends_on: Vec<String>,
    /// Done once before the first start (not before a restart).
    pub prepare: Vec<Prepare>,
    pub health: Health,
    pub stop: StopSignal,
}

/// How a process is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    Program {
        program: PathBuf,
        args: Vec<String>,
    },
    /// `postgres` in the foreground (run as the `postgres` account when root): the command
    /// comes from `testkit::postgres`.
    Postgres {
        cluster: Cluster,
        settings: Vec<(String, String)>,
    },
}

/// Work done before a process first starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepare {
    CreateDir(PathBuf),
    /// initdb when the cluster has no data yet (data persists between runs).
    InitPostgres(Cluster),
    /// `inference tiny-model DIR` when DIR has no config.json yet.
    TinyModel {
        inference: PathBuf,
        dir: PathBuf,
    },
    /// A file written through a temporary file and a rename (the nginx config and snippets).
    WriteFile {
        path: PathBuf,
        text: String,
    },
}

/// How readiness is asked (also recorded in the state file for `dev status`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// `pg_isready` against the server on 127.0.0.1:port.
    Postgres { port: u16 },
    /// A 2xx answer to `GET path` on 127.0.0.1:port.
    Http { port: u16, path: String },
    /// Something accepts TCP connections on 127.0.0.1:port.
    Tcp(u16),
}

/// The signal that asks a process to stop cleanly (SIGKILL follows after the deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Term,
    /// PostgreSQL's fast shutdown: SIGTERM would wait for every client to disconnect.
    Int,
}

impl StopSignal {
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Term => "TERM",
            StopSignal::Int => "INT",
        }
    }
}

/// The ports of the topology the local stack uses, before the offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TopologyPorts {
    postgres: u16,
    storage: u16,
    inference: u16,
    api: u16,
    gateway: u16,
    nginx: u16,
}

fn ports_of(topology: &Topology) -> Result<TopologyPorts> {
    let built = |image: &str| {
        service_port(topology, |service| {
            matches!(topology.images.get(service.image.get_ref()), Some(Image::Build(b)) if b.get_ref() == image)
        })
        .with_context(|| format!("no service of the topology runs the `{image}` image with a port"))
    };
    let inference = built("inference").or_else(|_| built("inference-cuda"))?;
    let postgres = service_port(topology, |service| {
        match topology.images.get(service.image.get_ref()) {
            Some(Image::Build(b)) => b.get_ref() == "postgres",
            Some(Image::Reference(r)) => r.get_ref().contains("/postgres:"),
            None => false,
        }
    })
    .context("no service of the topology runs a postgres image with a port")?;
    let api_service = topology
        .services
        .values()
        .find(|s| matches!(topology.images.get(s.image.get_ref()), Some(Image::Build(b)) if b.get_ref() == "api"));
    let storage = api_service
        .and_then(|api| api.links.get("S3_ENDPOINT"))
        .and_then(|target| topology.services.get(target.get_ref()))
        .and_then(|service| service.port)
        .context("the api's S3_ENDPOINT link names no service with a port")?;
    Ok(TopologyPorts {
        postgres,
        storage,
        inference,
        api: built("api")?,
        gateway: built("gateway")?,
        nginx: topology.site.local_port,
    })
}

fn service_port(
    topology: &Topology,
    wanted: impl Fn(&crate::topology::Service) -> bool,
) -> Option<u16> {
    topology
        .services
        .values()
        .find(|service| wanted(service))
        .and_then(|service| service.port)
}

fn shifted(port: u16, offset: u16, name: &str) -> Result<u16> {
    port.checked_add(offset)
        .with_context(|| format!("{name}'s port {port} + --port-offset {offset} is above 65535"))
}

fn pairs(items: &[(&str, String)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Derives the local stack from the topology and the options.
pub fn plan(topology: &Topology, options: &DevOptions) -> Result<DevPlan> {
    let base = ports_of(topology)?;
    let offset = options.port_offset;
    let ports = TopologyPorts {
        postgres: shifted(base.postgres, offset, "postgres")?,
        storage: shifted(base.storage, offset, "storage")?,
        inference: shifted(base.inference, offset, "inference")?,
        api: shifted(base.api, offset, "api")?,
        gateway: shifted(base.gateway, offset, "gateway")?,
        nginx: shifted(base.nginx, offset, "nginx")?,
    };
    let state = &options.state_dir;
    let body_limit = u64::from(topology.site.body_limit_mib) * 1024 * 1024;
    // Human-readable logs for the multiplexer; colour is the supervisor's job.
    let logging = [
        ("RUST_LOG", "info".to_owned()),
        ("LOG_FORMAT", "pretty".to_owned()),
        ("NO_COLOR", "1".to_owned()),
    ];
    let mut processes = Vec::new();

    let cluster = Cluster::new(state.join("postgres"), ports.postgres);
    processes.push(DevProcess {
        name: "postgres".into(),
        launch: Launch::Postgres {
            cluster: cluster.clone(),
            settings: Vec::new(),
        },
        env: Vec::new(),
        port: ports.postgres,
        depends_on: Vec::new(),
        prepare: vec![Prepare::InitPostgres(cluster.clone())],
        health: Health::Postgres {
            port: ports.postgres,
        },
        stop: StopSignal::Int,
    });

    let storage_env = match &options.s3_server {
        Some(s3s_fs) => {
            let root = state.join("s3");
            processes.push(DevProcess {
                name: "storage".into(),
                launch: Launch::Program {
                    program: s3s_fs.clone(),
                    args: vec![
                        "--host".into(),
                        "127.0.0.1".into(),
                        "--port".into(),
                        ports.storage.to_string(),
                        "--access-key".into(),
                        S3_ACCESS_KEY.into(),
                        "--secret-key".into(),
                        S3_SECRET_KEY.into(),
                        root.display().to_string(),
                    ],
                },
                env: Vec::new(),
                port: ports.storage,
                depends_on: Vec::new(),
                prepare: vec![Prepare::CreateDir(root.join(S3_BUCKET))],
                health: Health::Tcp(ports.storage),
                stop: StopSignal::Term,
            });
            vec![
                ("STORAGE_BACKEND", "s3".to_owned()),
                ("S3_ENDPOINT", url(ports.storage)),
                ("S3_BUCKET", S3_BUCKET.to_owned()),
                ("S3_REGION", "us-east-1".to_owned()),
                ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.to_owned()),
                ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.to_owned()),
            ]
        }
        None => {
            let files = state.join("storage");
            vec![
                ("STORAGE_BACKEND", "local".to_owned()),
                ("STORAGE_DIR", files.display().to_string()),
            ]
        }
    };

    let inference_bin = options.bin_dir.join("inference");
    let (model_dir, served_name, model_prepare) = match &options.model {
        Some(choice) => (choice.dir.clone(), choice.served_name.clone(), Vec::new()),
        None => {
            let dir = state.join("model");
            (
                dir.clone(),
                TINY_MODEL_NAME.to_owned(),
                vec![Prepare::TinyModel {
                    inference: inference_bin.clone(),
                    dir,
                }],
            )
        }
    };
    let mut inference_env = vec![
        ("INFERENCE_LISTEN", local(ports.inference)),
        ("MODEL_DIR", model_dir.display().to_string()),
        ("SERVED_MODEL_NAME", served_name.clone()),
        ("DEVICE", "cpu".to_owned()),
    ];
    inference_env.extend(logging.iter().cloned());
    processes.push(DevProcess {
        name: "inference".into(),
        launch: Launch::Program {
            program: inference_bin,
            args: vec!["serve".into()],
        },
        env: pairs(&inference_env),
        port: ports.inference,
        depends_on: Vec::new(),
        prepare: model_prepare,
        health: Health::Http {
            port: ports.inference,
            path: "/health".into(),
        },
        stop: StopSignal::Term,
    });

    let mut api_env = vec![
        ("API_LISTEN", local(ports.api)),
        ("DATABASE_URL", cluster.url()),
        ("JWT_SECRET", options.jwt_secret.clone()),
        ("LLM_BASE_URL", format!("{}/v1", url(ports.inference))),
        ("LLM_MODEL", served_name),
        ("API_MAX_UPLOAD_BYTES", body_limit.to_string()),
    ];
    api_env.extend(storage_env);
    api_env.extend(logging.iter().cloned());
    let mut api_depends = vec!["postgres".to_owned(), "inference".to_owned()];
    let mut api_prepare = Vec::new();
    if options.s3_server.is_some() {
        api_depends.insert(1, "storage".to_owned());
    } else {
        api_prepare.push(Prepare::CreateDir(state.join("storage")));
    }
    processes.push(DevProcess {
        name: "api".into(),
        launch: Launch::Program {
            program: options.bin_dir.join("api"),
            args: vec!["serve".into()],
        },
        env: pairs(&api_env),
        port: ports.api,
        depends_on: api_depends,
        prepare: api_prepare,
        // Ready means database, storage and the LLM all answer.
        health: Health::Http {
            port: ports.api,
            path: "/api/health/ready".into(),
        },
        stop: StopSignal::Term,
    });

    let mut gateway_env = vec![
        ("GATEWAY_LISTEN", local(ports.gateway)),
        ("GATEWAY_API_UPSTREAMS", url(ports.api)),
        ("GATEWAY_INFERENCE_UPSTREAMS", url(ports.inference)),
        ("GATEWAY_MAX_BODY_BYTES", body_limit.to_string()),
        ("JWT_SECRET", options.jwt_secret.clone()),
    ];
    gateway_env.extend(logging.iter().cloned());
    processes.push(DevProcess {
        name: "gateway".into(),
        launch: Launch::Program {
            program: options.bin_dir.join("gateway"),
            args: vec!["serve".into()],
        },
        env: pairs(&gateway_env),
        port: ports.gateway,
        depends_on: vec!["api".into(), "inference".into()],
        prepare: Vec::new(),
        health: Health::Http {
            port: ports.gateway,
            path: "/api/health".into(),
        },
        stop: StopSignal::Term,
    });

    let mut urls = Vec::new();
    if let Some(program) = &options.nginx {
        processes.push(nginx_process(topology, options, program, &ports));
        urls.push((
            "web app (nginx)".to_owned(),
            format!("{}/", url(ports.nginx)),
        ));
    }
    urls.push(("gateway".to_owned(), url(ports.gateway)));
    urls.push((
        "health of every service".to_owned(),
        format!("{}/api/health/all", url(ports.gateway)),
    ));
    urls.push(("api".to_owned(), url(ports.api)));
    urls.push((
        "inference (OpenAI API)".to_owned(),
        format!("{}/v1", url(ports.inference)),
    ));
    urls.push(("postgres".to_owned(), cluster.url()));
    Ok(DevPlan { processes, urls })
}

/// nginx with the topology's plain-HTTP config (rendered by `render`, moved to this stack's
/// ports), its prefix under the state directory.
fn nginx_process(
    topology: &Topology,
    options: &DevOptions,
    program: &Path,
    ports: &TopologyPorts,
) -> DevProcess {
    let prefix = options.state_dir.join("nginx");
    let config = nginx::render_local_nginx(
        &topology.site,
        ports.nginx,
        &local(ports.gateway),
        &options.web_root,
    );
    let mut prepare = vec![Prepare::WriteFile {
        path: prefix.join("nginx.conf"),
        text: config,
    }];
    for (name, text) in &options.nginx_snippets {
        prepare.push(Prepare::WriteFile {
            path: prefix.join("snippets").join(name),
            text: text.clone(),
        });
    }
    DevProcess {
        name: "nginx".into(),
        launch: Launch::Program {
            program: program.to_owned(),
            args: vec![
                "-p".into(),
                format!("{}/", prefix.display()),
                "-c".into(),
                "nginx.conf".into(),
                "-e".into(),
                "stderr".into(),
                "-g".into(),
                "daemon off;".into(),
            ],
        },
        env: Vec::new(),
        port: ports.nginx,
        depends_on: vec!["gateway".into()],
        prepare,
        // Through nginx to the gateway: the whole front path answers.
        health: Health::Http {
            port: ports.nginx,
            path: "/api/health".into(),
        },
        stop: StopSignal::Term,
    }
}

/// The bucket, keys and region of the local S3 server (local, not secret).
pub const S3_BUCKET: &str = "cairn";
pub const S3_ACCESS_KEY: &str = "cairn-dev-access";
pub const S3_SECRET_KEY: &str = "cairn-dev-secret-key";

impl DevPlan {
    #[cfg(test)]
    pub fn process(&self, name: &str) -> Option<&DevProcess> {
        self.processes.iter().find(|p| p.name == name)
    }

    /// Fails naming the first port that is taken, its service, and the way out.
    pub fn check_ports(&self, is_free: impl Fn(u16) -> bool) -> Result<()> {
        let taken: Vec<&DevProcess> = self.processes.iter().filter(|p| !is_free(p.port)).collect();
        if taken.is_empty() {
            return Ok(());
        }
        let mut message = String::new();
        for process in &taken {
            let _ = writeln!(
                message,
                "port {} ({}) is already in use on 127.0.0.1",
                process.port, process.name
            );
        }
        message.push_str(
            "stop what holds it (a stack left running? `cargo xtask dev status`), or move the whole stack with --port-offset N (e.g. --port-offset 10000)",
        );
        bail!(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{project, topology};

    fn options() -> DevOptions {
        DevOptions {
            state_dir: PathBuf::from("/state"),
            port_offset: 0,
            bin_dir: PathBuf::from("/bin-dir"),
            model: None,
            nginx: Some(PathBuf::from("/usr/sbin/nginx")),
            s3_server: None,
            nginx_snippets: BTreeMap::from([("proxy.conf".to_owned(), "# proxy\n".to_owned())]),
            jwt_secret: "not-a-real-secret-not-a-real-secret".into(),
            web_root: PathBuf::from("/work/cairn/web"),
        }
    }

    fn default_topology() -> Topology {
        topology::load(&project::root().join(topology::DEFAULT_PATH)).expect("default topology")
    }

    fn names(plan: &DevPlan) -> Vec<&str> {
        plan.processes.iter().map(|p| p.name.as_str()).collect()
    }

    fn env<'a>(process: &'a DevProcess, key: &str) -> &'a str {
        process
            .env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{} has no {key}", process.name))
    }

    #[test]
    fn every_process_starts_after_what_it_depends_on() {
        let plan = plan(&default_topology(), &options()).expect("plan");
        assert_eq!(
            names(&plan),
            ["postgres", "inference", "api", "gateway", "nginx"]
        );
        for (index, process) in plan.processes.iter().enumerate() {
            for dependency in &process.depends_on {
                let position = plan
                    .processes
                    .iter()
                    .position(|p| &p.name == dependency)
                    .unwrap_or_else(|| panic!("{} depends on unknown {dependency}", process.name));
                assert!(
                    position < index,
                    "{} starts before {dependency}",
                    process.name
                );
            }
        }
    }

    #[test]
    fn ports_come_from_the_topology_and_move_with_the_offset() {
        let topology = default_topology();
        let ports = |offset| {
            let plan = plan(
                &topology,
                &DevOptions {
                    port_offset: offset,
                    ..options()
                },
            )
            .expect("plan");
            plan.processes
                .iter()
                .map(|p| (p.name.clone(), p.port))
                .collect::<Vec<_>>()
        };
        let expected = |offset: u16| {
            [
                ("postgres", 5432),
                ("inference", 8001),
                ("api", 8000),
                ("gateway", 8080),
                ("nginx", 8088),
            ]
            .map(|(name, port)| (name.to_owned(), port + offset))
            .to_vec()
        };
        assert_eq!(ports(0), expected(0));
        assert_eq!(ports(1000), expected(1000));
        let moved = plan(
            &topology,
            &DevOptions {
                port_offset: 1000,
                ..options()
            },
        )
        .expect("plan");
        let api = moved.process("api").expect("api");
        assert_eq!(env(api, "API_LISTEN"), "127.0.0.1:9000");
        assert_eq!(
            env(api, "DATABASE_URL"),
            "postgres://postgres@127.0.0.1:6432/postgres"
        );
        assert_eq!(env(api, "LLM_BASE_URL"), "http://127.0.0.1:9001/v1");
        let gateway = moved.process("gateway").expect("gateway");
        assert_eq!(
            env(gateway, "GATEWAY_API_UPSTREAMS"),
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            env(gateway, "GATEWAY_INFERENCE_UPSTREAMS"),
            "http://127.0.0.1:9001"
        );
    }

    #[test]
    fn an_offset_past_the_last_port_is_refused() {
        let err = plan(
            &default_topology(),
            &DevOptions {
                port_offset: 60000,
                ..options()
            },
        )
        .expect_err("8001 + 60000 > 65535");
        assert!(err.to_string().contains("--port-offset 60000"), "{err}");
    }

    #[test]
    fn the_environment_wires_the_services_together() {
        let plan = plan(&default_topology(), &options()).expect("plan");
        let api = plan.process("api").expect("api");
        let gateway = plan.process("gateway").expect("gateway");
        assert_eq!(env(api, "JWT_SECRET"), env(gateway, "JWT_SECRET"));
        assert_eq!(env(api, "STORAGE_BACKEND"), "local");
        assert_eq!(env(api, "STORAGE_DIR"), "/state/storage");
        assert_eq!(env(api, "LLM_MODEL"), TINY_MODEL_NAME);
        // The site's body limit (25 MiB in the default topology) reaches both services.
        assert_eq!(env(api, "API_MAX_UPLOAD_BYTES"), "26214400");
        assert_eq!(env(gateway, "GATEWAY_MAX_BODY_BYTES"), "26214400");
        let inference = plan.process("inference").expect("inference");
        assert_eq!(env(inference, "MODEL_DIR"), "/state/model");
        assert_eq!(env(inference, "SERVED_MODEL_NAME"), TINY_MODEL_NAME);
        assert_eq!(env(inference, "DEVICE"), "cpu");
        assert_eq!(
            inference.prepare,
            [Prepare::TinyModel {
                inference: PathBuf::from("/bin-dir/inference"),
                dir: PathBuf::from("/state/model"),
            }]
        );
        let postgres = plan.process("postgres").expect("postgres");
        assert_eq!(postgres.stop, StopSignal::Int);
        assert_eq!(
            postgres.prepare,
            [Prepare::InitPostgres(Cluster::new("/state/postgres", 5432))]
        );
    }

    #[test]
    fn a_given_model_directory_is_served_as_is() {
        let plan = plan(
            &default_topology(),
            &DevOptions {
                model: Some(ModelChoice {
                    dir: PathBuf::from("/models/qwen"),
                    served_name: "qwen".into(),
                }),
                ..options()
            },
        )
        .expect("plan");
        let inference = plan.process("inference").expect("inference");
        assert!(inference.prepare.is_empty());
        assert_eq!(env(inference, "MODEL_DIR"), "/models/qwen");
        assert_eq!(env(plan.process("api").expect("api"), "LLM_MODEL"), "qwen");
    }

    #[test]
    fn an_s3_server_joins_the_stack_when_installed() {
        let plan = plan(
            &default_topology(),
            &DevOptions {
                s3_server: Some(PathBuf::from("/cargo/bin/s3s-fs")),
                nginx: None,
                ..options()
            },
        )
        .expect("plan");
        assert_eq!(
            names(&plan),
            ["postgres", "storage", "inference", "api", "gateway"]
        );
        let api = plan.process("api").expect("api");
        assert_eq!(env(api, "STORAGE_BACKEND"), "s3");
        assert_eq!(env(api, "S3_ENDPOINT"), "http://127.0.0.1:3900");
        assert!(api.depends_on.contains(&"storage".to_owned()));
    }

    #[test]
    fn nginx_gets_the_rendered_local_config_on_the_stack_ports() {
        let plan = plan(
            &default_topology(),
            &DevOptions {
                port_offset: 100,
                ..options()
            },
        )
        .expect("plan");
        let nginx = plan.process("nginx").expect("nginx");
        let config = nginx
            .prepare
            .iter()
            .find_map(|step| match step {
                Prepare::WriteFile { path, text } if path.ends_with("nginx.conf") => Some(text),
                _ => None,
            })
            .expect("nginx.conf is written");
        assert!(config.contains("listen 127.0.0.1:8188;"), "{config}");
        assert!(config.contains("server 127.0.0.1:8180;"), "{config}");
        assert!(config.contains("root /work/cairn/web;"), "{config}");
        assert!(
            plan.urls.contains(&(
                "web app (nginx)".to_owned(),
                "http://127.0.0.1:8188/".to_owned()
            )),
            "{:?}",
            plan.urls
        );
        assert!(nginx.prepare.contains(&Prepare::WriteFile {
            path: PathBuf::from("/state/nginx/snippets/proxy.conf"),
            text: "# proxy\n".into(),
        }));
    }

    #[test]
    fn without_nginx_the_stack_ends_at_the_gateway() {
        let plan = plan(
            &default_topology(),
            &DevOptions {
                nginx: None,
                ..options()
            },
        )
        .expect("plan");
        assert!(plan.process("nginx").is_none());
        assert!(plan.urls.iter().all(|(_, url)| !url.contains(":8088")));
    }

    #[test]
    fn a_taken_port_is_named_with_its_service_and_the_offset_flag() {
        let plan = plan(&default_topology(), &options()).expect("plan");
        let err = plan
            .check_ports(|port| port != 8080)
            .expect_err("8080 is taken");
        let message = err.to_string();
        assert!(
            message.contains("port 8080 (gateway) is already in use"),
            "{message}"
        );
        assert!(message.contains("--port-offset"), "{message}");
        plan.check_ports(|_| true).expect("all free");
    }
}
