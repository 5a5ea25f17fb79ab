//! Which Debian packages each image is made of (pure data): the packages an image asks for, and
//! the dependencies cairn leaves out on purpose, each with its reason. `cargo xtask lock` pins
//! the dependency closure of these; the image step extracts exactly what the lock names.

/// The Debian release the lock pins and the host's apt must serve.
pub const RELEASE: &str = "bookworm";
pub const ARCHITECTURE: &str = "amd64";

/// One image's package set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackageSet {
    /// The set's name in `deploy/debian.lock` (`base` is the system layer of cairn's services).
    pub name: &'static str,
    /// The packages asked for; their `Depends`/`Pre-Depends` closure is pinned.
    pub roots: &'static [&'static str],
    /// Path prefixes (inside the image, no leading `/`) left out of this set's packages.
    pub drop_paths: &'static [&'static str],
    /// Symlinks a maintainer script would make, `(path, target)` (no leading `/` on the path).
    pub links: &'static [(&'static str, &'static str)],
}

pub const SETS: &[PackageSet] = &[
    PackageSet {
        name: "base",
        roots: &["libc6", "libgcc-s1", "ca-certificates"],
        drop_paths: &[],
        links: &[],
    },
    PackageSet {
        name: "nginx",
        roots: &["nginx"],
        // iconv's conversion modules (nginx converts nothing with iconv), and the package's
        // default config and pages: the image brings its own config and site.
        drop_paths: &[
            "usr/lib/x86_64-linux-gnu/gconv",
            "etc/nginx/nginx.conf",
            "etc/nginx/sites-available",
            "etc/nginx/sites-enabled",
            "etc/init.d",
            "etc/logrotate.d",
            "etc/ufw",
            "usr/share/nginx",
            "var/www",
            "lib/systemd",
        ],
        links: &[],
    },
    PackageSet {
        name: "postgres",
        // dash: initdb runs postgres through popen(3), which needs /bin/sh (with a redirection
        // in its command line); nothing else in the image uses a shell.
        roots: &["postgresql-15", "postgresql-client-15", "dash"],
        // JIT: llvmjit.so and its bitcode need libLLVM (about 100 MB); postgres runs without
        // JIT (the `jit` setting falls back to off when the provider is missing).
        drop_paths: &[
            "usr/lib/postgresql/15/lib/llvmjit.so",
            "usr/lib/postgresql/15/lib/llvmjit_types.bc",
            "usr/lib/postgresql/15/lib/bitcode",
        ],
        // dash's maintainer script makes /bin/sh; the image has none to run.
        links: &[("bin/sh", "dash")],
    },
];

/// Dependencies never pinned, and why. Each is needed only by a maintainer script or an init
/// system, none by a program the images run.
pub const SKIPPED: &[(&str, &str)] = &[
    ("debconf", "configuration questions of maintainer scripts"),
    (
        "debconf-2.0",
        "configuration questions of maintainer scripts",
    ),
    (
        "adduser",
        "maintainer scripts create users; the image has its passwd",
    ),
    ("init-system-helpers", "init systems"),
    ("lsb-base", "init scripts"),
    ("iproute2", "nginx's init scripts"),
    ("ucf", "maintainer scripts"),
    (
        "perl",
        "postgresql-common's cluster wrappers, which the image does not use",
    ),
    ("libjson-perl", "postgresql-common's cluster wrappers"),
    (
        "postgresql-common",
        "the pg_ctlcluster wrappers; the entrypoint runs postgres itself",
    ),
    (
        "postgresql-client-common",
        "the pg_wrapper scripts; the image calls the binaries by path",
    ),
    ("sensible-utils", "psql's pager and editor choice"),
    (
        "dpkg",
        "readline-common's info-page trigger; cairn extracts packages itself",
    ),
    ("install-info", "readline-common's info-page trigger"),
    ("debianutils", "dash's maintainer script (add-shell)"),
    ("ssl-cert", "the snakeoil certificate generator"),
    (
        "openssl",
        "update-ca-certificates; cairn builds the CA bundle itself",
    ),
    ("locales", "initdb runs with the C locale and UTF8 encoding"),
    (
        "locales-all",
        "initdb runs with the C locale and UTF8 encoding",
    ),
    (
        "libllvm14",
        "postgres's JIT, left out (see the postgres set)",
    ),
];

pub fn set(name: &str) -> Option<&'static PackageSet> {
    SETS.iter().find(|set| set.name == name)
}

pub fn is_skipped(package: &str) -> bool {
    SKIPPED.iter().any(|(name, _)| *name == package)
}

/// Paths no image carries: documentation, manuals, translations, bug-report and lintian data.
pub const DROPPED_EVERYWHERE: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/share/locale",
];

/// Whether `path` (no leading `/`) stays out of an image of `set`.
pub fn is_dropped(set: &PackageSet, path: &str) -> bool {
    let path = path.trim_start_matches("./").trim_end_matches('/');
    DROPPED_EVERYWHERE
        .iter()
        .chain(set.drop_paths)
        .any(|prefix| path == *prefix || path.starts_with(&format!("{prefix}/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_and_jit_stay_out() {
        let postgres = set("postgres").expect("postgres set");
        assert!(is_dropped(postgres, "./usr/share/doc/libc6/copyright"));
        assert!(is_dropped(
            postgres,
            "usr/lib/postgresql/15/lib/bitcode/postgres/x.bc"
        ));
        assert!(!is_dropped(
            postgres,
            "usr/lib/postgresql/15/lib/plpgsql.so"
        ));
        assert!(!is_dropped(postgres, "usr/share/documentation"));
    }
}
