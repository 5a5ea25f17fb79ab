//! Initialising a data directory: the settings from the environment (pure), and the initdb and
//! single-user steps.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0}")]
    Setting(String),
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("writing {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error(
        "{0} is not empty and holds no PostgreSQL cluster (no PG_VERSION): refusing to initialise over its files"
    )]
    NotEmpty(PathBuf),
    #[error("running {0}: {1}")]
    Exec(&'static str, std::io::Error),
    #[error("{0} failed ({1}):\n{2}")]
    Failed(&'static str, String, String),
}

/// What initialisation needs. `Debug` never shows the password.
pub struct Settings {
    pub data_dir: PathBuf,
    pub user: String,
    pub database: String,
    pub password: String,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("data_dir", &self.data_dir)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Settings {
    /// Reads PGDATA, POSTGRES_USER (default `postgres`), POSTGRES_DB (default the user) and the
    /// password (POSTGRES_PASSWORD, or the first line of POSTGRES_PASSWORD_FILE).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Settings, InitError> {
        let set = |name: &str| var(name).filter(|v| !v.is_empty());
        let data_dir =
            PathBuf::from(set("PGDATA").unwrap_or_else(|| "/var/lib/postgresql/data".into()));
        let user = set("POSTGRES_USER").unwrap_or_else(|| "postgres".into());
        let database = set("POSTGRES_DB").unwrap_or_else(|| user.clone());
        let password = match (set("POSTGRES_PASSWORD"), set("POSTGRES_PASSWORD_FILE")) {
            (Some(_), Some(_)) => {
                return Err(InitError::Setting(
                    "POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are both set: set one".into(),
                ));
            }
            (Some(password), None) => password,
            (None, Some(file)) => {
                let text = std::fs::read_to_string(&file)
                    .map_err(|err| InitError::Read(PathBuf::from(&file), err))?;
                // A secret file usually ends in a newline that is not part of the password.
                text.strip_suffix('\n')
                    .map(|t| t.strip_suffix('\r').unwrap_or(t))
                    .unwrap_or(&text)
                    .to_owned()
            }
            (None, None) => String::new(),
        };
        if password.contains(['\n', '\r']) {
            return Err(InitError::Setting(
                "the PostgreSQL password contains a line break, which initdb cannot take".into(),
            ));
        }
        for (name, value) in [("POSTGRES_USER", &user), ("POSTGRES_DB", &database)] {
            if value.contains(['\0', '\n', '\r']) {
                return Err(InitError::Setting(format!(
                    "{name} contains a NUL byte or a line break"
                )));
            }
        }
        Ok(Settings {
            data_dir,
            user,
            database,
            password,
        })
    }
}

/// True when `dir` is missing or empty; false when it holds a cluster; an error otherwise.
pub fn needs_init(dir: &Path) -> Result<bool, InitError> {
    if dir.join("PG_VERSION").is_file() {
        return Ok(false);
    }
    match std::fs::read_dir(dir) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(err) => Err(InitError::Read(dir.to_owned(), err)),
        Ok(mut entries) => match entries.next() {
            None => Ok(true),
            Some(_) => Err(InitError::NotEmpty(dir.to_owned())),
        },
    }
}

