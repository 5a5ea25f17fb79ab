//! Garage, server A's S3 store, built from its pinned crates.io source: `cargo install --locked`
//! of one crate version with one feature set and the workspace's pinned toolchain, cached by
//! everything that decides the binary's bytes. A second release, or a fresh clone on the same
//! machine (CI), finds the binary in the cache and builds nothing.
//!
//! The pin lives here, in [`PINNED`]: only xtask reads it (the Nix backend takes nixpkgs' own
//! garage), so a constant beside the code that uses it is the one place, checked by the
//! compiler, with no file format to parse.
//!
//! This module builds the binary and nothing else: packing it into an image is `image`'s job.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sha2::{Digest as _, Sha256};

/// What to build: a crates.io crate, its version, and the cargo features (default features off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GarageSource {
    pub crate_name: &'static str,
    pub version: &'static str,
    pub features: &'static [&'static str],
}

/// The Garage cairn deploys. Features: `lmdb`, the metadata engine Garage recommends (its C part
/// is one small library), `metrics` (the admin API's Prometheus endpoint) and `bundled-libs`
/// (the crate refuses to build without it or `system-libs`; libsodium and zstd are then compiled
/// from their -sys crates and linked statically, so the image needs no extra shared library).
/// Left out of Garage's defaults: `sqlite` (a second engine and a bundled SQLite C build) and
/// `k2v` (an experimental API nobody here calls).
pub const PINNED: GarageSource = GarageSource {
    crate_name: "garage",
    version: "2.5.0",
    features: &["bundled-libs", "lmdb", "metrics"],
};

/// Bump when the way the binary is built changes (flags, remapped paths), so old entries stop
/// matching.
const BUILD_FORMAT: u32 = 1;

/// Profile settings passed to cargo as `CARGO_PROFILE_RELEASE_*`. None: the published crate
/// carries no `[profile]` (Garage's workspace sets LTO only for its own release builds), so
/// cargo's default release profile applies (thin local LTO, 16 codegen units), which is already
/// the cheap one.
const PROFILE_OVERRIDES: &[(&str, &str)] = &[];

/// Everything that decides the built binary's bytes: the cache key is a hash of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInputs {
    pub source: GarageSource,
    /// `rustc -vV` of the toolchain the build uses (the one rust-toolchain.toml pins).
    pub toolchain: String,
    pub profile: Vec<(String, String)>,
}

impl BuildInputs {
    pub fn new(source: GarageSource, toolchain: String) -> BuildInputs {
        BuildInputs {
            source,
            toolchain,
            profile: PROFILE_OVERRIDES
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
        }
    }

    /// The inputs as text, one per line: hashed into the key and kept beside the binary.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "build format {BUILD_FORMAT}\ncrate {} {}\nfeatures {} (no default features)\n",
            self.source.crate_name,
            self.source.version,
            self.source.features.join(",")
        );
        for (key, value) in &self.profile {
            text.push_str(&format!("profile {key}={value}\n"));
        }
        text.push_str("toolchain\n");
        text.push_str(self.toolchain.trim());
        text.push('\n');
        text
    }

    /// `garage-2.5.0-<16 hex of the hash of every input>`: readable, and new for any change.
    pub fn cache_key(&self) -> String {
        let digest = Sha256::digest(self.describe().as_bytes());
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("{}-{}-{hex}", self.source.crate_name, self.source.version)
    }
}

/// The pinned Garage binary, built first when the cache does not hold it.
pub fn binary(root: &Path) -> Result<PathBuf> {
    let inputs = BuildInputs::new(PINNED, toolchain(root)?);
    let cache = cache_dir()?;
    let target = cache.join("target");
    ensure(&cache, &inputs, |staging| {
        cargo_install(root, &inputs, staging, &target)
    })
}

