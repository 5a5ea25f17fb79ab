//! `cargo xtask dev`: the whole stack as local processes, without Docker: PostgreSQL, object
//! storage (the api's local directory, or s3s-fs when installed), inference on a tiny random
//! model (or `--model-dir`), api, gateway and nginx with the rendered plain-HTTP config.
//!
//! `plan` derives the processes from the topology (pure, unit-tested); `supervisor` runs them;
//! `state` is the state directory and the `dev.json` file that `status`, `logs` and `down` read;
//! `probe` asks for health; `logs` multiplexes output. This file owns the command line, the
//! tool checks, the build and `--detach`; it never writes nginx syntax (that is `render`'s).

mod logs;
pub mod plan;
mod probe;
mod state;
mod supervisor;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{Read, Seek, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::build::cargo::target_dir;
use crate::project;
use crate::render::{NGINX_PIECES, WEB_APP};
use crate::topology;
use plan::{DevOptions, ModelChoice};
use state::{Phase, StatePaths};

/// What every "tool is missing" error offers besides the Debian package.
const NIX_ALTERNATIVE: &str = "or run the same stack with `nix run .#dev`";

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DevArgs {
    #[command(subcommand)]
    command: Option<DevCommand>,
    #[command(flatten)]
    up: UpArgs,
}

#[derive(Debug, clap::Subcommand)]
enum DevCommand {
    /// Start the stack (the default).
    Up(UpArgs),
    /// Show each process of a detached stack: pid, port, health now, restarts.
    Status(StateDirArg),
    /// Print a detached stack's log (every process, prefixed), or one process's log.
    Logs(LogsArgs),
    /// Stop a detached stack (SIGTERM to its supervisor) and check no process remains.
    Down(StateDirArg),
}

#[derive(Debug, Clone, clap::Args)]
struct StateDirArg {
    /// Where the stack keeps its data, logs and state file (default: target/dev).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct LogsArgs {
    #[command(flatten)]
    state: StateDirArg,
    /// One process (postgres, storage, inference, api, gateway, nginx); all when omitted.
    service: Option<String>,
    /// Keep printing what is appended, until the stack stops.
    #[arg(short, long)]
    follow: bool,
}

/// Where the api keeps uploaded files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StorageChoice {
    /// s3s-fs when it is installed, else the local directory.
    Auto,
    /// A directory under the state directory.
    Local,
    /// s3s-fs (an error when it is not installed).
    S3,
}

#[derive(Debug, Clone, clap::Args)]
struct UpArgs {
    #[command(flatten)]
    state: StateDirArg,
    /// The topology the ports and the site come from.
    #[arg(long, default_value = topology::DEFAULT_PATH)]
    topology: PathBuf,
    /// Added to every port of the topology (when the default ports are taken).
    #[arg(long, default_value_t = 0)]
    port_offset: u16,
    /// Build and run release binaries (default: debug).
    #[arg(long)]
    release: bool,
    /// Run binaries from this directory instead of building (gateway, api, inference).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Serve this Hugging Face model directory instead of a tiny random model.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// The name the model is served as (default: the model directory's name).
    #[arg(long, requires = "model_dir")]
    model_name: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    storage: StorageChoice,
    /// Delete the state directory's data (database, files, model, logs) first.
    #[arg(long)]
    fresh: bool,
    /// Run in the background; `cargo xtask dev status|logs|down` then.
    #[arg(long)]
    detach: bool,
    /// Seconds a process may take to pass its health check after it starts.
    #[arg(long, default_value_t = 120)]
    start_timeout: u64,
    /// Restarts of a crashed process before the whole stack stops.
    #[arg(long, default_value_t = 5)]
    max_restarts: u32,
    /// Seconds the whole stop may take before what is left is killed.
    #[arg(long, default_value_t = 20)]
    stop_timeout: u64,
}

pub fn run(args: &DevArgs) -> Result<()> {
    match &args.command {
        None => up(&args.up),
        Some(DevCommand::Up(up_args)) => up(up_args),
        Some(DevCommand::Status(state)) => status(&paths(state)),
        Some(DevCommand::Logs(logs_args)) => logs(
            &paths(&logs_args.state),
            logs_args.service.as_deref(),
            logs_args.follow,
        ),
        Some(DevCommand::Down(state)) => down(&paths(state)),
    }
}

