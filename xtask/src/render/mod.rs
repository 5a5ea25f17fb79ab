//! `cargo xtask render`: turns a validated topology into the files each server runs: for the
//! edge server the nginx config (TLS and a plain-HTTP variant for the local stack), and for every
//! server a `compose.yaml` and an `.env.example`. cairn's images are pinned by digest.
//!
//! Rendering is pure: [`render`] maps a topology, image pins and the hand-written pieces to a set
//! of files in memory, and checks every compose file against the compose schema and cairn's own
//! cross-reference rules before anything is written. Only [`run`] touches the disk (read the
//! inputs, write each file through a temporary file and a rename, or compare with `--check`).
//! This module never decides what a deployment may contain: that is `topology`'s job.

pub mod certbot;
pub mod compose;
pub mod crosscheck;
pub mod env;
pub mod images;
pub mod init_env;
pub mod nginx;
pub mod schema;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::project;
use crate::topology::{self, Topology};

pub use images::{ImagePins, PinOrigin};

/// Where the rendered examples of the default topology are committed.
pub const DEFAULT_OUT: &str = "deploy/rendered";
/// The hand-written nginx pieces that the rendered config includes.
pub const NGINX_PIECES: &str = "nginx";
/// The web app nginx serves at `/`: plain HTML, CSS and JavaScript modules, no build step.
pub const WEB_APP: &str = "web";

#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// The topology file.
    #[arg(long, default_value = topology::DEFAULT_PATH)]
    topology: PathBuf,
    /// The folder that receives one sub-folder per server.
    #[arg(long, default_value = DEFAULT_OUT)]
    out: PathBuf,
    /// JSON object mapping each built image (gateway, api, inference, inference-cuda) to
    /// `repository@sha256:…`. Without it, images get clearly fake placeholder digests.
    #[arg(long)]
    images: Option<PathBuf>,
    /// Write nothing; fail when a file under --out differs from what would be rendered.
    #[arg(long)]
    check: bool,
}

/// Rendered files, by path relative to the output folder.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rendering {
    pub files: BTreeMap<PathBuf, String>,
    /// Server key (`a`) to the variables its compose file requires from its `.env`.
    pub variables: BTreeMap<String, std::collections::BTreeSet<String>>,
}

/// The hand-written inputs rendering copies or refers to: nginx snippets by file name, and the
/// files services bind-mount from their server folder (`./NAME` volume sources), by name.
#[derive(Debug, Default)]
pub struct Pieces {
    pub nginx_snippets: BTreeMap<String, String>,
    pub server_files: BTreeMap<String, String>,
}

pub fn run(args: &RenderArgs) -> Result<()> {
    let root = project::root();
    let topology_path = root.join(&args.topology);
    let topology = topology::load(&topology_path)?;
    let pins = match &args.images {
        Some(file) => ImagePins::from_file(&topology, &root.join(file))?,
        None => ImagePins::placeholders(&topology),
    };
    let pieces = read_pieces(&root, &topology_path)?;
    let source = display_relative(&root, &topology_path);
    let rendering = render(&topology, &source, &pins, &pieces)?;
    let out = root.join(&args.out);
    if args.check {
        check_fresh(&rendering, &out)
    } else {
        write(&rendering, &out)?;
        eprintln!(
            "rendered {} files under {}",
            rendering.files.len(),
            out.display()
        );
        Ok(())
    }
}

/// Renders every server of `topology`; `source` is the topology's name for file headers.
pub fn render(
    topology: &Topology,
    source: &str,
    pins: &ImagePins,
    pieces: &Pieces,
) -> Result<Rendering> {
    let mut rendering = Rendering::default();
    let header = Header {
        source,
        origin: pins.origin(),
    };
    let mut variables = BTreeMap::new();
    for server in topology.servers.keys() {
        let folder = PathBuf::from(format!("server-{server}"));
        let document = compose::render_compose(topology, server, pins)?;
        schema::validate(&document)
            .with_context(|| format!("rendered {}/compose.yaml", folder.display()))?;
        crosscheck::check(&document)
            .with_context(|| format!("rendered {}/compose.yaml", folder.display()))?;
        let mut yaml = serde_norway::to_string(&document).context("writing compose YAML")?;
        if !yaml.ends_with('\n') {
            yaml.push('\n');
        }
        rendering.add(
            folder.join("compose.yaml"),
            format!("{}{yaml}", header.lines()),
        );
        let needed = env::referenced_variables(&document);
        rendering.add(
            folder.join(".env.example"),
            format!(
                "{}{}",
                header.lines(),
                env::render_env_example(topology, server, &needed)
            ),
        );
        variables.insert(server.clone(), needed);
        for name in compose::server_files(topology, server) {
            let text = pieces.server_files.get(&name).with_context(|| {
                format!(
                    "deploy/files/{name} is missing (a volume of server {server} mounts ./{name})"
                )
            })?;
            rendering.add(
                folder.join(&name),
                copied(&format!("deploy/files/{name}"), text),
            );
        }
        if topology.services[topology.site.service.get_ref()]
            .server
            .get_ref()
            == server
        {
            add_nginx(&mut rendering, topology, &header, &folder, pieces)?;
            rendering.add(
                folder.join(certbot::FILE),
                certbot::render_hook(topology, source),
            );
        }
    }
    rendering.add(
        PathBuf::from(init_env::FILE),
        init_env::render_init_env(topology, source, &variables),
    );
    rendering.variables = variables;
    Ok(rendering)
}

