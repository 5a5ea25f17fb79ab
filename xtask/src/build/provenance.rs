//! Where a build comes from: SOURCE_DATE_EPOCH, the source repository and the revision, read
//! from the environment first (a Nix derivation or CI sets them) and from git otherwise.
//! Nothing here depends on the checkout's directory, so two checkouts agree.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

/// SOURCE_DATE_EPOCH, else the commit time of HEAD, else 0.
pub fn source_date_epoch(root: &Path) -> Result<u64> {
    if let Ok(value) = std::env::var("SOURCE_DATE_EPOCH") {
        return value
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds"));
    }
    Ok(git(root, &["log", "-1", "--format=%ct"])
        .and_then(|text| text.parse().ok())
        .unwrap_or(0))
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