fn paths(arg: &StateDirArg) -> StatePaths {
    let root = project::root();
    let dir = match &arg.state_dir {
        Some(dir) if dir.is_absolute() => dir.clone(),
        Some(dir) => std::env::current_dir()
            .map(|cwd| cwd.join(dir))
            .unwrap_or_else(|_| dir.clone()),
        None => target_dir(&root).join("dev"),
    };
    StatePaths::new(dir)
}

fn up(args: &UpArgs) -> Result<()> {
    let paths = paths(&args.state);
    if let Some(running) = state::running_supervisor(&paths)? {
        bail!(
            "a stack is already running from {} (supervisor pid {}): `cargo xtask dev status`, or `cargo xtask dev down` first",
            paths.dir.display(),
            running.supervisor_pid
        );
    }
    if args.fresh {
        wipe(&paths)?;
    }
    std::fs::create_dir_all(paths.logs_dir())
        .with_context(|| format!("creating {}", paths.logs_dir().display()))?;
    let options = options(args, &paths)?;
    let root = project::root();
    let topology = topology::load(&root.join(&args.topology))?;
    let plan = plan::plan(&topology, &options)?;
    plan.check_ports(port_is_free)?;
    if args.bin_dir.is_none() {
        build(args.release)?;
    }
    for process in &plan.processes {
        if let plan::Launch::Program { program, .. } = &process.launch
            && !program.is_file()
        {
            bail!(
                "{} is missing ({} needs it)",
                program.display(),
                process.name
            );
        }
    }
    let limits = supervisor::Limits {
        start_timeout: Duration::from_secs(args.start_timeout),
        max_restarts: args.max_restarts,
        stop_timeout: Duration::from_secs(args.stop_timeout),
    };
    if args.detach {
        detach(args, &paths, &options.bin_dir, limits)
    } else {
        supervisor::run(&plan, &paths, limits)
    }
}

/// Finds the tools and the binaries' directory, reads the nginx pieces and the JWT secret.
fn options(args: &UpArgs, paths: &StatePaths) -> Result<DevOptions> {
    for program in ["initdb", "postgres"] {
        if testkit::postgres::program(program).is_none() {
            bail!(
                "{program} is not installed (PostgreSQL): {} ({NIX_ALTERNATIVE})",
                testkit::postgres::INSTALL
            );
        }
    }
    let nginx = testkit::find_program("nginx");
    if nginx.is_none() {
        eprintln!(
            "warning: nginx is not installed (apt-get install -y nginx, {NIX_ALTERNATIVE}): the stack runs without it; use the gateway's URL"
        );
    }
    let s3_server = match args.storage {
        StorageChoice::Local => None,
        StorageChoice::Auto => testkit::find_program("s3s-fs"),
        StorageChoice::S3 => Some(testkit::find_program("s3s-fs").with_context(|| {
            format!(
                "s3s-fs is not installed: cargo install --locked s3s-fs --version 0.14.1 --features binary ({NIX_ALTERNATIVE})"
            )
        })?),
    };
    // Built later, once the ports are known to be free (`up`).
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => build_dir(args.release),
    };
    let model = match &args.model_dir {
        Some(dir) => {
            if !dir.join("config.json").is_file() {
                bail!(
                    "--model-dir {}: no config.json there (a Hugging Face model directory is expected)",
                    dir.display()
                );
            }
            let served_name = match &args.model_name {
                Some(name) => name.clone(),
                None => dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .with_context(|| {
                        format!(
                            "--model-dir {} has no UTF-8 name: pass --model-name",
                            dir.display()
                        )
                    })?
                    .to_owned(),
            };
            Some(ModelChoice {
                dir: std::path::absolute(dir)
                    .with_context(|| format!("resolving {}", dir.display()))?,
                served_name,
            })
        }
        None => None,
    };
    Ok(DevOptions {
        state_dir: paths.dir.clone(),
        port_offset: args.port_offset,
        bin_dir,
        model,
        nginx,
        s3_server,
        nginx_snippets: nginx_snippets(&project::root().join(NGINX_PIECES))?,
        web_root: project::root().join(WEB_APP),
        jwt_secret: jwt_secret(paths)?,
    })
}

/// Where `build` puts the binaries.
fn build_dir(release: bool) -> PathBuf {
    let profile = if release { "release" } else { "debug" };
    target_dir(&project::root()).join(profile)
}

