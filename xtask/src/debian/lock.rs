//! `deploy/debian.lock`: the Debian release and, per package set, every `.deb` an image uses
//! (package, version, sha256, size). Reading and writing the file only; `resolve` decides what
//! goes in, `fetch` gets the files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Where the lock lives, relative to the workspace root.
pub const LOCK_PATH: &str = "deploy/debian.lock";

const HEADER: &str = "# Written by `cargo xtask lock` (never by hand): the Debian packages of every image, pinned\n\
# by version and sha256. The image step downloads exactly these with apt-get and checks them.\n";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianLock {
    pub release: String,
    pub architecture: String,
    /// Package set name (`base`, `nginx`, `postgres`) to its packages, sorted by name.
    pub sets: BTreeMap<String, Vec<LockedPackage>>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    pub package: String,
    pub version: String,
    /// Hex sha256 of the `.deb` file.
    pub sha256: String,
    pub size: u64,
}

impl LockedPackage {
    /// `name=version`, what `apt-get download` takes.
    pub fn pin(&self) -> String {
        format!("{}={}", self.package, self.version)
    }
}

impl DebianLock {
    pub fn path(root: &Path) -> PathBuf {
        root.join(LOCK_PATH)
    }

    /// Reads and parses the lock; every error names the file (and line, from the TOML parser).
    pub fn load(path: &Path) -> Result<DebianLock> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading {} (write it with `cargo xtask lock`)",
                path.display()
            )
        })?;
        DebianLock::parse(&text).with_context(|| format!("reading {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<DebianLock> {
        let lock: DebianLock = toml::from_str(text)?;
        for (set, packages) in &lock.sets {
            for package in packages {
                let hex = package.sha256.as_str();
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    bail!(
                        "set {set}, package {} {}: sha256 {hex:?} is not 64 hex digits",
                        package.package,
                        package.version
                    );
                }
            }
        }
        Ok(lock)
    }

    /// The file's text: the header, then the TOML.
    pub fn render(&self) -> Result<String> {
        Ok(format!("{HEADER}\n{}", toml::to_string(self)?))
    }

    /// The packages of `set`, or an error saying the lock must be refreshed.
    pub fn set(&self, set: &str) -> Result<&[LockedPackage]> {
        self.sets.get(set).map(Vec::as_slice).with_context(|| {
            format!("{LOCK_PATH} has no package set {set:?}: run `cargo xtask lock`")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DebianLock {
        DebianLock {
            release: "bookworm".into(),
            architecture: "amd64".into(),
            sets: BTreeMap::from([(
                "base".to_owned(),
                vec![LockedPackage {
                    package: "libc6".into(),
                    version: "2.36-9+deb12u14".into(),
                    sha256: "ab".repeat(32),
                    size: 2_759_320,
                }],
            )]),
        }
    }

    #[test]
    fn renders_and_reads_back() {
        let text = sample().render().expect("render");
        assert!(text.starts_with("# Written by `cargo xtask lock`"));
        assert!(text.contains("[[sets.base]]"), "{text}");
        assert_eq!(DebianLock::parse(&text).expect("parse"), sample());
    }

    #[test]
    fn a_bad_hash_is_named() {
        let text = sample()
            .render()
            .expect("render")
            .replace(&"ab".repeat(32), "xyz");
        let err = DebianLock::parse(&text).expect_err("bad hash");
        assert!(
            format!("{err:#}").contains("libc6 2.36-9+deb12u14"),
            "{err:#}"
        );
    }
}
