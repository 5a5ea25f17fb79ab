//! Environment variables in compose files: how a topology value becomes a compose value (secrets
//! required with `${NAME:?…}` and no default, a literal `$` escaped), and the `.env.example` that
//! lists every variable a server's compose file requires, without values.

use std::collections::BTreeSet;

use crate::topology::Topology;

/// `${NAME:?…}`: compose refuses to start when NAME is unset or empty, and there is no default.
pub fn required(name: &str) -> String {
    format!("${{{name}:?set {name} in .env (see .env.example)}}")
}

/// A topology env value as compose must read it: each `${NAME}` becomes a required variable and
/// every other `$` is doubled so compose keeps it literally.
pub fn interpolate(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar..];
        match after
            .strip_prefix("${")
            .and_then(|inner| inner.find('}').map(|end| &inner[..end]))
        {
            Some(name) => {
                out.push_str(&required(name));
                rest = &after[name.len() + 3..];
            }
            None => {
                out.push_str("$$");
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The secrets the services of `server` need, sorted.
pub fn server_secrets<'t>(topology: &'t Topology, server: &str) -> BTreeSet<&'t str> {
    topology
        .services
        .values()
        .filter(|service| service.server.get_ref() == server)
        .flat_map(|service| service.secrets.iter().map(|s| s.get_ref().as_str()))
        .collect()
}

/// `.env.example` for `server`: one commented, empty line per required variable.
pub fn render_env_example(topology: &Topology, server: &str) -> String {
    let description = topology
        .servers
        .get(server)
        .map_or("", |s| s.description.as_str());
    let mut text = format!(
        "# Server {server} ({description}).\n# Every variable its compose.yaml requires. Copy to .env, fill in, never commit.\n"
    );
    for name in server_secrets(topology, server) {
        let description = topology
            .secrets
            .get(name)
            .map_or("", |secret| secret.description.as_str());
        text.push_str(&format!("\n# {description}\n{name}=\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_become_required_and_dollars_are_escaped() {
        assert_eq!(
            interpolate("postgres://u:${PW}@db/x$y"),
            "postgres://u:${PW:?set PW in .env (see .env.example)}@db/x$$y"
        );
        assert_eq!(interpolate("plain"), "plain");
        assert_eq!(interpolate("$"), "$$");
        assert_eq!(
            interpolate("${A}${B}"),
            format!("{}{}", required("A"), required("B"))
        );
    }
}
