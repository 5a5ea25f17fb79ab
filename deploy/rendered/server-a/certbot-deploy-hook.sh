#!/bin/sh
# Written by `cargo xtask render` from deploy/topology.toml; edit that file, not this one.
#
# certbot's deploy hook for this server: copies the certificate certbot just issued or renewed
# ($RENEWED_LINEAGE, e.g. /etc/letsencrypt/live/DOMAIN) into the certificates directory of the
# .env beside it, as plain files owned by nginx's user 65532:65532 (the key mode 0600), then has
# nginx reload them. Give it to certbot once, with the full path of this file:
#
#   certbot certonly --webroot -w "$ACME_WEBROOT" -d DOMAIN --deploy-hook "$PWD/certbot-deploy-hook.sh"
#
# certbot runs it as root. Renewals run it again by themselves.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
lineage=${RENEWED_LINEAGE:?certbot sets RENEWED_LINEAGE to the live/DOMAIN folder}
certs=$(sed -n 's/^CERTIFICATES_DIR=//p' "$here/.env" | tail -n 1)
if [ -z "$certs" ]; then
	echo "certbot-deploy-hook.sh: CERTIFICATES_DIR is not set in $here/.env (run init-env.sh)" >&2
	exit 1
fi

install -d -m 0750 -o 65532 -g 65532 "$certs"
# Through temporary names and a rename: nginx never reads half a file.
install -m 0644 -o 65532 -g 65532 "$lineage/fullchain.pem" "$certs/.fullchain.pem.new"
install -m 0600 -o 65532 -g 65532 "$lineage/privkey.pem" "$certs/.privkey.pem.new"
mv -f "$certs/.fullchain.pem.new" "$certs/fullchain.pem"
mv -f "$certs/.privkey.pem.new" "$certs/privkey.pem"

# nginx re-reads its certificates on SIGHUP; when it is not running it reads them at start.
cd "$here"
if docker compose version >/dev/null 2>&1; then
	compose='docker compose'
else
	compose=docker-compose
fi
$compose kill -s HUP nginx >/dev/null 2>&1 || echo "certbot-deploy-hook.sh: nginx is not running; it loads the certificate when it starts"
echo "certbot-deploy-hook.sh: certificate installed in $certs"
