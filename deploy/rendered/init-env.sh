#!/bin/sh
# Written by `cargo xtask render` from deploy/topology.toml; edit that file, not this one.
#
# Writes the .env of every server folder beside it (mode 0600): secrets generated from
# /dev/urandom (never printed), settings from NAME=VALUE arguments or their defaults. A value
# already in a .env is kept, never replaced; a secret two servers share gets the same value in
# both. Run it once where the bundle is, before copying each server-X/ folder to its server,
# and again after an upgrade: it only adds what is missing.
set -eu
umask 077
cd "$(dirname "$0")"

usage() {
	cat <<'USAGE'
Usage: ./init-env.sh [NAME=VALUE ...]

Writes server-a/.env, server-b/.env (mode 0600), keeping every value already there.
Secrets are generated. Settings come from NAME=VALUE, else their default:
  ACME_WEBROOT  host folder certbot --webroot writes ACME http-01 challenges into (default: /srv/cairn/acme)
  CERTIFICATES_DIR  host folder with the TLS certificate nginx serves, written by certbot-deploy-hook.sh (default: /srv/cairn/certs)
  MODEL_HOST_DIR  host folder with the model files server B's inference loads (default: /srv/cairn/models/qwen2.5-1.5b-instruct)
  SERVER_B_ADDRESS  server B's private address: B publishes inference there and A's gateway connects to it (e.g. 10.0.0.2)
USAGE
}

for argument in "$@"; do
	case "$argument" in
	-h | --help)
		usage
		exit 0
		;;
	ACME_WEBROOT=* | CERTIFICATES_DIR=* | MODEL_HOST_DIR=* | SERVER_B_ADDRESS=*)
		;;
	*=*)
		echo "init-env.sh: ${argument%%=*} is not a setting of this bundle (./init-env.sh --help lists them)" >&2
		exit 2
		;;
	*)
		echo "init-env.sh: $argument: expected NAME=VALUE (./init-env.sh --help)" >&2
		exit 2
		;;
	esac
	value=${argument#*=}
	case "$value" in
	'' | *[!A-Za-z0-9._:/@+,=-]*)
		echo "init-env.sh: ${argument%%=*}: use only letters, digits and . _ : / @ + , = -" >&2
		exit 2
		;;
	esac
	eval "given_${argument%%=*}=\$value"
done

trap 'rm -f server-*/.env.init-env.*' EXIT

# The value NAME already has in a server's .env, if any.
existing() {
	for file in server-*/.env; do
		[ -f "$file" ] || continue
		found=$(sed -n "s/^$1=//p" "$file" | tail -n 1)
		if [ -n "$found" ]; then
			printf '%s' "$found"
			return
		fi
	done
}

# N random bytes as 2N lowercase hex characters.
hex() {
	od -An -vtx1 -N"$1" /dev/urandom | tr -d ' \n'
}

# A setting: its value in a .env, else the one given as NAME=VALUE, else DEFAULT.
setting() {
	found=$(existing "$1")
	eval "given=\${given_$1-}"
	if [ -n "$found" ]; then
		if [ -n "$given" ] && [ "$given" != "$found" ]; then
			echo "init-env.sh: $1 stays $found, the value already in .env (edit .env to change it)" >&2
		fi
		printf '%s' "$found"
	elif [ -n "$given" ]; then
		printf '%s' "$given"
	else
		printf '%s' "$2"
	fi
}

# begin FOLDER: a working copy of FOLDER/.env to add to.
begin() {
	target=$1/.env
	work=$1/.env.init-env.$$
	if [ -f "$target" ]; then
		cat "$target" >"$work"
	else
		printf '# Written by init-env.sh. Secret: keep it mode 0600, never commit it.\n' >"$work"
	fi
	added=0
}

# put NAME VALUE DESCRIPTION: adds NAME=VALUE unless the file already gives NAME a value.
put() {
	if grep -q "^$1=." "$work"; then
		return 0
	fi
	sed "/^$1=\$/d" "$work" >"$work.next"
	mv "$work.next" "$work"
	printf '\n# %s\n%s=%s\n' "$3" "$1" "$2" >>"$work"
	if [ -n "$2" ]; then
		added=$((added + 1))
	else
		missing="$missing $target:$1"
	fi
}

finish() {
	chmod 600 "$work"
	mv "$work" "$target"
	echo "$target: $added value(s) added"
}

missing=''

