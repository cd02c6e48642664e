#!/usr/bin/env bash
# Puts the Dockerfile's base image (node:20-bookworm-slim) into the local Docker engine, so that
# `docker build --pull=false` needs no registry. It is pulled when a registry answers; otherwise (an
# air-gapped site, or a CI machine that reaches only its Debian mirror) a stand-in is built here:
# Debian bookworm from the apt mirror this machine uses (debootstrap), plus this machine's own Node 20
# and npm, with a `node` user and group of id 1000 as in the official image. An image of that name
# already present is kept.
#
#   bash scripts/container-base.sh [TAG]        (as root when it has to build; needs an engine:
#                                                 bash scripts/docker-engine.sh start)
#   CONTAINER_BASE_PULL=0 skips the registry.    CONTAINER_BASE_WORK is the scratch directory.
set -euo pipefail
TAG=${1:-node:20-bookworm-slim}
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker || echo docker)}
WORK=${CONTAINER_BASE_WORK:-/tmp/pg-vault-proxy-container}

if $DOCKER image inspect "$TAG" >/dev/null 2>&1; then
  echo "container-base: $TAG is present"
  exit 0
fi
if [ "${CONTAINER_BASE_PULL:-1}" != 0 ] && timeout 120 $DOCKER pull -q "$TAG" >/dev/null 2>&1; then
  echo "container-base: pulled $TAG"
  exit 0
fi

echo "container-base: no registry gave $TAG; building a stand-in from Debian bookworm and this machine's Node"
if [ "$(id -u)" -ne 0 ]; then
  echo "container-base: building the stand-in needs root (debootstrap, chroot)" >&2
  exit 1
fi
node_bin=$(readlink -f "$(command -v node)")
case "$("$node_bin" --version)" in
  v20.*) ;;
  *)
    echo "container-base: this machine's node is $("$node_bin" --version), not Node 20" >&2
    exit 1
    ;;
esac
if ! command -v debootstrap >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi
# The mirror apt already uses (deb822 sources first, then the one-line format).
mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
if [ -z "$mirror" ]; then
  echo "container-base: no Debian mirror in the apt sources" >&2
  exit 1
fi

mkdir -p "$WORK"
root=$(mktemp -d "$WORK/rootfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
# ca-certificates: npm ci in the build stage reaches its registry over TLS.
if ! debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$mirror" >"$WORK/debootstrap.log" 2>&1; then
  echo "container-base: debootstrap failed; the end of $WORK/debootstrap.log:" >&2
  tail -n 5 "$WORK/debootstrap.log" >&2
  exit 1
fi
npm_dir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
mkdir -p "$root/usr/local/bin" "$root/usr/local/lib/node_modules" "$root/usr/local/etc"
cp -a "$node_bin" "$root/usr/local/bin/node"
cp -a "$npm_dir" "$root/usr/local/lib/node_modules/npm"
ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/local/bin/npm"
ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$root/usr/local/bin/npx"
# This machine may reach the npm registry through a TLS-inspecting proxy: trust what it trusts.
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
echo "cafile=/etc/ssl/certs/ca-certificates.crt" >"$root/usr/local/etc/npmrc"
chroot "$root" groupadd --gid 1000 node
chroot "$root" useradd --uid 1000 --gid node --create-home --shell /bin/sh node
# Keep the image small, as the official slim one does.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
tar -C "$root" -c . | $DOCKER import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["node"]' - "$TAG" >/dev/null
echo "container-base: built $TAG"