/// The pinned Garage binary when it is already cached; None when it would need a build.
pub fn cached_binary(root: &Path) -> Result<Option<PathBuf>> {
    let inputs = BuildInputs::new(PINNED, toolchain(root)?);
    let path = entry_binary(&cache_dir()?, &inputs);
    Ok(path.is_file().then_some(path))
}

/// `$XDG_CACHE_HOME/cairn/garage`, else `~/.cache/cairn/garage`: outside the checkout, so that
/// every clone on the machine shares it.
pub fn cache_dir() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set: no place for the garage build cache")?;
    Ok(base.join("cairn").join("garage"))
}

fn entry_binary(cache: &Path, inputs: &BuildInputs) -> PathBuf {
    cache.join(inputs.cache_key()).join("bin").join("garage")
}

/// The cached binary for `inputs`, or `build` run into a fresh staging directory of `cache`
/// (it must leave `bin/garage` there), renamed into place only when it succeeded: an
/// interrupted build never leaves an entry that looks finished.
pub fn ensure(
    cache: &Path,
    inputs: &BuildInputs,
    build: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let binary = entry_binary(cache, inputs);
    if binary.is_file() {
        return Ok(binary);
    }
    std::fs::create_dir_all(cache)
        .with_context(|| format!("creating the garage cache {}", cache.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(cache)
        .with_context(|| format!("creating a staging directory in {}", cache.display()))?;
    build(staging.path())?;
    let built = staging.path().join("bin").join("garage");
    if !built.is_file() {
        bail!("the garage build succeeded but left no {}", built.display());
    }
    std::fs::write(staging.path().join("inputs.txt"), inputs.describe())
        .with_context(|| format!("writing inputs.txt in {}", staging.path().display()))?;
    let entry = cache.join(inputs.cache_key());
    if let Err(err) = std::fs::rename(staging.path(), &entry) {
        // Another build of the same inputs finished first: its entry is as good as ours.
        if !binary.is_file() {
            return Err(err)
                .with_context(|| format!("renaming the build into {}", entry.display()));
        }
    }
    Ok(binary)
}

/// `rustc -vV` as run from the workspace root, where rustup picks rust-toolchain.toml's channel.
fn toolchain(root: &Path) -> Result<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let output = Command::new(&rustc)
        .current_dir(root)
        .arg("-vV")
        .output()
        .with_context(|| format!("running {rustc} -vV"))?;
    if !output.status.success() {
        bail!(
            "{rustc} -vV failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("{rustc} -vV printed non-UTF-8"))
}

/// The rustc flags that keep this machine's paths out of the binary (cargo home, where the
/// crate's sources are unpacked, and the shared target directory).
pub fn remap_flags(cargo_home: &Path, target: &Path) -> Vec<String> {
    super::cargo::remap(&[(cargo_home, "/cargo"), (target, "/target")])
}

/// `cargo install --locked` of the pinned crate into `staging`, compiling in `target` (kept
/// between builds, so a changed feature set recompiles only what it changes). Cargo prints its
/// own progress; this adds what is being built, why, and how long it took.
fn cargo_install(root: &Path, inputs: &BuildInputs, staging: &Path, target: &Path) -> Result<()> {
    let source = inputs.source;
    eprintln!(
        "garage {} ({}): not in the cache, building it from crates.io with `cargo install --locked` \
         (about 25 min on 2 cores the first time; the binary is then cached in {})",
        source.version,
        source.features.join(","),
        target.parent().unwrap_or(target).display()
    );
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .current_dir(root)
        .args(["install", "--locked", "--no-default-features"])
        .arg("--root")
        .arg(staging)
        .arg("--target-dir")
        .arg(target)
        .args(["--features", &source.features.join(",")])
        .args(["--version", source.version, source.crate_name])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            remap_flags(&super::cargo::cargo_home(), target).join("\x1f"),
        );
    // Only the inputs in the key may shape the binary: settings from the caller's environment
    // would change it without changing the key.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if ["RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "CARGO_BUILD_TARGET"].contains(&key.as_ref())
            || key.starts_with("CARGO_PROFILE_")
        {
            command.env_remove(key.as_ref());
        }
    }
    for (key, value) in &inputs.profile {
        command.env(format!("CARGO_PROFILE_RELEASE_{key}"), value);
    }
    let started = Instant::now();
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!(
            "building garage {} failed ({status}): cargo install --locked garage --version {} --no-default-features --features {}",
            source.version,
            source.version,
            source.features.join(",")
        );
    }
    eprintln!(
        "garage {}: built in {:.1} min",
        source.version,
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> BuildInputs {
        BuildInputs::new(PINNED, "rustc 1.95.0 (59807616e 2026-04-14)\n".to_owned())
    }

    #[test]
    fn the_cache_key_changes_with_every_input() {
        let base = inputs();
        let key = base.cache_key();
        assert!(key.starts_with("garage-2.5.0-"), "{key}");
        assert_eq!(key, inputs().cache_key(), "the key is stable");
        let mut changed = Vec::new();
        let mut crate_name = base.clone();
        crate_name.source.crate_name = "garage-fork";
        changed.push(crate_name);
        let mut version = base.clone();
        version.source.version = "2.5.1";
        changed.push(version);
        let mut features = base.clone();
        features.source.features = &["lmdb"];
        changed.push(features);
        let mut toolchain = base.clone();
        toolchain.toolchain = "rustc 1.96.0 (0000000 2026-06-01)\n".to_owned();
        changed.push(toolchain);
        let mut profile = base.clone();
        profile.profile.push(("LTO".to_owned(), "fat".to_owned()));
        changed.push(profile);
        for other in &changed {
            assert_ne!(other.cache_key(), key, "{other:?}");
        }
    }

    #[test]
    fn a_cached_binary_is_reused_without_building() {
        let cache = tempfile::tempdir().expect("temp dir");
        let inputs = inputs();
        let first = ensure(cache.path(), &inputs, |staging| {
            std::fs::create_dir_all(staging.join("bin"))?;
            std::fs::write(staging.join("bin").join("garage"), b"built once")?;
            Ok(())
        })
        .expect("first build");
        assert_eq!(first, entry_binary(cache.path(), &inputs));
        assert!(
            std::fs::read_to_string(cache.path().join(inputs.cache_key()).join("inputs.txt"))
                .is_ok_and(|text| text.contains("crate garage 2.5.0")),
            "the inputs are recorded beside the binary"
        );
        let second = ensure(cache.path(), &inputs, |_| {
            panic!("a cached binary must not be built again")
        })
        .expect("cache hit");
        assert_eq!(second, first);
        assert_eq!(std::fs::read(&second).expect("binary"), b"built once");
    }

    #[test]
    fn a_failed_build_leaves_no_entry() {
        let cache = tempfile::tempdir().expect("temp dir");
        let inputs = inputs();
        let failed = ensure(cache.path(), &inputs, |staging| {
            std::fs::create_dir_all(staging.join("bin"))?;
            std::fs::write(staging.join("bin").join("garage"), b"half")?;
            bail!("the compiler was killed")
        });
        assert!(failed.is_err());
        let left: Vec<_> = std::fs::read_dir(cache.path())
            .expect("cache dir")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert!(left.is_empty(), "nothing left behind: {left:?}");
        let empty = ensure(cache.path(), &inputs, |_| Ok(()));
        assert!(
            empty.is_err_and(|err| err.to_string().contains("left no")),
            "a build that produced nothing is an error"
        );
    }

    #[test]
    fn remapped_paths_are_the_cargo_home_then_the_target() {
        assert_eq!(
            remap_flags(Path::new("/h/.cargo"), Path::new("/c/target")),
            [
                "--remap-path-prefix=/h/.cargo=/cargo",
                "--remap-path-prefix=/c/target=/target"
            ]
        );
    }
}
