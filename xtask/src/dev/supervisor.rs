//! Runs a [`DevPlan`]: prepares and starts each process once everything it depends on is
//! healthy (independent ones in parallel), multiplexes their output, restarts a process that
//! exits with a bounded exponential backoff, and on SIGINT/SIGTERM (or when a process keeps
//! failing) stops everything in reverse start order: the plan's stop signal to the process
//! group, SIGKILL to the group after its share of the deadline.
//!
//! Every child runs in its own process group (so Ctrl-C at the terminal reaches only the
//! supervisor, which stops the children in order, and a child's own children are stopped with
//! it). It never decides what runs: that is the plan's job.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;

use super::logs::{self, Output};
use super::plan::{DevPlan, DevProcess, Launch, Prepare, StopSignal};
use super::probe;
use super::state::{self, Phase, ProcessState, StackState, StatePaths};
use crate::image::layout::write_atomically;

/// How often the supervisor looks at its processes.
const TICK: Duration = Duration::from_millis(50);

/// Limits of one supervised run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a started process may take to pass its health check.
    pub start_timeout: Duration,
    /// Restarts of one process before the stack gives up.
    pub max_restarts: u32,
    /// The whole stop, all processes together.
    pub stop_timeout: Duration,
}

/// Why the run ended.
#[derive(Debug)]
enum Ending {
    Signal(&'static str),
    Failure(anyhow::Error),
}

enum SlotState {
    Waiting,
    Preparing(JoinHandle<Result<()>>),
    Starting(Instant),
    Healthy,
    Backoff(Instant),
    Stopped,
}

struct Slot {
    state: SlotState,
    child: Option<Child>,
    restarts: u32,
    pids: Vec<u32>,
    log: Arc<Mutex<std::fs::File>>,
}

pub struct Supervisor<'a> {
    plan: &'a DevPlan,
    paths: &'a StatePaths,
    limits: Limits,
    output: Output,
    slots: Vec<Slot>,
    started: Instant,
    cold_start: Option<Duration>,
    phase: Phase,
}

/// Runs the plan until a signal or a failure; Ok after a clean stop on a signal.
pub fn run(plan: &DevPlan, paths: &StatePaths, limits: Limits) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the supervisor's runtime")?;
    runtime.block_on(async {
        let mut supervisor = Supervisor::new(plan, paths, limits)?;
        supervisor.supervise().await
    })
}

