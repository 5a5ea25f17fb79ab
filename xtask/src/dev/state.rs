//! The state directory's layout and the state file (`dev.json`) the supervisor keeps current:
//! its own pid, the phase of the stack, and per process the pid, port, health check and every
//! pid it ever had (so `down` and the tests can prove none is left). `status`, `logs` and
//! `down` read it; only the supervisor writes it, through a temporary file and a rename.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::plan::Health;
use crate::image::layout::write_atomically;

/// Paths under the state directory.
#[derive(Debug, Clone)]
pub struct StatePaths {
    pub dir: PathBuf,
}

impl StatePaths {
    pub fn new(dir: PathBuf) -> StatePaths {
        StatePaths { dir }
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("dev.json")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// What a detached supervisor prints (the multiplexed log of the whole stack).
    pub fn supervisor_log(&self) -> PathBuf {
        self.logs_dir().join("stack.log")
    }

    pub fn jwt_secret(&self) -> PathBuf {
        self.dir.join("jwt-secret")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Starting,
    Up,
    Stopping,
    Stopped,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackState {
    pub supervisor_pid: u32,
    pub phase: Phase,
    /// Milliseconds from the supervisor's start to every process healthy, once reached.
    pub cold_start_ms: Option<u64>,
    pub urls: Vec<(String, String)>,
    pub processes: Vec<ProcessState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessState {
    pub name: String,
    /// The running process (also its process group), if any.
    pub pid: Option<u32>,
    pub port: u16,
    pub health: Health,
    pub healthy: bool,
    pub restarts: u32,
    /// Every pid this process had in this run.
    pub pids: Vec<u32>,
}

impl StackState {
    /// Every pid the stack ever had, the supervisor's included.
    pub fn all_pids(&self) -> Vec<u32> {
        let mut pids = vec![self.supervisor_pid];
        for process in &self.processes {
            pids.extend(&process.pids);
        }
        pids
    }
}

/// Writes the state through a temporary file and a rename.
pub fn write(paths: &StatePaths, state: &StackState) -> Result<()> {
    let text = serde_json::to_string_pretty(state).context("serialising the stack state")?;
    write_atomically(&paths.state_file(), text.as_bytes())
}

/// The state file, or None when no stack ever ran from this directory.
pub fn read(paths: &StatePaths) -> Result<Option<StackState>> {
    let path = paths.state_file();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    let state =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(Some(state))
}

/// True while `/proc/PID` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|(state, _)| state != "Z" && state != "X")
}

/// True while `pid` is alive and leads its own process group, as every process the supervisor
/// starts (and the detached supervisor itself) does. A recorded pid that the kernel has since
/// given to an unrelated process almost never leads a group, so `down` does not signal it.
pub fn is_alive_group_leader(pid: u32) -> bool {
    is_alive(pid) && stat_fields(pid).is_some_and(|(_, group)| group == pid)
}

/// The state and the process group of `pid`, from `/proc/PID/stat`: the fields after the
/// parenthesised command name are `state ppid pgrp …`.
fn stat_fields(pid: u32) -> Option<(String, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.to_owned();
    let group = fields.nth(1)?.parse().ok()?;
    Some((state, group))
}

/// The running supervisor recorded in `paths`, if any.
pub fn running_supervisor(paths: &StatePaths) -> Result<Option<StackState>> {
    Ok(read(paths)?.filter(|state| {
        is_alive(state.supervisor_pid) && !matches!(state.phase, Phase::Stopped | Phase::Failed)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_round_trips() {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = StatePaths::new(dir.path().to_owned());
        assert_eq!(read(&paths).expect("no file"), None);
        let state = StackState {
            supervisor_pid: 1,
            phase: Phase::Up,
            cold_start_ms: Some(1234),
            urls: vec![("gateway".into(), "http://127.0.0.1:8080".into())],
            processes: vec![ProcessState {
                name: "postgres".into(),
                pid: Some(2),
                port: 5432,
                health: Health::Postgres { port: 5432 },
                healthy: true,
                restarts: 0,
                pids: vec![2],
            }],
        };
        write(&paths, &state).expect("write");
        assert_eq!(read(&paths).expect("read"), Some(state.clone()));
        assert_eq!(state.all_pids(), [1, 2]);
    }

    #[test]
    fn this_process_is_alive_and_a_free_pid_is_not() {
        assert!(is_alive(std::process::id()));
        assert!(!is_alive(u32::MAX - 1));
    }

    #[test]
    fn a_process_in_its_own_group_leads_it_and_one_in_ours_does_not() {
        use std::os::unix::process::CommandExt;
        let mut own_group = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("spawn sleep");
        let mut our_group = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let leads = is_alive_group_leader(own_group.id());
        let follows = is_alive_group_leader(our_group.id());
        for child in [&mut own_group, &mut our_group] {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert!(
            leads,
            "a child started with process_group(0) leads its group"
        );
        assert!(!follows, "a child in the test's group does not");
        assert!(!is_alive_group_leader(own_group.id()), "reaped");
    }
}