fn add_nginx(
    rendering: &mut Rendering,
    topology: &Topology,
    header: &Header,
    folder: &Path,
    pieces: &Pieces,
) -> Result<()> {
    let site = &topology.site;
    let upstream_port = topology.services[site.upstream.get_ref()]
        .port
        .context("site.upstream has no port")?;
    let nginx_folder = folder.join("nginx");
    let tls = nginx::render_nginx(site, upstream_port, nginx::Variant::Tls);
    let local = nginx::render_nginx(site, upstream_port, nginx::Variant::Local);
    rendering.add(
        nginx_folder.join("nginx.conf"),
        format!("{}{tls}", header.lines()),
    );
    rendering.add(
        nginx_folder.join("nginx-local.conf"),
        format!("{}{local}", header.lines()),
    );
    for (name, text) in &pieces.nginx_snippets {
        rendering.add(
            nginx_folder.join("snippets").join(name),
            copied(&format!("{NGINX_PIECES}/{name}"), text),
        );
    }
    Ok(())
}

impl Rendering {
    fn add(&mut self, path: PathBuf, text: String) {
        self.files.insert(path, text);
    }
}

/// The first lines of every rendered file: which command writes it, from what.
struct Header<'a> {
    source: &'a str,
    origin: PinOrigin,
}

impl Header<'_> {
    fn lines(&self) -> String {
        let mut lines = format!(
            "# Written by `cargo xtask render` from {}; edit that file, not this one.\n",
            self.source
        );
        match self.origin {
            PinOrigin::Placeholders => lines.push_str(
                "# cairn images carry PLACEHOLDER digests (registry.invalid): render with --images for real ones.\n",
            ),
            PinOrigin::LoadedArchives => lines.push_str(
                "# cairn images are pinned by their archive's content tag (cairn/NAME:manifest-<digest>): load them first, `docker load -i ../images/NAME.tar` for each (README.md).\n",
            ),
            PinOrigin::Registry => {}
        }
        lines
    }
}

fn copied(source: &str, text: &str) -> String {
    format!(
        "# Written by `cargo xtask render` from {source}; edit that file, not this one.\n{text}"
    )
}

/// Reads the nginx snippets (`nginx/*.conf`) and the server files (`files/` next to the topology).
pub fn read_pieces(root: &Path, topology_path: &Path) -> Result<Pieces> {
    let files_dir = topology_path
        .parent()
        .map(|dir| dir.join("files"))
        .unwrap_or_else(|| PathBuf::from("files"));
    Ok(Pieces {
        nginx_snippets: read_folder(&root.join(NGINX_PIECES))?,
        server_files: read_folder(&files_dir)?,
    })
}

fn read_folder(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    if !dir.exists() {
        return Ok(files);
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .with_context(|| format!("{} has a name that is not UTF-8", path.display()))?
            .to_owned();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        files.insert(name, text);
    }
    Ok(files)
}

/// Scripts (`init-env.sh`, the certbot hook) are written executable.
fn is_executable(relative: &Path) -> bool {
    relative
        .extension()
        .is_some_and(|extension| extension == "sh")
}

/// Writes every file through a temporary file and a rename, so a reader never sees half a file.
pub fn write(rendering: &Rendering, out: &Path) -> Result<()> {
    for (relative, text) in &rendering.files {
        let path = out.join(relative);
        let dir = path.parent().unwrap_or(out);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let temporary = dir.join(format!(
            ".{}.tmp",
            relative
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("file")
        ));
        std::fs::write(&temporary, text)
            .with_context(|| format!("writing {}", temporary.display()))?;
        if is_executable(relative) {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("making {} executable", temporary.display()))?;
        }
        std::fs::rename(&temporary, &path)
            .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))?;
    }
    Ok(())
}

/// Fails naming every file under `out` that is missing or differs from `rendering`.
pub fn check_fresh(rendering: &Rendering, out: &Path) -> Result<()> {
    let stale: Vec<String> = rendering
        .files
        .iter()
        .filter(|(relative, text)| {
            std::fs::read_to_string(out.join(relative)).ok().as_deref() != Some(text.as_str())
        })
        .map(|(relative, _)| out.join(relative).display().to_string())
        .collect();
    if !stale.is_empty() {
        bail!(
            "rendered files are stale or missing (run `cargo xtask render`):\n  {}",
            stale.join("\n  ")
        );
    }
    eprintln!("{} rendered files are up to date", rendering.files.len());
    Ok(())
}

fn display_relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests;
