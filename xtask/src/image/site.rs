//! cairn's files in the nginx image: a standalone `/etc/nginx/nginx.conf` (the image serves its
//! site on 8080 by itself; a release mounts the config it renders from the topology over it),
//! and the web site under /srv/www: the workspace's `web/` folder when it exists, else an honest
//! placeholder page. nginx's temporary files and pid go to /var/cache/nginx, a directory the
//! non-root user owns, for a volume on disk rather than a memory tmpfs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::plan::ExtraFile;

/// Where nginx writes (temp files, pid): owned by the non-root user in the image.
pub const TEMP_DIR: &str = "/var/cache/nginx";
/// The document root inside the image.
pub const SITE_DIR: &str = "/srv/www";

/// The built-in page when the workspace has no `web/` folder yet.
pub const PLACEHOLDER_PAGE: &str = "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>cairn</title></head>\n<body>\n<h1>cairn</h1>\n<p>This nginx image was built without a web app: the workspace had no <code>web/</code> folder.\nThe API answers under <code>/api/</code>.</p>\n</body>\n</html>\n";

/// The config the image starts with (`nginx -t` passes on it inside the image).
pub const STANDALONE_CONF: &str =
    "# The nginx image's own config (cairn, xtask/src/image/site.rs): serves /srv/www on 8080.
# A release mounts the config rendered from its topology over this file.
worker_processes auto;
pid /var/cache/nginx/nginx.pid;
error_log stderr warn;

events {
    worker_connections 1024;
}

http {
    client_body_temp_path /var/cache/nginx/client_body;
    proxy_temp_path /var/cache/nginx/proxy;
    fastcgi_temp_path /var/cache/nginx/fastcgi;
    uwsgi_temp_path /var/cache/nginx/uwsgi;
    scgi_temp_path /var/cache/nginx/scgi;
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /dev/stdout;
    server_tokens off;

    server {
        listen 8080;
        root /srv/www;
        location = /nginx-health {
            access_log off;
            default_type text/plain;
            return 200 \"ok\\n\";
        }
        location / {
            try_files $uri $uri/ /index.html;
        }
    }
}
";

/// The nginx image's files from the workspace at `root`.
pub fn files(root: &Path) -> Result<Vec<ExtraFile>> {
    let staged = root.join("target").join("nginx-image");
    std::fs::create_dir_all(&staged).with_context(|| format!("creating {}", staged.display()))?;
    let conf = write_if_changed(&staged.join("nginx.conf"), STANDALONE_CONF.as_bytes())?;
    let mut files = vec![ExtraFile {
        host_path: conf,
        image_path: "/etc/nginx/nginx.conf".into(),
        mode: 0o644,
    }];
    let web = root.join("web");
    if web.is_dir() {
        for (relative, host_path) in walk_sorted(&web)? {
            files.push(ExtraFile {
                host_path,
                image_path: format!("{SITE_DIR}/{relative}"),
                mode: 0o644,
            });
        }
    } else {
        let page = write_if_changed(&staged.join("index.html"), PLACEHOLDER_PAGE.as_bytes())?;
        files.push(ExtraFile {
            host_path: page,
            image_path: format!("{SITE_DIR}/index.html"),
            mode: 0o644,
        });
    }
    Ok(files)
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    if std::fs::read(path).ok().as_deref() != Some(bytes) {
        super::layout::write_atomically(path, bytes)?;
    }
    Ok(path.to_owned())
}

/// Every regular file under `dir` as (path relative to `dir` with `/`, host path), sorted; symlinks
/// and hidden files (`.git…`) are left out.
fn walk_sorted(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let listing = std::fs::read_dir(&current)
            .with_context(|| format!("reading {}", current.display()))?;
        for entry in listing {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                let relative = entry
                    .path()
                    .strip_prefix(dir)
                    .map(|p| p.to_string_lossy().replace('\\', "/"))
                    .unwrap_or(name);
                found.push((relative, entry.path()));
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_web_the_placeholder_says_so() {
        let root = tempfile::tempdir().expect("tempdir");
        let files = files(root.path()).expect("files");
        let paths: Vec<&str> = files.iter().map(|f| f.image_path.as_str()).collect();
        assert_eq!(paths, ["/etc/nginx/nginx.conf", "/srv/www/index.html"]);
        let page = std::fs::read_to_string(&files[1].host_path).expect("page");
        assert!(page.contains("without a web app"));
    }

    #[test]
    fn with_web_its_files_are_the_site() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("web/js")).expect("web");
        std::fs::write(root.path().join("web/index.html"), "<h1>app</h1>").expect("index");
        std::fs::write(root.path().join("web/js/app.js"), "1").expect("js");
        let files = files(root.path()).expect("files");
        let paths: Vec<&str> = files.iter().map(|f| f.image_path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/etc/nginx/nginx.conf",
                "/srv/www/index.html",
                "/srv/www/js/app.js"
            ]
        );
    }
}
