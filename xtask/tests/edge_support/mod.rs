//! What `tests/edge.rs` runs besides cairn's binaries: the nginx configs rendered for loopback
//! (`nginx`), and the upstreams the test scripts (`upstreams`: an OpenAI-format LLM for the api,
//! a WebSocket echo server for the gateway's inference pool).

pub mod nginx;
pub mod upstreams;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long any one step may take: a process to listen, an event to arrive.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}