/// `cargo build -p gateway -p api -p inference` (debug, or release) into `build_dir`.
fn build(release: bool) -> Result<()> {
    let root = project::root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(&root).args([
        "build",
        "--locked",
        "-p",
        "gateway",
        "-p",
        "api",
        "-p",
        "inference",
    ]);
    if release {
        command.arg("--release");
    }
    let status = command.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of gateway, api and inference failed: {status}");
    }
    Ok(())
}

fn nginx_snippets(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut snippets = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if path.is_file() && name.ends_with(".conf") {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            snippets.insert(name.to_owned(), text);
        }
    }
    Ok(snippets)
}

/// The stack's HS256 secret: 32 random bytes (hex) made once per state directory, kept with
/// mode 0600 so tokens survive a restart; never printed.
fn jwt_secret(paths: &StatePaths) -> Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = paths.jwt_secret();
    if let Ok(secret) = std::fs::read_to_string(&path)
        && secret.trim().len() >= 64
    {
        return Ok(secret.trim().to_owned());
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("reading /dev/urandom for the JWT secret")?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let temporary = path.with_extension("tmp");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut file| file.write_all(secret.as_bytes()))
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, &path)
        .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))?;
    Ok(secret)
}

fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// `--fresh`: everything the stack wrote goes, the directory itself stays.
fn wipe(paths: &StatePaths) -> Result<()> {
    let entries = match std::fs::read_dir(&paths.dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("listing {}", paths.dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("removing {} (--fresh)", path.display()))?;
    }
    Ok(())
}