impl<'a> Supervisor<'a> {
    fn new(plan: &'a DevPlan, paths: &'a StatePaths, limits: Limits) -> Result<Supervisor<'a>> {
        let logs_dir = paths.logs_dir();
        std::fs::create_dir_all(&logs_dir)
            .with_context(|| format!("creating {}", logs_dir.display()))?;
        let mut slots = Vec::new();
        for process in &plan.processes {
            let path = logs::log_path(&logs_dir, &process.name);
            let file = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            slots.push(Slot {
                state: SlotState::Waiting,
                child: None,
                restarts: 0,
                pids: Vec::new(),
                log: Arc::new(Mutex::new(file)),
            });
        }
        let output = Output::new(plan.processes.iter().map(|p| p.name.as_str()));
        Ok(Supervisor {
            plan,
            paths,
            limits,
            output,
            slots,
            started: Instant::now(),
            cold_start: None,
            phase: Phase::Starting,
        })
    }

    async fn supervise(&mut self) -> Result<()> {
        let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        let mut hangup = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
        self.output.say(&format!(
            "starting {} processes; state in {}",
            self.plan.processes.len(),
            self.paths.dir.display()
        ));
        self.save()?;
        let ending = loop {
            tokio::select! {
                _ = interrupt.recv() => break Ending::Signal("SIGINT"),
                _ = terminate.recv() => break Ending::Signal("SIGTERM"),
                _ = hangup.recv() => break Ending::Signal("SIGHUP"),
                _ = tokio::time::sleep(TICK) => {}
            }
            if let Err(err) = self.tick().await {
                break Ending::Failure(err);
            }
        };
        self.phase = Phase::Stopping;
        match &ending {
            Ending::Signal(name) => self.output.say(&format!("{name}: stopping the stack")),
            Ending::Failure(err) => self.output.say(&format!("{err:#}; stopping the stack")),
        }
        let _ = self.save();
        let leftovers = self.stop_all().await;
        self.phase = match ending {
            Ending::Signal(_) if leftovers.is_empty() => Phase::Stopped,
            _ => Phase::Failed,
        };
        self.save()?;
        match ending {
            Ending::Failure(err) => Err(err),
            Ending::Signal(_) if !leftovers.is_empty() => {
                bail!("still running after the stop: {}", leftovers.join(", "))
            }
            Ending::Signal(_) => {
                self.output.say("stopped; no process of the stack remains");
                Ok(())
            }
        }
    }

    /// One look at every process: start what is unblocked, notice health and exits.
    async fn tick(&mut self) -> Result<()> {
        let mut changed = false;
        for index in 0..self.slots.len() {
            changed |= self.advance(index).await?;
        }
        if self.cold_start.is_none()
            && self
                .slots
                .iter()
                .all(|slot| matches!(slot.state, SlotState::Healthy))
        {
            let elapsed = self.started.elapsed();
            self.cold_start = Some(elapsed);
            self.phase = Phase::Up;
            self.announce(elapsed);
            changed = true;
        }
        if changed {
            self.save()?;
        }
        Ok(())
    }

    /// Moves process `index` one step; true when something a reader of the state cares about
    /// changed.
    async fn advance(&mut self, index: usize) -> Result<bool> {
        let plan = self.plan;
        let process = &plan.processes[index];
        match &self.slots[index].state {
            SlotState::Waiting => {
                if !self.dependencies_healthy(process) {
                    return Ok(false);
                }
                let steps = process.prepare.clone();
                let name = process.name.clone();
                let handle = tokio::task::spawn_blocking(move || {
                    steps
                        .iter()
                        .try_for_each(prepare)
                        .with_context(|| format!("preparing {name}"))
                });
                self.slots[index].state = SlotState::Preparing(handle);
                Ok(false)
            }
            SlotState::Preparing(handle) => {
                if !handle.is_finished() {
                    return Ok(false);
                }
                let SlotState::Preparing(handle) =
                    std::mem::replace(&mut self.slots[index].state, SlotState::Waiting)
                else {
                    unreachable!("matched above")
                };
                handle.await.context("a preparation task panicked")??;
                self.spawn(index)?;
                Ok(true)
            }
            SlotState::Starting(since) => {
                let since = *since;
                if let Some(status) = self.exit_status(index)? {
                    self.crashed(index, &format!("exited with {status} while starting"))
                        .await?;
                    return Ok(true);
                }
                if probe::is_healthy(&process.health).await {
                    self.output.say(&format!(
                        "{} is healthy ({:.2} s after its start)",
                        process.name,
                        since.elapsed().as_secs_f64()
                    ));
                    self.slots[index].state = SlotState::Healthy;
                    return Ok(true);
                }
                if since.elapsed() > self.limits.start_timeout {
                    self.crashed(
                        index,
                        &format!(
                            "did not pass its health check within {:?}",
                            self.limits.start_timeout
                        ),
                    )
                    .await?;
                    return Ok(true);
                }
                Ok(false)
            }
            SlotState::Healthy => match self.exit_status(index)? {
                Some(status) => {
                    self.crashed(index, &format!("exited with {status}"))
                        .await?;
                    Ok(true)
                }
                None => Ok(false),
            },
            SlotState::Backoff(until) => {
                if Instant::now() < *until {
                    return Ok(false);
                }
                self.spawn(index)?;
                Ok(true)
            }
            SlotState::Stopped => Ok(false),
        }
    }

    fn dependencies_healthy(&self, process: &DevProcess) -> bool {
        process.depends_on.iter().all(|dependency| {
            self.plan
                .processes
                .iter()
                .position(|p| &p.name == dependency)
                .is_some_and(|i| matches!(self.slots[i].state, SlotState::Healthy))
        })
    }

    fn exit_status(&mut self, index: usize) -> Result<Option<ExitStatus>> {
        let name = &self.plan.processes[index].name;
        match self.slots[index].child.as_mut() {
            Some(child) => child
                .try_wait()
                .with_context(|| format!("waiting for {name}")),
            None => Ok(None),
        }
    }

    /// Starts process `index` in its own process group with its output pumped.
    fn spawn(&mut self, index: usize) -> Result<()> {
        let plan = self.plan;
        let process = &plan.processes[index];
        let mut command = command(process)?;
        let mut child = command.spawn().with_context(|| {
            format!("starting {} ({})", process.name, describe(&process.launch))
        })?;
        let pid = child
            .id()
            .with_context(|| format!("{} has no pid", process.name))?;
        let slot = &mut self.slots[index];
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(logs::pump(
                stdout,
                self.output.clone(),
                process.name.clone(),
                index,
                slot.log.clone(),
            ));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(logs::pump(
                stderr,
                self.output.clone(),
                process.name.clone(),
                index,
                slot.log.clone(),
            ));
        }
        slot.child = Some(child);
        slot.pids.push(pid);
        slot.state = SlotState::Starting(Instant::now());
        self.output
            .say(&format!("started {} (pid {pid})", process.name));
        Ok(())
    }

    /// A process ended or never became healthy: restart it after a backoff, or give up.
    async fn crashed(&mut self, index: usize, what: &str) -> Result<()> {
        let process = &self.plan.processes[index];
        let name = process.name.clone();
        let stop = process.stop;
        let log = logs::log_path(&self.paths.logs_dir(), &name);
        // Whatever is left of its process group goes too (an nginx worker, a backend).
        if let (Some(mut child), Some(&pgid)) = (
            self.slots[index].child.take(),
            self.slots[index].pids.last(),
        ) {
            stop_group(&mut child, pgid, stop, Duration::from_secs(5)).await;
        }
        let slot = &mut self.slots[index];
        slot.restarts += 1;
        if slot.restarts > self.limits.max_restarts {
            slot.state = SlotState::Stopped;
            return Err(anyhow!(
                "{name} {what}, and it was restarted {} times already; giving up (its log: {})",
                self.limits.max_restarts,
                log.display()
            ));
        }
        let delay = backoff(slot.restarts);
        slot.state = SlotState::Backoff(Instant::now() + delay);
        self.output.say(&format!(
            "{name} {what}; restart {}/{} in {:.1} s",
            slot.restarts,
            self.limits.max_restarts,
            delay.as_secs_f64()
        ));
        Ok(())
    }

    fn announce(&self, elapsed: Duration) {
        let mut text = format!(
            "all {} processes are healthy: cold start {:.2} s",
            self.plan.processes.len(),
            elapsed.as_secs_f64()
        );
        let width = self
            .plan
            .urls
            .iter()
            .map(|(n, _)| n.len())
            .max()
            .unwrap_or(0);
        for (name, url) in &self.plan.urls {
            text.push_str(&format!("\n  {name:<width$}  {url}"));
        }
        text.push_str(&format!(
            "\nlogs: {}/NAME.log; Ctrl-C (or `cargo xtask dev down` when detached) stops the stack",
            self.paths.logs_dir().display()
        ));
        self.output.say(&text);
    }

    /// Stops every process in reverse start order within the stop deadline; returns what is
    /// still alive afterwards (nothing, normally).
    async fn stop_all(&mut self) -> Vec<String> {
        let deadline = Instant::now() + self.limits.stop_timeout;
        for index in (0..self.slots.len()).rev() {
            if let SlotState::Preparing(handle) =
                std::mem::replace(&mut self.slots[index].state, SlotState::Stopped)
            {
                // initdb or the model writer: let it finish, its output is reusable.
                let _ = handle.await;
            }
            let process = &self.plan.processes[index];
            let (Some(mut child), Some(&pgid)) = (
                self.slots[index].child.take(),
                self.slots[index].pids.last(),
            ) else {
                continue;
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let started = Instant::now();
            let status = stop_group(&mut child, pgid, process.stop, remaining).await;
            self.output.say(&format!(
                "stopped {} in {:.2} s ({})",
                process.name,
                started.elapsed().as_secs_f64(),
                match status {
                    Some(status) => status.to_string(),
                    None => "killed with SIGKILL after the deadline".into(),
                }
            ));
            let _ = self.save();
        }
        self.plan
            .processes
            .iter()
            .zip(&self.slots)
            .flat_map(|(process, slot)| {
                slot.pids
                    .iter()
                    .filter(|pid| state::is_alive(**pid))
                    .map(move |pid| format!("{} (pid {pid})", process.name))
            })
            .collect()
    }

    fn save(&self) -> Result<()> {
        let processes = self
            .plan
            .processes
            .iter()
            .zip(&self.slots)
            .map(|(process, slot)| ProcessState {
                name: process.name.clone(),
                pid: slot.child.as_ref().and_then(Child::id),
                port: process.port,
                health: process.health.clone(),
                healthy: matches!(slot.state, SlotState::Healthy),
                restarts: slot.restarts,
                pids: slot.pids.clone(),
            })
            .collect();
        state::write(
            self.paths,
            &StackState {
                supervisor_pid: std::process::id(),
                phase: self.phase,
                cold_start_ms: self.cold_start.map(|d| d.as_millis() as u64),
                urls: self.plan.urls.clone(),
                processes,
            },
        )
    }
}