/// initdb, the network rule and the database, in that order.
pub fn initialise(settings: &Settings) -> Result<(), InitError> {
    if settings.password.is_empty() {
        return Err(InitError::Setting(
            "the data directory is empty and no password is set: set POSTGRES_PASSWORD or \
             POSTGRES_PASSWORD_FILE"
                .into(),
        ));
    }
    eprintln!(
        "pg-entrypoint: initialising {} (superuser {:?}, database {:?})",
        settings.data_dir.display(),
        settings.user,
        settings.database
    );
    let mut initdb = Command::new("initdb")
        .arg("-D")
        .arg(&settings.data_dir)
        .arg(format!("--username={}", settings.user))
        // The password travels on a pipe: never in argv, the environment of a child, or a file.
        .arg("--pwfile=/dev/stdin")
        .args([
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| InitError::Exec("initdb", err))?;
    if let Some(mut stdin) = initdb.stdin.take() {
        writeln!(stdin, "{}", settings.password).map_err(|err| InitError::Exec("initdb", err))?;
    }
    let output = initdb
        .wait_with_output()
        .map_err(|err| InitError::Exec("initdb", err))?;
    if !output.status.success() {
        return Err(InitError::Failed(
            "initdb",
            output.status.to_string(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    append(&settings.data_dir.join("pg_hba.conf"), HBA_NETWORK)?;
    append(
        &settings.data_dir.join("postgresql.conf"),
        &server_settings(&settings.data_dir),
    )?;
    if settings.database != "postgres" {
        single_user(
            settings,
            &create_database_sql(&settings.database, &settings.user),
        )?;
    }
    Ok(())
}

/// Network clients: any address, scram-sha-256 only (initdb's rules cover loopback only).
const HBA_NETWORK: &str = "\n# cairn: clients on the container network, password (scram-sha-256) only.\nhost all all all scram-sha-256\n";

/// Listen on every address of the container, keep the socket in the data directory (the root
/// file system is read-only; PGHOST in the image points psql and pg_isready there), and store
/// passwords as scram.
pub fn server_settings(data_dir: &Path) -> String {
    format!(
        "\n# cairn\nlisten_addresses = '*'\nunix_socket_directories = '{}'\npassword_encryption = 'scram-sha-256'\n",
        data_dir.display().to_string().replace('\'', "''")
    )
}

/// `CREATE DATABASE "name" OWNER "user"` with both identifiers quoted.
pub fn create_database_sql(database: &str, owner: &str) -> String {
    format!(
        "CREATE DATABASE {} OWNER {};\n",
        quote_identifier(database),
        quote_identifier(owner)
    )
}

pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn append(path: &Path, text: &str) -> Result<(), InitError> {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|err| InitError::Write(path.to_owned(), err))?;
    file.write_all(text.as_bytes())
        .map_err(|err| InitError::Write(path.to_owned(), err))
}

/// Runs `sql` (one line: a newline ends a statement there) in postgres's single-user mode (no
/// server, no socket, no password needed).
fn single_user(settings: &Settings, sql: &str) -> Result<(), InitError> {
    let mut postgres = Command::new("postgres")
        .args(["--single", "-D"])
        .arg(&settings.data_dir)
        .arg("postgres")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| InitError::Exec("postgres --single", err))?;
    if let Some(mut stdin) = postgres.stdin.take() {
        stdin
            .write_all(sql.as_bytes())
            .map_err(|err| InitError::Exec("postgres --single", err))?;
    }
    let output = postgres
        .wait_with_output()
        .map_err(|err| InitError::Exec("postgres --single", err))?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // Single-user mode exits 0 after a statement's ERROR: read the log for it.
    if !output.status.success() || stderr.contains("ERROR:") || stderr.contains("FATAL:") {
        return Err(InitError::Failed(
            "postgres --single",
            output.status.to_string(),
            stderr,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn settings_default_like_the_official_image() {
        let settings =
            Settings::from_env(env(&[("POSTGRES_PASSWORD", "p@:/?#%$")])).expect("settings");
        assert_eq!(settings.user, "postgres");
        assert_eq!(settings.database, "postgres");
        assert_eq!(settings.password, "p@:/?#%$");
        assert!(!format!("{settings:?}").contains("p@:"));
    }

    #[test]
    fn password_file_loses_its_final_newline_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, " a b \n").expect("write");
        let path = file.display().to_string();
        let settings = Settings::from_env(env(&[
            ("POSTGRES_PASSWORD_FILE", path.as_str()),
            ("POSTGRES_USER", "cairn"),
        ]))
        .expect("settings");
        assert_eq!(settings.password, " a b ");
        assert_eq!(settings.database, "cairn");
        let both = Settings::from_env(env(&[
            ("POSTGRES_PASSWORD_FILE", path.as_str()),
            ("POSTGRES_PASSWORD", "x"),
        ]));
        assert!(both.is_err());
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(
            create_database_sql("my \"db\"", "cairn"),
            "CREATE DATABASE \"my \"\"db\"\"\" OWNER \"cairn\";\n"
        );
    }

    #[test]
    fn a_directory_with_strangers_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(needs_init(&dir.path().join("missing")).expect("missing"));
        assert!(needs_init(dir.path()).expect("empty"));
        std::fs::write(dir.path().join("lost+found"), "").expect("write");
        assert!(needs_init(dir.path()).is_err());
        std::fs::write(dir.path().join("PG_VERSION"), "15\n").expect("write");
        assert!(!needs_init(dir.path()).expect("cluster"));
    }
}
