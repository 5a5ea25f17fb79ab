//! Where a build comes from: SOURCE_DATE_EPOCH, the source repository and the revision, read
//! from the environment first (a Nix derivation or CI sets them) and from git otherwise.
//! Nothing here depends on the checkout's directory, so two checkouts agree.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

/// The timestamp when SOURCE_DATE_EPOCH is unset: fixed, so that two builds of one commit agree
/// without being told.
pub const DEFAULT_EPOCH: u64 = 0;

/// SOURCE_DATE_EPOCH, else `DEFAULT_EPOCH`.
pub fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds")),
        Err(_) => Ok(DEFAULT_EPOCH),
    }
}

/// CAIRN_SOURCE, else git's origin URL, else "unknown".
pub fn source(root: &Path) -> String {
    std::env::var("CAIRN_SOURCE")
        .ok()
        .or_else(|| git(root, &["config", "--get", "remote.origin.url"]))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// CAIRN_REVISION, else git's HEAD commit, else "unknown".
pub fn revision(root: &Path) -> String {
    std::env::var("CAIRN_REVISION")
        .ok()
        .or_else(|| git(root, &["rev-parse", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (output.status.success() && !text.is_empty()).then_some(text)
}
