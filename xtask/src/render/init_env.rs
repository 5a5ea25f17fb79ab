//! `init-env.sh`, written at the root of the rendered folders: the one command that gives every
//! server its `.env`. Secrets are generated from `/dev/urandom` in the format each one needs
//! (`[secrets.X] generate`), settings come from `NAME=VALUE` arguments or their defaults, a
//! value already in a `.env` is never replaced, and a secret two servers share (the key server
//! A's gateway presents to server B's inference) gets one value in both files.
//!
//! A POSIX shell script rather than a cairn binary because it runs where the bundle is, which
//! has `sh`, `od` and `sed` but maybe neither cargo nor this workspace. Values only ever pass
//! through shell builtins (`printf`), never through another process's arguments, and are
//! never printed. Pure text; its behaviour is tested by running it (see the tests below).

use std::collections::{BTreeMap, BTreeSet};

use crate::topology::{Generate, Topology};

/// The script's name, at the root of the rendered folders.
pub const FILE: &str = "init-env.sh";

/// The characters a setting given as `NAME=VALUE` may hold: enough for addresses, host paths
/// and domains, and nothing a `.env` line, compose or a shell could read another way.
const SETTING_CHARACTERS: &str = "A-Za-z0-9._:/@+,=-";

/// `variables`: server key (`a`) to the variables its compose file requires.
pub fn render_init_env(
    topology: &Topology,
    source: &str,
    variables: &BTreeMap<String, BTreeSet<String>>,
) -> String {
    // Every variable some server needs: each gets one value, shared by those servers.
    let needed: BTreeSet<&str> = variables.values().flatten().map(String::as_str).collect();
    let settings: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|name| topology.settings.contains_key(*name))
        .collect();

    let mut text = format!(
        "#!/bin/sh
# Written by `cargo xtask render` from {source}; edit that file, not this one.
#
# Writes the .env of every server folder beside it (mode 0600): secrets generated from
# /dev/urandom (never printed), settings from NAME=VALUE arguments or their defaults. A value
# already in a .env is kept, never replaced; a secret two servers share gets the same value in
# both. Run it once where the bundle is, before copying each server-X/ folder to its server,
# and again after an upgrade: it only adds what is missing.
set -eu
umask 077
cd \"$(dirname \"$0\")\"

usage() {{
\tcat <<'USAGE'
Usage: ./init-env.sh [NAME=VALUE ...]

Writes {files} (mode 0600), keeping every value already there.
Secrets are generated. Settings come from NAME=VALUE, else their default:
{setting_lines}USAGE
}}

for argument in \"$@\"; do
\tcase \"$argument\" in
\t-h | --help)
\t\tusage
\t\texit 0
\t\t;;
{setting_patterns}\t*=*)
\t\techo \"init-env.sh: ${{argument%%=*}} is not a setting of this bundle (./init-env.sh --help lists them)\" >&2
\t\texit 2
\t\t;;
\t*)
\t\techo \"init-env.sh: $argument: expected NAME=VALUE (./init-env.sh --help)\" >&2
\t\texit 2
\t\t;;
\tesac
\tvalue=${{argument#*=}}
\tcase \"$value\" in
\t'' | *[!{SETTING_CHARACTERS}]*)
\t\techo \"init-env.sh: ${{argument%%=*}}: use only letters, digits and . _ : / @ + , = -\" >&2
\t\texit 2
\t\t;;
\tesac
\teval \"given_${{argument%%=*}}=\\$value\"
done

trap 'rm -f server-*/.env.init-env.*' EXIT

# The value NAME already has in a server's .env, if any.
existing() {{
\tfor file in server-*/.env; do
\t\t[ -f \"$file\" ] || continue
\t\tfound=$(sed -n \"s/^$1=//p\" \"$file\" | tail -n 1)
\t\tif [ -n \"$found\" ]; then
\t\t\tprintf '%s' \"$found\"
\t\t\treturn
\t\tfi
\tdone
}}

# N random bytes as 2N lowercase hex characters.
hex() {{
\tod -An -vtx1 -N\"$1\" /dev/urandom | tr -d ' \\n'
}}

# A setting: its value in a .env, else the one given as NAME=VALUE, else DEFAULT.
setting() {{
\tfound=$(existing \"$1\")
\teval \"given=\\${{given_$1-}}\"
\tif [ -n \"$found\" ]; then
\t\tif [ -n \"$given\" ] && [ \"$given\" != \"$found\" ]; then
\t\t\techo \"init-env.sh: $1 stays $found, the value already in .env (edit .env to change it)\" >&2
\t\tfi
\t\tprintf '%s' \"$found\"
\telif [ -n \"$given\" ]; then
\t\tprintf '%s' \"$given\"
\telse
\t\tprintf '%s' \"$2\"
\tfi
}}

# begin FOLDER: a working copy of FOLDER/.env to add to.
begin() {{
\ttarget=$1/.env
\twork=$1/.env.init-env.$$
\tif [ -f \"$target\" ]; then
\t\tcat \"$target\" >\"$work\"
\telse
\t\tprintf '# Written by init-env.sh. Secret: keep it mode 0600, never commit it.\\n' >\"$work\"
\tfi
\tadded=0
}}

# put NAME VALUE DESCRIPTION: adds NAME=VALUE unless the file already gives NAME a value.
put() {{
\tif grep -q \"^$1=.\" \"$work\"; then
\t\treturn 0
\tfi
\tsed \"/^$1=\\$/d\" \"$work\" >\"$work.next\"
\tmv \"$work.next\" \"$work\"
\tprintf '\\n# %s\\n%s=%s\\n' \"$3\" \"$1\" \"$2\" >>\"$work\"
\tif [ -n \"$2\" ]; then
\t\tadded=$((added + 1))
\telse
\t\tmissing=\"$missing $target:$1\"
\tfi
}}

finish() {{
\tchmod 600 \"$work\"
\tmv \"$work\" \"$target\"
\techo \"$target: $added value(s) added\"
}}

missing=''
",
        files = variables
            .keys()
            .map(|server| format!("server-{server}/.env"))
            .collect::<Vec<_>>()
            .join(", "),
        setting_lines = settings
            .iter()
            .map(|name| format!(
                "  {name}  {}\n",
                super::env::describe(topology, name)
            ))
            .collect::<String>(),
        setting_patterns = if settings.is_empty() {
            String::new()
        } else {
            format!(
                "\t{})\n\t\t;;\n",
                settings
                    .iter()
                    .map(|name| format!("{name}=*"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            )
        },
    );

    text.push_str("\n# One value per variable, shared by every server that needs it.\n");
    for name in &needed {
        let variable = format!("v_{name}");
        if let Some(secret) = topology.secrets.get(*name) {
            text.push_str(&format!("{variable}=$(existing {name})\n"));
            match secret.generate {
                Some(Generate::Hex32) => {
                    text.push_str(&format!("[ -n \"${variable}\" ] || {variable}=$(hex 32)\n"))
                }
                Some(Generate::GarageKeyId) => text.push_str(&format!(
                    "[ -n \"${variable}\" ] || {variable}=GK$(hex 12)\n"
                )),
                None => {}
            }
        } else {
            let default = topology
                .settings
                .get(*name)
                .and_then(|setting| setting.default.clone())
                .unwrap_or_default();
            text.push_str(&format!(
                "{variable}=$(setting {name} {})\n",
                shell_quote(&default)
            ));
        }
    }

    for (server, names) in variables {
        text.push_str(&format!("\nbegin server-{server}\n"));
        for name in names {
            text.push_str(&format!(
                "put {name} \"$v_{name}\" {}\n",
                shell_quote(&super::env::describe(topology, name))
            ));
        }
        text.push_str("finish\n");
    }
    text.push_str(
        "
if [ -n \"$missing\" ]; then
\techo \"init-env.sh: still empty, give them as NAME=VALUE and run it again:$missing\" >&2
\texit 1
fi
",
    );
    text
}

/// `'text'` for sh, a `'` inside written as `'\''`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::process::{Command, Output};

    use super::*;

    fn topology() -> Topology {
        let text = r#"
[site]
service = "web"
upstream = "web"
certificates_dir = "${CERTIFICATES_DIR}"
body_limit_mib = 1
http_port = 8080
https_port = 8443
local_port = 8088
local_upstream = "127.0.0.1:8080"
certificate = "fullchain.pem"
certificate_key = "privkey.pem"

[servers.a]
description = "edge"
private_address = "10.0.0.1"

[servers.b]
description = "model"
private_address = "${SERVER_B_ADDRESS}"

[settings.SERVER_B_ADDRESS]
description = "server B's private address"
example = "10.0.0.2"

[settings.CERTIFICATES_DIR]
description = "certificates"
default = "/srv/cairn/certs"

[secrets.SHARED_KEY]
description = "the key A's web presents to B's model, it's shared"
generate = "hex32"

[secrets.KEY_ID]
description = "a Garage key id"
generate = "garage-key-id"

[secrets.OWN]
description = "a key nobody can generate"

[images.web]
build = "gateway"

[services.web]
server = "a"
image = "web"
port = 8080
user = "1000:1000"
memory = "64m"
health = { command = ["/web", "healthcheck"] }
"#;
        toml::from_str(text).expect("the test topology parses")
    }

    fn variables(a: &[&str], b: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
        let set = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect();
        BTreeMap::from([("a".to_owned(), set(a)), ("b".to_owned(), set(b))])
    }

    fn bundle(script: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for server in ["server-a", "server-b"] {
            std::fs::create_dir(dir.path().join(server)).expect("server folder");
        }
        std::fs::write(dir.path().join(FILE), script).expect("script");
        dir
    }

    fn run(dir: &Path, args: &[&str]) -> Output {
        Command::new("sh")
            .arg(dir.join(FILE))
            .args(args)
            .output()
            .expect("sh runs")
    }

    fn env_file(dir: &Path, server: &str) -> BTreeMap<String, String> {
        std::fs::read_to_string(dir.join(server).join(".env"))
            .expect(".env written")
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (name, value) = line.split_once('=').expect("NAME=VALUE");
                (name.to_owned(), value.to_owned())
            })
            .collect()
    }

    fn is_hex(text: &str, length: usize) -> bool {
        text.len() == length
            && text
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    }

    #[test]
    fn writes_every_server_env_with_generated_secrets_shared_values_and_mode_0600() {
        let script = render_init_env(
            &topology(),
            "t.toml",
            &variables(
                &[
                    "SHARED_KEY",
                    "KEY_ID",
                    "SERVER_B_ADDRESS",
                    "CERTIFICATES_DIR",
                ],
                &["SHARED_KEY", "SERVER_B_ADDRESS"],
            ),
        );
        let dir = bundle(&script);
        let output = run(dir.path(), &["SERVER_B_ADDRESS=10.9.8.7"]);
        assert!(output.status.success(), "{output:?}");
        let a = env_file(dir.path(), "server-a");
        let b = env_file(dir.path(), "server-b");
        assert!(is_hex(&a["SHARED_KEY"], 64), "{a:?}");
        assert_eq!(
            a["SHARED_KEY"], b["SHARED_KEY"],
            "one value for both servers"
        );
        let key_id = a["KEY_ID"].strip_prefix("GK").expect("GK prefix");
        assert!(is_hex(key_id, 24), "{key_id}");
        assert_eq!(a["SERVER_B_ADDRESS"], "10.9.8.7");
        assert_eq!(b["SERVER_B_ADDRESS"], "10.9.8.7");
        assert_eq!(a["CERTIFICATES_DIR"], "/srv/cairn/certs", "the default");
        assert!(!b.contains_key("KEY_ID"), "only what the server needs");
        for server in ["server-a", "server-b"] {
            let mode = std::fs::metadata(dir.path().join(server).join(".env"))
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{server}");
        }
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !printed.contains(&a["SHARED_KEY"]),
            "never printed: {printed}"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("server-a"))
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, [".env"], "no temporary file left");
    }

    #[test]
    fn a_second_run_keeps_every_value_and_fills_only_what_is_missing() {
        let topology = topology();
        let first = render_init_env(
            &topology,
            "t.toml",
            &variables(&["SHARED_KEY", "SERVER_B_ADDRESS"], &["SHARED_KEY"]),
        );
        let dir = bundle(&first);
        // No address given: written empty, reported, exit 1.
        let output = run(dir.path(), &[]);
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("server-a/.env:SERVER_B_ADDRESS"),
            "{stderr}"
        );
        let before = env_file(dir.path(), "server-a");
        assert_eq!(before["SERVER_B_ADDRESS"], "");

        // A newer bundle needs one more variable on server B.
        let second = render_init_env(
            &topology,
            "t.toml",
            &variables(
                &["SHARED_KEY", "SERVER_B_ADDRESS"],
                &["SHARED_KEY", "KEY_ID", "SERVER_B_ADDRESS"],
            ),
        );
        std::fs::write(dir.path().join(FILE), second).expect("script");
        let output = run(dir.path(), &["SERVER_B_ADDRESS=10.0.0.2"]);
        assert!(output.status.success(), "{output:?}");
        let a = env_file(dir.path(), "server-a");
        let b = env_file(dir.path(), "server-b");
        assert_eq!(a["SHARED_KEY"], before["SHARED_KEY"], "kept");
        assert_eq!(b["SHARED_KEY"], before["SHARED_KEY"], "kept");
        assert_eq!(
            a["SERVER_B_ADDRESS"], "10.0.0.2",
            "an empty value is filled"
        );
        assert!(b["KEY_ID"].starts_with("GK"));

        // Given again with another value: the .env wins, and says so.
        let output = run(dir.path(), &["SERVER_B_ADDRESS=10.0.0.3"]);
        assert!(output.status.success(), "{output:?}");
        assert_eq!(
            env_file(dir.path(), "server-a")["SERVER_B_ADDRESS"],
            "10.0.0.2"
        );
        assert!(String::from_utf8_lossy(&output.stderr).contains("stays 10.0.0.2"));
    }

    #[test]
    fn a_secret_nobody_can_generate_is_left_for_the_operator() {
        let script = render_init_env(&topology(), "t.toml", &variables(&["OWN"], &[]));
        let dir = bundle(&script);
        let output = run(dir.path(), &[]);
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        assert_eq!(env_file(dir.path(), "server-a")["OWN"], "");
        std::fs::write(
            dir.path().join("server-a/.env"),
            "OWN=operator's own value\n",
        )
        .expect("the operator fills it in");
        let output = run(dir.path(), &[]);
        assert!(output.status.success(), "{output:?}");
        assert_eq!(
            env_file(dir.path(), "server-a")["OWN"],
            "operator's own value"
        );
    }

    #[test]
    fn unknown_names_and_unsafe_values_are_refused_before_anything_is_written() {
        let script = render_init_env(
            &topology(),
            "t.toml",
            &variables(&["SERVER_B_ADDRESS"], &[]),
        );
        let dir = bundle(&script);
        for (args, expected) in [
            (["SHARED_KEY=x"], "SHARED_KEY is not a setting"),
            (["SERVER_B_ADDRESS=a b"], "SERVER_B_ADDRESS: use only"),
            (["SERVER_B_ADDRESS=$(id)"], "SERVER_B_ADDRESS: use only"),
            (["nonsense"], "nonsense: expected NAME=VALUE"),
        ] {
            let output = run(dir.path(), &args);
            assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(stderr.contains(expected), "{args:?}: {stderr}");
            assert!(!dir.path().join("server-a/.env").exists());
        }
        let help = run(dir.path(), &["--help"]);
        assert!(help.status.success());
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(
            help.contains("SERVER_B_ADDRESS  server B's private address (e.g. 10.0.0.2)"),
            "{help}"
        );
    }

    #[test]
    fn descriptions_with_quotes_stay_inside_their_shell_word() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