/// 0.5 s, 1 s, 2 s, … up to 8 s before restart number `restart` (1-based).
pub fn backoff(restart: u32) -> Duration {
    let exponent = restart.saturating_sub(1).min(4);
    Duration::from_millis(500 * (1u64 << exponent))
}

/// The command of a process: its own process group, stdin closed, output piped.
fn command(process: &DevProcess) -> Result<Command> {
    let mut command = match &process.launch {
        Launch::Program { program, args } => {
            let mut command = std::process::Command::new(program);
            command.args(args);
            command
        }
        Launch::Postgres { cluster, settings } => {
            let settings: Vec<(&str, &str)> = settings
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            cluster
                .server_command(&settings)
                .with_context(|| format!("the command of {}", process.name))?
        }
    };
    command
        .envs(process.env.iter().map(|(k, v)| (k, v)))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut command = Command::from(command);
    command.kill_on_drop(false);
    Ok(command)
}

fn describe(launch: &Launch) -> String {
    match launch {
        Launch::Program { program, .. } => program.display().to_string(),
        Launch::Postgres { cluster, .. } => format!("postgres -D {}", cluster.data_dir().display()),
    }
}

/// Sends `stop` to the child's process group (`pgid`, its pid), waits up to `deadline`, then
/// SIGKILLs the group. Returns the exit status when it stopped by itself.
async fn stop_group(
    child: &mut Child,
    pgid: u32,
    stop: StopSignal,
    deadline: Duration,
) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        // The leader is gone already; what is left of its group is not wanted either.
        signal_group(pgid, "KILL").await;
        return Some(status);
    }
    signal_group(pgid, stop.name()).await;
    let status = tokio::time::timeout(deadline, child.wait())
        .await
        .ok()
        .and_then(Result::ok);
    // The leader is gone (or is killed now); its group may still hold children.
    signal_group(pgid, "KILL").await;
    match status {
        Some(status) => Some(status),
        None => {
            let _ = child.wait().await;
            None
        }
    }
}

