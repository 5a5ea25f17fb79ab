//! `cargo xtask pin`: pins every upstream (third-party) image of a topology to the digest its
//! tag names today. Each `reference = "NAME:TAG[@sha256:…]"` is resolved through cairn's own
//! registry client (the credentials and TLS options of `push`) and its digest is written back
//! into the file in place: only the string of the reference changes, comments and layout stay,
//! and the file is replaced through a temporary file and a rename. `--check` changes nothing
//! and fails, naming the file, line and image, when a pin is missing or has moved.
//!
//! Finding the references and rewriting the text are pure functions; the registry and the file
//! are touched only in `run`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::image::layout::write_atomically;
use crate::project;
use crate::registry::client::{Client, RetryPolicy, Transport};
use crate::registry::reference::ImageReference;
use crate::registry::{credentials, manifest};
use crate::topology::{self, Image, TopologyError};

#[derive(Debug, clap::Args)]
pub struct PinArgs {
    /// The topology whose upstream images to pin (rewritten in place).
    #[arg(long, value_name = "FILE", default_value = topology::DEFAULT_PATH)]
    topology: PathBuf,
    /// Change nothing; fail when a pin is missing or its tag now names another digest.
    #[arg(long)]
    check: bool,
    /// Extra CA certificates (PEM) to trust besides the system roots.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Talk plain HTTP instead of HTTPS (local registries only; prints a warning).
    #[arg(long, conflicts_with = "ca_file")]
    plain_http: bool,
    /// Retries of a failed request (429, 5xx, dropped connection), with exponential backoff.
    #[arg(long, default_value_t = 3)]
    retries: u32,
}

/// One upstream image of a topology, where its reference string sits in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinSite {
    /// The key under `[images]`.
    pub image: String,
    pub reference: ImageReference,
    /// Byte range of the TOML string (quotes included).
    pub span: Range<usize>,
    pub line: usize,
}

/// What the registry said about one site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub site: PinSite,
    pub digest: String,
}

impl Resolved {
    pub fn is_current(&self) -> bool {
        self.site.reference.digest.as_deref() == Some(self.digest.as_str())
    }
}

/// Just the `[images]` table: pin must read a topology that validation refuses (an unpinned
/// reference is what it is there to fix).
#[derive(Deserialize)]
struct ImagesOnly {
    #[serde(default)]
    images: BTreeMap<String, Image>,
}

/// Every `reference` image of `source`, in file order; `file` names the file in errors.
pub fn find_sites(file: &str, source: &str) -> Result<Vec<PinSite>, TopologyError> {
    let error = |line: Option<usize>, message: String| TopologyError {
        file: file.to_owned(),
        line,
        message,
    };
    let parsed: ImagesOnly = toml::from_str(source).map_err(|err| {
        error(
            err.span().map(|span| topology::line_of(source, span.start)),
            err.message().trim().to_owned(),
        )
    })?;
    let mut sites = Vec::new();
    for (image, declared) in parsed.images {
        let Image::Reference(text) = declared else {
            continue;
        };
        let line = topology::line_of(source, text.span().start);
        let reference = ImageReference::parse(text.get_ref())
            .map_err(|err| error(Some(line), format!("images.{image}.reference: {err:#}")))?;
        sites.push(PinSite {
            image,
            reference,
            span: text.span(),
            line,
        });
    }
    sites.sort_by_key(|site| site.span.start);
    Ok(sites)
}

/// `source` with the reference string of every resolved site replaced by its pinned form.
pub fn rewrite(source: &str, resolved: &[Resolved]) -> String {
    let mut text = source.to_owned();
    let mut sites: Vec<&Resolved> = resolved.iter().collect();
    // From the end, so earlier spans stay valid.
    sites.sort_by_key(|r| std::cmp::Reverse(r.site.span.start));
    for r in sites {
        let pinned = format!("\"{}\"", r.site.reference.pinned(&r.digest));
        text.replace_range(r.site.span.clone(), &pinned);
    }
    text
}

/// The lines `--check` prints for pins that are missing or moved; empty when all are current.
pub fn stale_pins(file: &str, resolved: &[Resolved]) -> Vec<String> {
    resolved
        .iter()
        .filter(|r| !r.is_current())
        .map(|r| {
            let site = &r.site;
            let was = match &site.reference.digest {
                Some(digest) => {
                    format!("moved: pinned to {digest}, the tag now names {}", r.digest)
                }
                None => format!("is not pinned: the tag names {}", r.digest),
            };
            format!(
                "{file} line {}: images.{}: {} {was}",
                site.line,
                site.image,
                site.reference.name_tag()
            )
        })
        .collect()
}

pub fn run(args: &PinArgs) -> Result<()> {
    let path = if args.topology.is_relative() {
        project::root().join(&args.topology)
    } else {
        args.topology.clone()
    };
    let file = args.topology.display().to_string();
    let source =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let sites = find_sites(&file, &source)?;
    if sites.is_empty() {
        eprintln!("{file}: no upstream image (every image is built by cairn): nothing to pin");
        return Ok(());
    }
    let resolved = resolve_all(&sites, &transport(args), args.retries)?;
    let stale = stale_pins(&file, &resolved);
    if args.check {
        if !stale.is_empty() {
            bail!(
                "{} of {} upstream pins are stale (run `cargo xtask pin --topology {file}`):\n  {}",
                stale.len(),
                resolved.len(),
                stale.join("\n  ")
            );
        }
        eprintln!("{file}: all {} upstream pins are current", resolved.len());
        return Ok(());
    }
    for line in &stale {
        eprintln!("{line}");
    }
    if !stale.is_empty() {
        write_atomically(&path, rewrite(&source, &resolved).as_bytes())?;
    }
    for r in &resolved {
        println!(
            "images.{}: {}",
            r.site.image,
            r.site.reference.pinned(&r.digest)
        );
    }
    eprintln!(
        "{file}: {} pins written, {} already current",
        stale.len(),
        resolved.len() - stale.len()
    );
    Ok(())
}

