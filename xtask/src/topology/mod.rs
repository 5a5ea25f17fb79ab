//! The topology: the one description of a cairn deployment (servers, images, services, secrets,
//! networks, the nginx site), read from a TOML file under `deploy/` and validated as a whole.
//!
//! This module owns the file format and every rule about what a deployment may say. It must
//! never know how anything is rendered (nginx syntax, compose keys): `render` reads a validated
//! [`Topology`] and nothing else. Every error names the file, the line and the field.

mod model;
pub mod validate;

pub use model::*;

use std::path::Path;

use anyhow::{Context, Result};

/// The topology `cargo xtask render` reads when none is named.
pub const DEFAULT_PATH: &str = "deploy/topology.toml";

/// Reads, parses and validates the topology at `path`.
pub fn load(path: &Path) -> Result<Topology> {
    let source = std::fs::read_to_string(path)
        .with_context(|| format!("reading topology {}", path.display()))?;
    Ok(parse(&path.display().to_string(), &source)?)
}

/// Parses and validates topology text; `file` is the name errors use.
pub fn parse(file: &str, source: &str) -> Result<Topology, TopologyError> {
    let topology: Topology = toml::from_str(source).map_err(|err| {
        let line = err.span().map(|span| line_of(source, span.start));
        TopologyError {
            file: file.to_owned(),
            line,
            message: err.message().trim().to_owned(),
        }
    })?;
    validate::check(&topology).map_err(|problem| TopologyError {
        file: file.to_owned(),
        line: problem.offset.map(|offset| line_of(source, offset)),
        message: problem.message,
    })?;
    Ok(topology)
}

/// One thing wrong with a topology file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for TopologyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} line {line}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for TopologyError {}

/// 1-based line number of byte `offset` in `source`.
pub fn line_of(source: &str, offset: usize) -> usize {
    let end = offset.min(source.len());
    source.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests;
