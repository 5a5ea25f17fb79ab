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

/// CAIRN_SOURCE, else git's origin URL, else "unknown"; never with the credentials a URL may
/// carry (a CI checkout's `https://user:TOKEN@host/…`): it becomes an image label and goes into
/// `release.json`.
pub fn source(root: &Path) -> String {
    let url = std::env::var("CAIRN_SOURCE")
        .ok()
        .or_else(|| git(root, &["config", "--get", "remote.origin.url"]))
        .unwrap_or_else(|| "unknown".to_owned());
    without_userinfo(&url)
}

/// `scheme://user:secret@host/path` -> `scheme://host/path`; git's scp-like `user@host:path` ->
/// `host:path`. Anything else is returned as it is.
pub fn without_userinfo(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        return format!("{scheme}://{host}{tail}");
    }
    let head_end = url.find('/').unwrap_or(url.len());
    match url[..head_end].rfind('@') {
        Some(at) => url[at + 1..].to_owned(),
        None => url.to_owned(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Item 14 of issue 17: a remote cloned with a token (`https://user:TOKEN@host/…`, what CI
    /// checkouts often carry) must not become the image's source label or `release.json`.
    #[test]
    fn credentials_in_the_git_remote_never_reach_the_source_label() {
        if std::env::var_os("CAIRN_SOURCE").is_some() {
            eprintln!("skipped: CAIRN_SOURCE is set, so git's remote is not read");
            return;
        }
        let dir = std::env::temp_dir().join(format!("cairn-provenance-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let git = |args: &[&str]| {
            let status = Command::new("git")
                .arg("-C")
                .arg(&dir)
                .args(args)
                .output()
                .expect("git runs");
            assert!(status.status.success(), "git {args:?}: {status:?}");
        };
        git(&["init", "-q"]);
        git(&[
            "remote",
            "add",
            "origin",
            "https://ci-bot:ghp_SECRET123@git.example.com/team/cairn.git",
        ]);
        let label = source(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(label, "https://git.example.com/team/cairn.git");
    }

    #[test]
    fn userinfo_is_stripped_from_every_url_form() {
        for (url, stripped) in [
            (
                "https://u:p@host:8443/a/b.git?x=1",
                "https://host:8443/a/b.git?x=1",
            ),
            ("https://token@host", "https://host"),
            ("ssh://git@host/a.git", "ssh://host/a.git"),
            ("git@github.com:org/repo.git", "github.com:org/repo.git"),
            ("https://host/a@b", "https://host/a@b"),
            ("/srv/git/cairn", "/srv/git/cairn"),
            ("unknown", "unknown"),
        ] {
            assert_eq!(without_userinfo(url), stripped, "{url}");
        }
    }
}