fn transport(args: &PinArgs) -> Transport {
    if args.plain_http {
        Transport::PlainHttp
    } else {
        Transport::Https {
            ca_file: args.ca_file.clone(),
        }
    }
}

/// Asks each site's registry which digest its tag names now (one client per registry host).
fn resolve_all(sites: &[PinSite], transport: &Transport, retries: u32) -> Result<Vec<Resolved>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let mut clients: BTreeMap<&str, Client> = BTreeMap::new();
        let mut resolved = Vec::new();
        for site in sites {
            let host = site.reference.api_host.as_str();
            if !clients.contains_key(host) {
                clients.insert(host, client(host, transport, retries)?);
            }
            let client = &clients[host];
            let digest =
                manifest::resolve_tag(client, &site.reference.repository, &site.reference.tag)
                    .await
                    .with_context(|| {
                        format!(
                            "images.{} (line {}): resolving {} at {host}",
                            site.image,
                            site.line,
                            site.reference.name_tag()
                        )
                    })?
                    .with_context(|| {
                        format!(
                            "images.{} (line {}): {host} has no {}:{}",
                            site.image, site.line, site.reference.repository, site.reference.tag
                        )
                    })?;
            resolved.push(Resolved {
                site: site.clone(),
                digest,
            });
        }
        Ok(resolved)
    })
}

fn client(host: &str, transport: &Transport, retries: u32) -> Result<Client> {
    // Docker keeps Docker Hub's credentials under its index host.
    let credentials_host = if host == "registry-1.docker.io" {
        "index.docker.io"
    } else {
        host
    };
    let credentials = credentials::resolve(credentials_host)?;
    if let Some((_, source)) = &credentials {
        eprintln!("registry {host}: using credentials from {source:?}");
    }
    if *transport == Transport::PlainHttp {
        eprintln!("warning: asking {host} over plain HTTP: nothing is encrypted or authenticated");
    }
    Client::new(
        host,
        transport,
        credentials.map(|(c, _)| c),
        RetryPolicy {
            retries,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const NEW: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    const SOURCE: &str = r#"# Upstream images, pinned by `cargo xtask pin`.
[images.api]
build = "api"

[images.web]   # the edge
reference = "registry.example:5000/team/web:1.0"  # keep this comment

[images.db]
reference   =   'docker.io/library/postgres:16-alpine@sha256:1111111111111111111111111111111111111111111111111111111111111111'
"#;

    fn resolve(sites: Vec<PinSite>, digest: &str) -> Vec<Resolved> {
        sites
            .into_iter()
            .map(|site| Resolved {
                site,
                digest: digest.to_owned(),
            })
            .collect()
    }

    #[test]
    fn sites_are_the_reference_images_with_their_lines() {
        let sites = find_sites("t.toml", SOURCE).expect("parses");
        let summary: Vec<(&str, usize, &str)> = sites
            .iter()
            .map(|s| (s.image.as_str(), s.line, &SOURCE[s.span.clone()]))
            .collect();
        assert_eq!(
            summary,
            [
                ("web", 6, "\"registry.example:5000/team/web:1.0\""),
                (
                    "db",
                    9,
                    "'docker.io/library/postgres:16-alpine@sha256:1111111111111111111111111111111111111111111111111111111111111111'"
                ),
            ]
        );
    }

    #[test]
    fn rewriting_changes_only_the_reference_strings() {
        let sites = find_sites("t.toml", SOURCE).expect("parses");
        let rewritten = rewrite(SOURCE, &resolve(sites, NEW));
        let expected = SOURCE
            .replace(
                "\"registry.example:5000/team/web:1.0\"",
                &format!("\"registry.example:5000/team/web:1.0@{NEW}\""),
            )
            .replace(
                &format!("'docker.io/library/postgres:16-alpine@{OLD}'"),
                &format!("\"docker.io/library/postgres:16-alpine@{NEW}\""),
            );
        assert_eq!(rewritten, expected);
        let again = find_sites("t.toml", &rewritten).expect("still parses");
        assert!(
            again
                .iter()
                .all(|s| s.reference.digest.as_deref() == Some(NEW))
        );
    }

    #[test]
    fn stale_pins_name_file_line_and_image() {
        let sites = find_sites("deploy/t.toml", SOURCE).expect("parses");
        let stale = stale_pins("deploy/t.toml", &resolve(sites.clone(), OLD));
        assert_eq!(
            stale,
            [format!(
                "deploy/t.toml line 6: images.web: registry.example:5000/team/web:1.0 is not pinned: the tag names {OLD}"
            )]
        );
        let moved = stale_pins("deploy/t.toml", &resolve(sites, NEW));
        assert_eq!(moved.len(), 2);
        assert!(
            moved[1].starts_with("deploy/t.toml line 9: images.db: docker.io/library/postgres:16-alpine moved: pinned to sha256:1111"),
            "{moved:?}"
        );
    }

    #[test]
    fn a_malformed_reference_is_located() {
        let err = find_sites("t.toml", "[images.x]\nreference = \"web\"\n").expect_err("no tag");
        assert_eq!(err.line, Some(2));
        assert!(err.message.contains("images.x.reference"), "{err}");
    }
}