/// Starts the supervisor in the background (its own process group, output to
/// logs/stack.log) and waits until the stack is up or has failed.
fn detach(
    args: &UpArgs,
    paths: &StatePaths,
    bin_dir: &Path,
    limits: supervisor::Limits,
) -> Result<()> {
    let log_path = paths.supervisor_log();
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let program = std::env::current_exe().context("finding the xtask binary")?;
    let mut child = Command::new(&program)
        .args(supervisor_args(args, paths, bin_dir))
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("sharing the log file")?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {} dev in the background", program.display()))?;
    let supervisor_pid = child.id();
    let waited = Instant::now();
    let deadline = limits.start_timeout * 2 + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().context("waiting for the supervisor")? {
            bail!(
                "the stack's supervisor exited with {status} while starting:\n{}",
                tail(&log_path, 40)
            );
        }
        if let Some(current) = state::read(paths)?
            && current.supervisor_pid == supervisor_pid
        {
            match current.phase {
                Phase::Up => {
                    println!(
                        "cairn dev stack is up (supervisor pid {supervisor_pid}, cold start {:.2} s)",
                        current.cold_start_ms.unwrap_or(0) as f64 / 1000.0
                    );
                    for (name, url) in &current.urls {
                        println!("  {name:<24}  {url}");
                    }
                    println!(
                        "cargo xtask dev status | logs [SERVICE] [-f] | down   (state in {})",
                        paths.dir.display()
                    );
                    return Ok(());
                }
                Phase::Failed | Phase::Stopped => {
                    bail!("the stack failed to start:\n{}", tail(&log_path, 40))
                }
                Phase::Starting | Phase::Stopping => {}
            }
        }
        if waited.elapsed() > deadline {
            bail!(
                "the stack is not up after {deadline:?} (supervisor pid {supervisor_pid} still running; `cargo xtask dev down` stops it):\n{}",
                tail(&log_path, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The detached supervisor's command line: the same stack, from the binaries just built, in
/// the foreground of its own process group.
fn supervisor_args(args: &UpArgs, paths: &StatePaths, bin_dir: &Path) -> Vec<OsString> {
    let mut out: Vec<OsString> = vec![
        "dev".into(),
        "up".into(),
        "--state-dir".into(),
        paths.dir.clone().into(),
        "--topology".into(),
        project::root().join(&args.topology).into(),
        "--port-offset".into(),
        args.port_offset.to_string().into(),
        "--bin-dir".into(),
        bin_dir.into(),
        "--storage".into(),
        match args.storage {
            StorageChoice::Auto => "auto",
            StorageChoice::Local => "local",
            StorageChoice::S3 => "s3",
        }
        .into(),
        "--start-timeout".into(),
        args.start_timeout.to_string().into(),
        "--max-restarts".into(),
        args.max_restarts.to_string().into(),
        "--stop-timeout".into(),
        args.stop_timeout.to_string().into(),
    ];
    if let Some(dir) = &args.model_dir {
        out.push("--model-dir".into());
        out.push(
            std::path::absolute(dir)
                .unwrap_or_else(|_| dir.clone())
                .into(),
        );
    }
    if let Some(name) = &args.model_name {
        out.push("--model-name".into());
        out.push(name.into());
    }
    out
}

/// The last `lines` lines of a file, for an error message.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    format!("({})\n{}", path.display(), all[start..].join("\n"))
}

fn status(paths: &StatePaths) -> Result<()> {
    let Some(current) = state::read(paths)? else {
        println!("no stack has run from {}", paths.dir.display());
        return Ok(());
    };
    let supervisor_alive = state::is_alive(current.supervisor_pid);
    let mut text = format!(
        "supervisor pid {} {} (last phase: {:?}); state in {}\n",
        current.supervisor_pid,
        if supervisor_alive {
            "running"
        } else {
            "not running"
        },
        current.phase,
        paths.dir.display()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for the health probes")?;
    let _ = writeln!(
        text,
        "{:<10} {:>8} {:>6} {:<8} {:>8}",
        "SERVICE", "PID", "PORT", "HEALTH", "RESTARTS"
    );
    for process in &current.processes {
        let pid = process.pid.filter(|pid| state::is_alive(*pid));
        let healthy = runtime.block_on(probe::is_healthy(&process.health));
        let _ = writeln!(
            text,
            "{:<10} {:>8} {:>6} {:<8} {:>8}",
            process.name,
            pid.map_or("-".to_owned(), |p| p.to_string()),
            process.port,
            if healthy { "up" } else { "down" },
            process.restarts
        );
    }
    if supervisor_alive && current.phase == Phase::Up {
        for (name, url) in &current.urls {
            let _ = writeln!(text, "  {name:<24}  {url}");
        }
    }
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(())
}

fn logs(paths: &StatePaths, service: Option<&str>, follow: bool) -> Result<()> {
    let path = match service {
        None => paths.supervisor_log(),
        Some(name) => {
            let path = logs::log_path(&paths.logs_dir(), name);
            if !path.is_file() {
                let known = state::read(paths)?
                    .map(|s| {
                        s.processes
                            .iter()
                            .map(|p| p.name.clone())
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                bail!(
                    "no log for {name} under {} (processes: {known})",
                    paths.logs_dir().display()
                );
            }
            path
        }
    };
    let mut file = std::fs::File::open(&path).with_context(|| {
        format!(
            "opening {} (was the stack started with --detach?)",
            path.display()
        )
    })?;
    let mut stdout = std::io::stdout();
    std::io::copy(&mut file, &mut stdout).context("printing the log")?;
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let position = file.stream_position().context("reading the log position")?;
        let length = file.metadata().map(|m| m.len()).unwrap_or(position);
        if length < position {
            // A new run truncated the log: start from its beginning.
            file.seek(std::io::SeekFrom::Start(0))
                .context("rewinding the log")?;
        }
        std::io::copy(&mut file, &mut stdout).context("printing the log")?;
        let running = state::running_supervisor(paths)?.is_some();
        if !running {
            std::io::copy(&mut file, &mut stdout).context("printing the log")?;
            return Ok(());
        }
    }
}

fn down(paths: &StatePaths) -> Result<()> {
    let Some(current) = state::read(paths)? else {
        println!("no stack has run from {}", paths.dir.display());
        return Ok(());
    };
    let pid = current.supervisor_pid;
    if state::is_alive(pid) {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while state::is_alive(pid) {
            if Instant::now() > deadline {
                bail!("the supervisor (pid {pid}) did not stop within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let left: Vec<u32> = current
        .all_pids()
        .into_iter()
        .filter(|pid| state::is_alive_group_leader(*pid))
        .collect();
    if !left.is_empty() {
        for pid in &left {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
        bail!(
            "processes of the stack were still running after its supervisor stopped and were killed: {left:?} (see {})",
            paths.supervisor_log().display()
        );
    }
    println!(
        "stopped the stack of {} (supervisor pid {pid}); no process of it remains",
        paths.dir.display()
    );
    Ok(())
}