/// `kill -SIGNAL -- -PGID`: a signal to every process of the group.
async fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

/// One preparation step (blocking: runs on the blocking pool).
fn prepare(step: &Prepare) -> Result<()> {
    match step {
        Prepare::CreateDir(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
        }
        Prepare::InitPostgres(cluster) => {
            if cluster.is_initialised() {
                return Ok(());
            }
            cluster
                .init()
                .context("initialising the PostgreSQL cluster")
        }
        Prepare::TinyModel { inference, dir } => {
            if dir.join("config.json").is_file() {
                return Ok(());
            }
            let output = std::process::Command::new(inference)
                .arg("tiny-model")
                .arg(dir)
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("running {} tiny-model", inference.display()))?;
            if !output.status.success() {
                bail!(
                    "{} tiny-model {} failed ({}): {}",
                    inference.display(),
                    dir.display(),
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            Ok(())
        }
        Prepare::WriteFile { path, text } => write_file(path, text),
    }
}

/// Writes through a temporary file and a rename.
fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    write_atomically(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::plan::Health;

    #[test]
    fn a_process_that_keeps_exiting_is_restarted_with_backoff_then_the_stack_gives_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = StatePaths::new(dir.path().to_owned());
        let port = testkit::free_port();
        let plan = DevPlan {
            processes: vec![DevProcess {
                name: "flaky".into(),
                launch: Launch::Program {
                    program: "/bin/sh".into(),
                    args: vec!["-c".into(), "echo started; exit 3".into()],
                },
                env: Vec::new(),
                port,
                depends_on: Vec::new(),
                prepare: Vec::new(),
                health: Health::Tcp(port),
                stop: StopSignal::Term,
            }],
            urls: Vec::new(),
        };
        let limits = Limits {
            start_timeout: Duration::from_secs(30),
            max_restarts: 2,
            stop_timeout: Duration::from_secs(5),
        };
        let started = Instant::now();
        let err = run(&plan, &paths, limits).expect_err("the stack gives up");
        let message = format!("{err:#}");
        assert!(
            message.contains("flaky exited with exit status: 3 while starting, and it was restarted 2 times already"),
            "{message}"
        );
        // Two restarts: 0.5 s and 1 s of backoff.
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        let state = state::read(&paths).expect("read").expect("state file");
        assert_eq!(state.phase, Phase::Failed);
        assert_eq!(state.processes[0].restarts, 3);
        assert_eq!(state.processes[0].pids.len(), 3);
        let log = std::fs::read_to_string(logs::log_path(&paths.logs_dir(), "flaky")).expect("log");
        assert_eq!(log, "started\nstarted\nstarted\n");
    }

    #[test]
    fn backoff_doubles_up_to_eight_seconds() {
        let delays: Vec<u64> = (1..=7).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
    }
}
