//! `deploy/cuda.lock`: the pinned CUDA wheels, in pip's requirements format with hashes
//! (`name==version --hash=sha256:HEX`, `#` comments), so that `pip download --require-hashes`
//! reads the same file cairn does. Parsing and the cache key are pure.

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// The wheel that carries `nvcc`; its version is the toolkit's CUDA version.
const NVCC_WHEEL: &str = "nvidia-cuda-nvcc";

/// One pinned wheel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedWheel {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

impl PinnedWheel {
    /// The line pip reads (and the key hashes).
    pub fn requirement(&self) -> String {
        format!(
            "{}=={} --hash=sha256:{}",
            self.name, self.version, self.sha256
        )
    }

    /// The start of the wheel's file name: `nvidia_cuda_nvcc-13.0.88-`.
    pub fn file_prefix(&self) -> String {
        format!("{}-{}-", self.name.replace('-', "_"), self.version)
    }
}

/// The parsed lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaLock {
    pub wheels: Vec<PinnedWheel>,
}

impl CudaLock {
    /// Parses `text`; errors name `source` and the line.
    pub fn parse(text: &str, source: &str) -> Result<CudaLock> {
        let mut wheels = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = || format!("{source} line {}", index + 1);
            let (pin, hash) = line
                .split_once(" --hash=sha256:")
                .with_context(|| format!("{}: expected `NAME==VERSION --hash=sha256:HEX`", at()))?;
            let (name, version) = pin
                .split_once("==")
                .with_context(|| format!("{}: {pin:?} is not pinned with ==", at()))?;
            let sha256 = hash.trim();
            if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!("{}: {sha256:?} is not a SHA-256 in hex", at());
            }
            if wheels.iter().any(|w: &PinnedWheel| w.name == name.trim()) {
                bail!("{}: {} is pinned twice", at(), name.trim());
            }
            wheels.push(PinnedWheel {
                name: name.trim().to_owned(),
                version: version.trim().to_owned(),
                sha256: sha256.to_ascii_lowercase(),
            });
        }
        if !wheels.iter().any(|w| w.name == NVCC_WHEEL) {
            bail!("{source}: no {NVCC_WHEEL} pin (it carries nvcc and names the CUDA version)");
        }
        Ok(CudaLock { wheels })
    }

    /// `(major, minor)` of the toolkit, from the nvcc wheel's version.
    pub fn cuda_version(&self) -> Result<(u32, u32)> {
        let nvcc = self
            .wheels
            .iter()
            .find(|w| w.name == NVCC_WHEEL)
            .context("no nvcc wheel")?;
        let mut parts = nvcc.version.split('.').map(str::parse::<u32>);
        match (parts.next(), parts.next()) {
            (Some(Ok(major)), Some(Ok(minor))) => Ok((major, minor)),
            _ => bail!("{NVCC_WHEEL}=={} is not MAJOR.MINOR.PATCH", nvcc.version),
        }
    }

    /// The requirements text pip reads: the pins only, in order.
    pub fn requirements(&self) -> String {
        self.wheels
            .iter()
            .map(|w| format!("{}\n", w.requirement()))
            .collect()
    }

    /// The cache key of the toolkit laid out from these wheels: 16 hex digits of the SHA-256
    /// of [`Self::requirements`].
    pub fn key(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.requirements().as_bytes());
        format!("{:x}", hasher.finalize())[..16].to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = "# comment\n\
        nvidia-cuda-nvcc==13.0.88 --hash=sha256:56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03\n\
        \n\
        nvidia-curand==10.4.0.35 --hash=sha256:1AEE33A5DA6E1DB083FE2B90082DEF8915F30F3248D5896BCEC36A579D941BFC\n";

    #[test]
    fn parses_pins_version_and_a_stable_key() {
        let lock = CudaLock::parse(LOCK, "deploy/cuda.lock").expect("lock");
        assert_eq!(lock.wheels.len(), 2);
        assert_eq!(lock.wheels[1].sha256, lock.wheels[1].sha256.to_lowercase());
        assert_eq!(lock.wheels[1].file_prefix(), "nvidia_curand-10.4.0.35-");
        assert_eq!(lock.cuda_version().expect("version"), (13, 0));
        let mut other = lock.clone();
        other.wheels[1].version = "10.4.0.36".into();
        assert_ne!(lock.key(), other.key());
        // The key of deploy/cuda.lock names the cache folder: a changed rule rebuilds the world.
        let committed = std::fs::read_to_string(crate::project::root().join("deploy/cuda.lock"))
            .expect("deploy/cuda.lock");
        let committed = CudaLock::parse(&committed, "deploy/cuda.lock").expect("parses");
        assert_eq!(committed.key(), "8829715b0dce2c19");
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let err = CudaLock::parse(
            "nvidia-cuda-nvcc>=13 --hash=sha256:00\n",
            "deploy/cuda.lock",
        )
        .expect_err("not pinned");
        assert_eq!(
            format!("{err:#}"),
            r#"deploy/cuda.lock line 1: "nvidia-cuda-nvcc>=13" is not pinned with =="#
        );
        let err =
            CudaLock::parse("nvidia-curand==10.4.0.35\n", "deploy/cuda.lock").expect_err("no hash");
        assert!(format!("{err:#}").starts_with("deploy/cuda.lock line 1: expected"));
        let err = CudaLock::parse("", "deploy/cuda.lock").expect_err("no nvcc");
        assert!(format!("{err:#}").contains("no nvidia-cuda-nvcc pin"));
    }
}
