//! The nginx config of the edge server, in two variants: `Tls` (port 80 redirects to 443, modern
//! TLS, what server A runs) and `Local` (plain HTTP on loopback for the local stack). Both share
//! the same locations: the web app (`web/`) at `/` with `try_files` and revalidated caching
//! (its files keep their names between versions), `/api/` to the gateway upstream with
//! keepalive, `/api/files` uploads streamed to the gateway unbuffered, `/api/chat` and `/v1/` as
//! unbuffered, uncached event streams with a long read timeout, no response spilled into a
//! temporary file (nginx's `/tmp` is a tmpfs counted as its memory), WebSocket upgrade through a
//! `map`, and the security headers included in every
//! location (a location with its own `add_header` would otherwise drop the server's).
//!
//! The hand-written pieces (`nginx/*.conf`: TLS settings, security headers, proxy headers, the
//! streaming settings) are included by relative path from `snippets/`; this module writes only
//! what depends on the topology. It never knows where the services run beyond the site.

use std::fmt::Write;
use std::path::Path;

use super::compose::{NGINX_ACME_ROOT, NGINX_CERTS, NGINX_SPA_ROOT};
use crate::topology::Site;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Server A: TLS on `https_port`, redirect on `http_port`, upstream by service name.
    Tls,
    /// The local stack: plain HTTP on `local_port`, paths relative to nginx's `-p` prefix.
    Local,
}

/// `upstream_port` is the port the site's upstream service listens on.
pub fn render_nginx(site: &Site, upstream_port: u16, variant: Variant) -> String {
    let local = LocalServer {
        listen_port: site.local_port,
        upstream: &site.local_upstream,
        root: LOCAL_ROOT,
    };
    render_with(site, upstream_port, variant, &local)
}

/// The local variant's web root, relative to nginx's `-p` prefix.
const LOCAL_ROOT: &str = "www";

/// The `Local` variant listening on `listen_port` with the upstream at `upstream_address`
/// (`host:port`) instead of the site's `local_port` and `local_upstream`, serving the files of
/// `web_root`: `cargo xtask dev` moves the whole stack with `--port-offset` and serves the
/// workspace's `web/` as it is edited.
pub fn render_local_nginx(
    site: &Site,
    listen_port: u16,
    upstream_address: &str,
    web_root: &Path,
) -> String {
    let root = web_root.display().to_string();
    let local = LocalServer {
        listen_port,
        upstream: upstream_address,
        root: &root,
    };
    render_with(site, 0, Variant::Local, &local)
}

/// Where the local variant listens, finds its upstream and its files.
struct LocalServer<'a> {
    listen_port: u16,
    upstream: &'a str,
    root: &'a str,
}

fn render_with(site: &Site, upstream_port: u16, variant: Variant, local: &LocalServer) -> String {
    let mut text = String::new();
    text.push_str(&main_context(variant));
    text.push_str("\nhttp {\n");
    text.push_str(&http_settings(site, variant));
    text.push_str(&upstream(site, upstream_port, variant, local));
    match variant {
        Variant::Tls => {
            text.push_str(&redirect_server(site));
            text.push_str(&tls_server(site));
        }
        Variant::Local => text.push_str(&local_server(site, local)),
    }
    text.push_str("}\n");
    text
}

/// Where nginx keeps its pid and temporary files: in the container /var/cache/nginx, which the
/// image's non-root user owns, on a named volume (the root file system is read-only, and a large
/// upload buffered on a memory tmpfs would count against the container's memory); the `-p`
/// prefix for the local variant.
fn state_dir(variant: Variant) -> &'static str {
    match variant {
        Variant::Tls => "/var/cache/nginx/",
        Variant::Local => "",
    }
}

fn main_context(variant: Variant) -> String {
    format!(
        "worker_processes auto;\npid {state}nginx.pid;\nerror_log stderr warn;\n\nevents {{\n    worker_connections 1024;\n}}\n",
        state = state_dir(variant)
    )
}

fn http_settings(site: &Site, variant: Variant) -> String {
    let mut text = String::new();
    for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        let _ = writeln!(
            text,
            "    {kind}_temp_path {}{kind}_temp;",
            state_dir(variant)
        );
    }
    let _ = write!(
        text,
        "    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /dev/stdout;
    server_tokens off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65s;
    # The api's own limit (site.body_limit_mib in the topology).
    client_max_body_size {body}m;
    proxy_read_timeout 60s;
    # /tmp is a tmpfs charged to nginx's memory limit: a response larger than the in-memory
    # buffers waits for the client instead of spilling into a temporary file there.
    proxy_max_temp_file_size 0;

    # Never text/event-stream: a compressed stream is buffered until a block fills.
    gzip on;
    gzip_vary on;
    gzip_proxied any;
    gzip_types text/plain text/css application/javascript text/javascript application/json image/svg+xml;

    # WebSocket: upgrade when asked; otherwise an empty Connection header keeps upstream keepalive.
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}
",
        body = site.body_limit_mib
    );
    text
}