# One value per variable, shared by every server that needs it.
v_ACME_WEBROOT=$(setting ACME_WEBROOT '/srv/cairn/acme')
v_CERTIFICATES_DIR=$(setting CERTIFICATES_DIR '/srv/cairn/certs')
v_GARAGE_ADMIN_TOKEN=$(existing GARAGE_ADMIN_TOKEN)
[ -n "$v_GARAGE_ADMIN_TOKEN" ] || v_GARAGE_ADMIN_TOKEN=$(hex 32)
v_GARAGE_RPC_SECRET=$(existing GARAGE_RPC_SECRET)
[ -n "$v_GARAGE_RPC_SECRET" ] || v_GARAGE_RPC_SECRET=$(hex 32)
v_INFERENCE_API_KEY=$(existing INFERENCE_API_KEY)
[ -n "$v_INFERENCE_API_KEY" ] || v_INFERENCE_API_KEY=$(hex 32)
v_JWT_SECRET=$(existing JWT_SECRET)
[ -n "$v_JWT_SECRET" ] || v_JWT_SECRET=$(hex 32)
v_LLM_API_KEY=$(existing LLM_API_KEY)
[ -n "$v_LLM_API_KEY" ] || v_LLM_API_KEY=$(hex 32)
v_MODEL_HOST_DIR=$(setting MODEL_HOST_DIR '/srv/cairn/models/qwen2.5-1.5b-instruct')
v_POSTGRES_PASSWORD=$(existing POSTGRES_PASSWORD)
[ -n "$v_POSTGRES_PASSWORD" ] || v_POSTGRES_PASSWORD=$(hex 32)
v_S3_ACCESS_KEY_ID=$(existing S3_ACCESS_KEY_ID)
[ -n "$v_S3_ACCESS_KEY_ID" ] || v_S3_ACCESS_KEY_ID=GK$(hex 12)
v_S3_SECRET_ACCESS_KEY=$(existing S3_SECRET_ACCESS_KEY)
[ -n "$v_S3_SECRET_ACCESS_KEY" ] || v_S3_SECRET_ACCESS_KEY=$(hex 32)
v_SERVER_B_ADDRESS=$(setting SERVER_B_ADDRESS '')

begin server-a
put ACME_WEBROOT "$v_ACME_WEBROOT" 'host folder certbot --webroot writes ACME http-01 challenges into (default: /srv/cairn/acme)'
put CERTIFICATES_DIR "$v_CERTIFICATES_DIR" 'host folder with the TLS certificate nginx serves, written by certbot-deploy-hook.sh (default: /srv/cairn/certs)'
put GARAGE_ADMIN_TOKEN "$v_GARAGE_ADMIN_TOKEN" 'Garage admin API bearer token (secret; generated by init-env.sh)'
put GARAGE_RPC_SECRET "$v_GARAGE_RPC_SECRET" 'Garage RPC secret: 32 bytes as 64 hex characters (secret; generated by init-env.sh)'
put INFERENCE_API_KEY "$v_INFERENCE_API_KEY" 'key server A'\''s gateway presents to server B'\''s inference (the same value on both servers) (secret; generated by init-env.sh)'
put JWT_SECRET "$v_JWT_SECRET" 'HS256 key for the JWTs the api issues and the gateway verifies; at least 32 random bytes (secret; generated by init-env.sh)'
put LLM_API_KEY "$v_LLM_API_KEY" 'key the api presents to the gateway for /v1 (the gateway accepts it through GATEWAY_API_KEYS) (secret; generated by init-env.sh)'
put POSTGRES_PASSWORD "$v_POSTGRES_PASSWORD" 'password of the PostgreSQL role cairn (any characters) (secret; generated by init-env.sh)'
put S3_ACCESS_KEY_ID "$v_S3_ACCESS_KEY_ID" 'object storage access key id of the api, imported into Garage at its first start (Garage'\''s format: GK and 24 hex) (secret; generated by init-env.sh)'
put S3_SECRET_ACCESS_KEY "$v_S3_SECRET_ACCESS_KEY" 'object storage secret key of the api (Garage'\''s format: 64 hex) (secret; generated by init-env.sh)'
put SERVER_B_ADDRESS "$v_SERVER_B_ADDRESS" 'server B'\''s private address: B publishes inference there and A'\''s gateway connects to it (e.g. 10.0.0.2)'
finish

begin server-b
put INFERENCE_API_KEY "$v_INFERENCE_API_KEY" 'key server A'\''s gateway presents to server B'\''s inference (the same value on both servers) (secret; generated by init-env.sh)'
put MODEL_HOST_DIR "$v_MODEL_HOST_DIR" 'host folder with the model files server B'\''s inference loads (default: /srv/cairn/models/qwen2.5-1.5b-instruct)'
put SERVER_B_ADDRESS "$v_SERVER_B_ADDRESS" 'server B'\''s private address: B publishes inference there and A'\''s gateway connects to it (e.g. 10.0.0.2)'
finish

if [ -n "$missing" ]; then
	echo "init-env.sh: still empty, give them as NAME=VALUE and run it again:$missing" >&2
	exit 1
fi
