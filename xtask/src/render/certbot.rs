//! `certbot-deploy-hook.sh` in the edge server's folder: what puts a certificate where the
//! non-root nginx can read it. Let's Encrypt's `live/DOMAIN` holds symlinks into
//! `../../archive` and a key only root reads; mounted as they are, nginx cannot start. certbot
//! runs this hook as root after every issue and renewal (`--deploy-hook`): it copies the two
//! files, dereferenced, into the certificates directory of the server's `.env`, owned by the
//! nginx user, and sends nginx SIGHUP so it loads them without dropping a connection. Pure text.

use crate::topology::Topology;

/// The hook's name, inside the edge server's folder.
pub const FILE: &str = "certbot-deploy-hook.sh";

/// The hook for `topology`'s site. A `${NAME}` certificates directory is read from the `.env`
/// beside the hook, as compose reads it.
pub fn render_hook(topology: &Topology, source: &str) -> String {
    let site = &topology.site;
    let nginx = site.service.get_ref();
    let owner = topology.services[nginx].user.get_ref();
    let certificates =
        match crate::topology::validate::secret_references(&site.certificates_dir).first() {
            Some(name) => format!(
                "certs=$(sed -n 's/^{name}=//p' \"$here/.env\" | tail -n 1)\n\
             if [ -z \"$certs\" ]; then\n\
             \techo \"{FILE}: {name} is not set in $here/.env (run init-env.sh)\" >&2\n\
             \texit 1\n\
             fi\n"
            ),
            None => format!("certs='{}'\n", site.certificates_dir),
        };
    let (user, group) = owner.split_once(':').unwrap_or((owner, owner));
    format!(
        "#!/bin/sh
# Written by `cargo xtask render` from {source}; edit that file, not this one.
#
# certbot's deploy hook for this server: copies the certificate certbot just issued or renewed
# ($RENEWED_LINEAGE, e.g. /etc/letsencrypt/live/DOMAIN) into the certificates directory of the
# .env beside it, as plain files owned by nginx's user {owner} (the key mode 0600), then has
# nginx reload them. Give it to certbot once, with the full path of this file:
#
#   certbot certonly --webroot -w \"$ACME_WEBROOT\" -d DOMAIN --deploy-hook \"$PWD/{FILE}\"
#
# certbot runs it as root. Renewals run it again by themselves.
set -eu
here=$(cd \"$(dirname \"$0\")\" && pwd)
lineage=${{RENEWED_LINEAGE:?certbot sets RENEWED_LINEAGE to the live/DOMAIN folder}}
{certificates}
install -d -m 0750 -o {user} -g {group} \"$certs\"
# Through temporary names and a rename: nginx never reads half a file.
install -m 0644 -o {user} -g {group} \"$lineage/{cert}\" \"$certs/.{cert}.new\"
install -m 0600 -o {user} -g {group} \"$lineage/{key}\" \"$certs/.{key}.new\"
mv -f \"$certs/.{cert}.new\" \"$certs/{cert}\"
mv -f \"$certs/.{key}.new\" \"$certs/{key}\"

# nginx re-reads its certificates on SIGHUP; when it is not running it reads them at start.
cd \"$here\"
if docker compose version >/dev/null 2>&1; then
\tcompose='docker compose'
else
\tcompose=docker-compose
fi
$compose kill -s HUP {nginx} >/dev/null 2>&1 || echo \"{FILE}: {nginx} is not running; it loads the certificate when it starts\"
echo \"{FILE}: certificate installed in $certs\"
",
        cert = site.certificate,
        key = site.certificate_key,
    )
}