fn upstream(site: &Site, upstream_port: u16, variant: Variant, local: &LocalServer) -> String {
    let address = match variant {
        Variant::Tls => format!("{}:{upstream_port}", site.upstream.get_ref()),
        Variant::Local => local.upstream.to_owned(),
    };
    format!(
        "\n    upstream {name} {{\n        server {address};\n        keepalive 32;\n    }}\n",
        name = site.upstream.get_ref()
    )
}

fn redirect_server(site: &Site) -> String {
    let acme = match &site.acme_webroot {
        Some(_) => format!(
            "
        # ACME http-01 challenges, written by the operator's certbot into site.acme_webroot
        # (certbot certonly --webroot): plain HTTP, as Let's Encrypt asks for them.
        location ^~ /.well-known/acme-challenge/ {{
            root {NGINX_ACME_ROOT};
            default_type text/plain;
            try_files $uri =404;
        }}
"
        ),
        None => String::new(),
    };
    format!(
        "
    server {{
        listen {port} default_server;
        server_name {names};
        include snippets/security-headers.conf;

        location = /nginx-health {{
            access_log off;
            return 204;
        }}
{acme}
        location / {{
            return 301 https://$host$request_uri;
        }}
    }}
",
        port = site.http_port,
        names = server_names(site),
    )
}

/// The site's names, or `_` (any host: the one site of a server, no domain baked in).
fn server_names(site: &Site) -> String {
    if site.server_names.is_empty() {
        "_".to_owned()
    } else {
        site.server_names.join(" ")
    }
}

fn tls_server(site: &Site) -> String {
    format!(
        "
    server {{
        listen {port} ssl http2 default_server;
        server_name {names};
        ssl_certificate {NGINX_CERTS}/{cert};
        ssl_certificate_key {NGINX_CERTS}/{key};
        include snippets/tls.conf;
        root {NGINX_SPA_ROOT};
{locations}    }}
",
        port = site.https_port,
        names = server_names(site),
        cert = site.certificate,
        key = site.certificate_key,
        locations = locations(site),
    )
}

fn local_server(site: &Site, local: &LocalServer) -> String {
    format!(
        "
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        root {root};
{locations}    }}
",
        port = local.listen_port,
        root = local.root,
        locations = locations(site),
    )
}

fn locations(site: &Site) -> String {
    let upstream = site.upstream.get_ref();
    format!(
        "
        # The web app: its files keep their names between versions, so the browser revalidates
        # them (ETag, 304) instead of caching them for a fixed time.
        location / {{
            include snippets/security-headers.conf;
            add_header Cache-Control \"no-cache\" always;
            try_files $uri $uri/ /index.html;
        }}

        # Its modules: a missing one is a 404, never the page in its place.
        location /js/ {{
            include snippets/security-headers.conf;
            add_header Cache-Control \"no-cache\" always;
            try_files $uri =404;
        }}

        location /assets/ {{
            include snippets/security-headers.conf;
            expires 1y;
            try_files $uri =404;
        }}

        location /api/ {{
            include snippets/security-headers.conf;
            include snippets/proxy.conf;
            proxy_pass http://{upstream};
        }}

        # Uploads stream to the gateway as they arrive (it enforces the size limit): buffered
        # whole, each would sit in /tmp, a tmpfs charged to nginx's memory limit, until it ended.
        location /api/files {{
            include snippets/security-headers.conf;
            include snippets/proxy.conf;
            proxy_request_buffering off;
            proxy_pass http://{upstream};
        }}

        # Server-sent events: every event reaches the client as it is written.
        location /api/chat {{
            include snippets/security-headers.conf;
            include snippets/proxy.conf;
            include snippets/stream.conf;
            proxy_pass http://{upstream};
        }}

        # The OpenAI-compatible API: only through the gateway, which checks the caller.
        location /v1/ {{
            include snippets/security-headers.conf;
            include snippets/proxy.conf;
            include snippets/stream.conf;
            proxy_pass http://{upstream};
        }}
"
    )
}
