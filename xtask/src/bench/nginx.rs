//! A scratch nginx that the benchmarks run beside what they measure: its config and temporary
//! paths live under a prefix directory of the benchmark's own, and it is stopped gracefully when
//! dropped. It knows nothing of what the config serves; callers wait for their own port.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use testkit::ProcessGuard;

pub struct Nginx(ProcessGuard);

impl Nginx {
    /// Writes `conf` to `PREFIX/nginx.conf` and starts nginx on it in the foreground.
    pub fn spawn(prefix: &Path, conf: &str) -> Result<Nginx> {
        std::fs::create_dir_all(prefix.join("tmp"))
            .with_context(|| format!("creating {}", prefix.display()))?;
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf)
            .with_context(|| format!("writing {}", conf_path.display()))?;
        let mut prefix_arg = prefix.as_os_str().to_owned();
        prefix_arg.push("/");
        Ok(Nginx(ProcessGuard::spawn(
            "nginx",
            Command::new("nginx")
                .arg("-e")
                .arg("stderr")
                .arg("-p")
                .arg(&prefix_arg)
                .arg("-c")
                .arg(&conf_path),
        )))
    }

    /// The process, for readiness checks that also notice an early exit.
    pub fn process(&mut self) -> &mut ProcessGuard {
        &mut self.0
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.0.terminate(Duration::from_secs(5));
    }
}
