#!/usr/bin/env bash
# Makes sure a Docker engine answers, for the image test and offline image builds.
#   bash scripts/docker-engine.sh start   installs Debian's docker.io if dockerd is missing (root only),
#                                         starts dockerd if no engine answers; prints the pid it started,
#                                         or nothing when an engine was already running
#   bash scripts/docker-engine.sh stop PID  stops a dockerd this script started (and waits for it)
# Debian's own client (/usr/bin/docker) is used: it matches Debian's engine and builds with the
# classic builder, where a newer client on PATH may insist on buildx.
# Exit status 3: no engine and none can be started (not root, or dockerd fails); the reason is on stderr.
set -euo pipefail
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker || echo docker)}
WORK=${CONTAINER_BASE_WORK:-/tmp/pg-vault-proxy-container}

start() {
  if $DOCKER info >/dev/null 2>&1; then return 0; fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "docker-engine: no Docker engine answers and only root can start one" >&2
    exit 3
  fi
  if ! command -v dockerd >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
    DOCKER=/usr/bin/docker
  fi
  mkdir -p "$WORK"
  # A session of its own: a Ctrl-C at this terminal does not reach it; `stop` ends it.
  setsid dockerd >"$WORK/dockerd.log" 2>&1 </dev/null &
  local pid=$!
  for _ in $(seq 1 120); do
    if $DOCKER info >/dev/null 2>&1; then
      echo "$pid"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  echo "docker-engine: dockerd did not start; the end of $WORK/dockerd.log:" >&2
  tail -n 5 "$WORK/dockerd.log" >&2 || true
  kill "$pid" 2>/dev/null || true
  exit 3
}

stop() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  # dockerd stops its containers (10 s each at most) and its containerd before it exits.
  for _ in $(seq 1 120); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.5
  done
  echo "docker-engine: dockerd $pid did not stop within 60 s" >&2
  return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:?usage: docker-engine.sh stop PID}" ;;
  *)
    echo "usage: docker-engine.sh start | stop PID" >&2
    exit 2
    ;;
esac
