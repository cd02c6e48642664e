#!/bin/sh
# The vault-init service of docker-compose.yml. It runs in the Dockerfile's build stage (Node, tsx,
# dev-vault/) with the working directory /app, and configures the Vault dev server through its HTTP
# API with dev-vault/setup-database.ts: the same script the tests and `npm run demo` run against
# the dev Vault. Then it writes the proxy's configuration and AppRole secret_id into the
# proxy-config volume (/etc/pg-vault-proxy), which the proxy service mounts read-only.
#
# Environment: VAULT_ADDR and VAULT_TOKEN (read by setup-database.ts); PG_HOST (default postgres)
# and PGVP_CONFIG_DIR (default /etc/pg-vault-proxy) for running it outside compose.
set -eu

out=${PGVP_CONFIG_DIR:-/etc/pg-vault-proxy}
template=$(dirname "$0")/proxy.yaml.template

# The roles come from initdb/01-roles.sql. Vault reaches PostgreSQL over the compose network; the
# postgres image has no TLS, hence sslmode=disable.
creds=$(./node_modules/.bin/tsx dev-vault/setup-database.ts \
  --connection-url "postgresql://{{username}}:{{password}}@${PG_HOST:-postgres}:5432/appdb?sslmode=disable" \
  --username vault_admin --password vault_admin_pw \
  --owner-role app_owner --static-username app_static \
  --db-name appdb --dynamic-role app-rw --static-role app-static \
  --default-ttl 10m --max-ttl 1h \
  --approle-name proxy --policy proxy)

# setup-database.ts prints {"role_id":"…","secret_id":"…"}. Read fields from stdin, so the
# secret_id never appears on a command line.
field() {
  printf '%s' "$creds" | node -e '
    const value = JSON.parse(require("node:fs").readFileSync(0, "utf8"))[process.argv[1]]
    if (typeof value !== "string" || !/^[A-Za-z0-9-]+$/.test(value)) throw new Error(`no usable ${process.argv[1]}`)
    process.stdout.write(value)' "$1"
}
role_id=$(field role_id)

umask 077
field secret_id >"$out/secret-id.tmp"
sed "s/@ROLE_ID@/$role_id/" "$template" >"$out/proxy.yaml.tmp"
# The proxy runs as the image's node user (uid 1000); this one-shot container runs as root.
if [ "$(id -u)" = 0 ]; then chown 1000:1000 "$out/secret-id.tmp" "$out/proxy.yaml.tmp"; fi
chmod 0400 "$out/secret-id.tmp"
chmod 0444 "$out/proxy.yaml.tmp"
mv -f "$out/secret-id.tmp" "$out/secret-id"
mv -f "$out/proxy.yaml.tmp" "$out/proxy.yaml"
echo "vault-init: database secrets engine, roles app-rw and app-static, AppRole proxy configured; wrote $out/proxy.yaml"
