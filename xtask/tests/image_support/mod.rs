//! What the image tests share: running the xtask binary, compiling the fixture server, reading a
//! layout's index.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const FIXTURE_SOURCE: &str = include_str!("fixture.rs");

/// Runs `xtask ARGS` with `envs`; panics with its output when it fails.
pub fn xtask(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let output = xtask_unchecked(args, envs);
    assert!(
        output.status.success(),
        "xtask {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn xtask_unchecked(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command.args(args).env("SOURCE_DATE_EPOCH", "1700000000");
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().expect("running xtask")
}

/// Compiles the fixture server into `dir` (with `marker` baked in, so two fixtures differ).
pub fn compile_fixture(dir: &Path, name: &str, marker: &str) -> PathBuf {
    let source = dir.join(format!("{name}.rs"));
    std::fs::write(
        &source,
        format!("{FIXTURE_SOURCE}\n// {marker}\nstatic _MARKER: &str = {marker:?};\n"),
    )
    .expect("write fixture source");
    let binary = dir.join(name);
    let status = Command::new("rustc")
        .args(["--edition", "2021", "-O", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("running rustc");
    assert!(status.success(), "rustc failed on the fixture");
    binary
}

/// The images named in a layout's index.json: (ref name, manifest digest).
pub fn index(layout: &Path) -> Vec<(String, String)> {
    let text = std::fs::read(layout.join("index.json")).expect("index.json");
    let index: serde_json::Value = serde_json::from_slice(&text).expect("index JSON");
    index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| {
            (
                m["annotations"]["org.opencontainers.image.ref.name"]
                    .as_str()
                    .expect("ref name")
                    .to_owned(),
                m["digest"].as_str().expect("digest").to_owned(),
            )
        })
        .collect()
}

/// A blob of the layout as JSON.
pub fn blob_json(layout: &Path, digest: &str) -> serde_json::Value {
    let path = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    serde_json::from_slice(&std::fs::read(path).expect("blob")).expect("blob JSON")
}

/// The layer digests of image `name`.
pub fn layers(layout: &Path, name: &str) -> Vec<String> {
    let (_, digest) = index(layout)
        .into_iter()
        .find(|(n, _)| n == name)
        .expect("image in index");
    blob_json(layout, &digest)["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest").to_owned())
        .collect()
}
