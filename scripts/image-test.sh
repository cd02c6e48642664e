#!/usr/bin/env bash
# The container image, built and run the way docs/deployment.md tells users to run it: read-only
# root, every capability dropped, no new privileges, host networking, static credentials, against a
# PostgreSQL on this host's loopback. test/integration/image.test.ts runs it against the test cluster.
#
#   IMAGE_TEST_PGHOST=127.0.0.1 IMAGE_TEST_PGPORT=5432 IMAGE_TEST_PGDATABASE=appdb \
#   IMAGE_TEST_PGUSER=login IMAGE_TEST_PGPASSWORD=… IMAGE_TEST_OWNER_ROLE=app_owner \
#     bash scripts/image-test.sh
#
# Two containers: one with its ops server on a port other than the default, one with the ops server
# off and its configuration mounted elsewhere (PGVP_CONFIG), so the HEALTHCHECK must follow each
# configuration. Prints one line per check, `ok - …` or `not ok - … # why`. Exit status: 0 every
# check passed, 1 one failed, 3 no Docker engine answers and none can be started (the reason on
# stderr). Stops every container it started, and the engine too if it started it.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${IMAGE_TEST_PGHOST:?} ${IMAGE_TEST_PGPORT:?} ${IMAGE_TEST_PGDATABASE:?} ${IMAGE_TEST_PGUSER:?}"
: "${IMAGE_TEST_PGPASSWORD:?} ${IMAGE_TEST_OWNER_ROLE:?}"
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker || echo docker)}
export DOCKER
TAG=${IMAGE_TEST_TAG:-pg-vault-proxy:image-test}
# What docs/deployment.md gives as the stop timeout: longer than shutdown_grace_ms (30 s).
STOP_TIMEOUT=45

work=$(mktemp -d "${TMPDIR:-/tmp}/pgvp-image-test.XXXXXX")
engine_pid=""
containers=()
failed=0
cleanup() {
  for c in "${containers[@]}"; do $DOCKER rm -f "$c" >/dev/null 2>&1 || true; done
  rm -rf "$work"
  if [ -n "$engine_pid" ]; then bash scripts/docker-engine.sh stop "$engine_pid" || true; fi
}
trap cleanup EXIT
# A test runner that gives up sends TERM: exit through the EXIT trap, which cleans up.
trap 'exit 143' TERM INT

ok() { echo "ok - $1"; }
not_ok() {
  echo "not ok - $1 # $2"
  failed=1
}
elapsed() { echo "$((SECONDS - $1)) s"; }

set +e
engine_pid=$(bash scripts/docker-engine.sh start)
status=$?
set -e
[ "$status" -eq 0 ] || exit "$status"
[ -z "$engine_pid" ] || echo "# started dockerd (pid $engine_pid); it is stopped at the end"
# Containers an interrupted run left behind (stopped with the engine, never removed).
stale=$($DOCKER ps -aq --filter name=pgvp-image-test- --filter status=exited)
[ -z "$stale" ] || $DOCKER rm $stale >/dev/null

t0=$SECONDS
if ! bash scripts/container-base.sh >"$work/base.log" 2>&1; then
  sed 's/^/# /' "$work/base.log"
  not_ok "the base image node:20-bookworm-slim" "neither pulled nor built (scripts/container-base.sh)"
  exit 1
fi
sed 's/^/# /' "$work/base.log"
echo "# base image: $(elapsed "$t0")"
t0=$SECONDS
# The classic builder: it needs no buildx plugin, and the Dockerfile keeps to what it supports.
if ! DOCKER_BUILDKIT=0 $DOCKER build --pull=false -t "$TAG" . >"$work/build.log" 2>&1; then
  tail -n 20 "$work/build.log" | sed 's/^/# /'
  not_ok "docker build --pull=false" "the build failed"
  exit 1
fi
ok "docker build --pull=false ($(elapsed "$t0"))"

free_port() { node -e 'const s = require("node:net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close() })'; }
proxy_port_a=$(free_port)
ops_port_a=$(free_port)
proxy_port_b=$(free_port)

# Owned by the image's user and readable by it alone, as a mounted secret would be.
config_dir() {
  local dir=$1 body=$2
  mkdir -p "$dir"
  printf '%s\n' "$IMAGE_TEST_PGPASSWORD" >"$dir/password"
  printf '%s\n' "$body" >"$dir/proxy.yaml"
  if [ "$(id -u)" -eq 0 ]; then
    chown -R 1000:1000 "$dir"
    chmod 0500 "$dir"
    chmod 0400 "$dir/password" "$dir/proxy.yaml"
  else
    chmod 0755 "$dir"
    chmod 0644 "$dir/password" "$dir/proxy.yaml"
  fi
}
common="owner_role: $IMAGE_TEST_OWNER_ROLE
upstream: { host: $IMAGE_TEST_PGHOST, port: $IMAGE_TEST_PGPORT, sslmode: disable }
log: { level: info, format: json }"
config_dir "$work/a" "listen: 127.0.0.1:$proxy_port_a
ops: { listen: 127.0.0.1:$ops_port_a }
$common
credentials: { static: { username: $IMAGE_TEST_PGUSER, password_file: /etc/pg-vault-proxy/password } }"
config_dir "$work/b" "listen: 127.0.0.1:$proxy_port_b
ops: { enabled: false }
$common
credentials: { static: { username: $IMAGE_TEST_PGUSER, password_file: /config/password } }"

run_container() {
  local name=$1
  shift
  containers+=("$name")
  $DOCKER run -d --name "$name" --network host --read-only --cap-drop ALL \
    --security-opt no-new-privileges "$@" "$TAG" >/dev/null
}
a=pgvp-image-test-a-$$
b=pgvp-image-test-b-$$
run_container "$a" -v "$work/a:/etc/pg-vault-proxy:ro"
run_container "$b" -v "$work/b:/config:ro" -e PGVP_CONFIG=/config/proxy.yaml

# The image's own HEALTHCHECK (10 s interval, 15 s start period) decides; nothing is overridden.
wait_healthy() {
  local name=$1 what=$2 t0=$SECONDS health=""
  while [ $((SECONDS - t0)) -lt 90 ]; do
    health=$($DOCKER inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$name")
    [ "$health" = healthy ] && break
    [ "$health" = unhealthy ] && break
    [ "$($DOCKER inspect -f '{{.State.Running}}' "$name")" = true ] || break
    sleep 1
  done
  if [ "$health" = healthy ]; then
    ok "HEALTHCHECK reaches healthy: $what ($(elapsed "$t0"))"
  else
    not_ok "HEALTHCHECK reaches healthy: $what" "status ${health:-none}; last probe: $($DOCKER inspect -f '{{with .State.Health}}{{range .Log}}{{.Output}}{{end}}{{end}}' "$name" | tail -n 3 | tr '\n' ' ')"
    $DOCKER logs "$name" 2>&1 | tail -n 5 | sed 's/^/# /'
  fi
}
wait_healthy "$a" "ops server on 127.0.0.1:$ops_port_a" >"$work/wait-a.out" &
wait_healthy "$b" "ops server off, configuration in /config (PGVP_CONFIG)" >"$work/wait-b.out" &
wait
cat "$work/wait-a.out" "$work/wait-b.out"
if grep -q '^not ok' "$work/wait-a.out" "$work/wait-b.out"; then failed=1; fi

who() {
  env -i PATH="$PATH" PGCONNECT_TIMEOUT=10 psql -X -At -F ' ' \
    "host=127.0.0.1 port=$1 dbname=$IMAGE_TEST_PGDATABASE user=anyone" \
    -c 'select current_user, session_user' 2>&1
}
for target in "$a:$proxy_port_a" "$b:$proxy_port_b"; do
  name=${target%:*}
  port=${target#*:}
  got=$(who "$port" || true)
  if [ "$got" = "$IMAGE_TEST_OWNER_ROLE $IMAGE_TEST_PGUSER" ]; then
    ok "psql through $name, without a password, acts as $IMAGE_TEST_OWNER_ROLE (logged in as $IMAGE_TEST_PGUSER)"
  else
    not_ok "psql through $name acts as $IMAGE_TEST_OWNER_ROLE" "got: $got"
  fi
done

# The process as the kernel sees it, from the host: real, effective, saved and file uid; capabilities.
pid=$($DOCKER inspect -f '{{.State.Pid}}' "$a")
uids=$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$pid/status")
caps=$(awk '/^CapEff:/ { print $2 }' "/proc/$pid/status")
nnp=$(awk '/^NoNewPrivs:/ { print $2 }' "/proc/$pid/status")
if [ "$uids" = "1000 1000 1000 1000" ] && [ "$caps" = 0000000000000000 ] && [ "$nnp" = 1 ]; then
  ok "the proxy runs as uid 1000, with no capabilities and no_new_privs"
else
  not_ok "the proxy runs as non-root without capabilities" "Uid: $uids, CapEff: $caps, NoNewPrivs: $nnp"
fi
# /tmp is writable by any user on a writable root: only --read-only can refuse this.
if $DOCKER exec "$a" sh -c 'echo x >/tmp/x' 2>/dev/null; then
  not_ok "the root filesystem is read-only" "writing /tmp/x succeeded"
else
  ok "the root filesystem is read-only"
fi

# SIGTERM drains: a statement running when the container is told to stop completes, and only then
# does the process exit. Started on a, and seen as an active session on a's ops server first.
statement_out="$work/statement.out"
(
  set +e
  env -i PATH="$PATH" PGCONNECT_TIMEOUT=10 psql -X -At \
    "host=127.0.0.1 port=$proxy_port_a dbname=$IMAGE_TEST_PGDATABASE user=anyone" \
    -c 'select 42 from pg_sleep(3)' >"$statement_out" 2>&1
  echo "psql exit $?" >>"$statement_out"
) &
statement=$!
active_sessions() {
  node -e 'fetch(process.argv[1]).then((r) => r.text()).then((t) => console.log(/^pg_vault_proxy_sessions_active (\d+)/m.exec(t)?.[1] ?? "?"), () => console.log("?"))' \
    "http://127.0.0.1:$ops_port_a/metrics"
}
active=?
for _ in $(seq 1 50); do
  active=$(active_sessions)
  [ "$active" = 1 ] && break
  sleep 0.2
done
echo "# sessions active on $a before the stop: $active"

for name in "$a" "$b"; do
  t0=$SECONDS
  $DOCKER stop -t "$STOP_TIMEOUT" "$name" >/dev/null
  code=$($DOCKER inspect -f '{{.State.ExitCode}}' "$name")
  if [ "$code" = 0 ]; then
    ok "docker stop -t $STOP_TIMEOUT $name: exit code 0 ($(elapsed "$t0"))"
  else
    not_ok "docker stop -t $STOP_TIMEOUT $name: exit code 0" "exit code $code; log: $($DOCKER logs "$name" 2>&1 | tail -n 3 | tr '\n' ' ')"
  fi
  if [ "$name" = "$a" ]; then
    # Read its outcome from the file, not from `wait` alone: the file is complete once the last
    # line is there.
    for _ in $(seq 1 150); do
      grep -q '^psql exit' "$statement_out" && break
      sleep 0.2
    done
    status=0
    wait "$statement" || status=$?
    echo "# the statement's psql ended (wait status $status)"
    # The result arrives and psql exits 0. The drain may then end the idle session with FATAL
    # 57P01 before psql has said goodbye; psql prints that on stderr (unbuffered, so it can come
    # before the buffered result line), and it changes nothing about the statement.
    if grep -qx 42 "$statement_out" && grep -qx 'psql exit 0' "$statement_out"; then
      ok "a statement running at docker stop completes before the container exits"
    else
      not_ok "a statement running at docker stop completes" "psql: $(tr '\n' ' ' <"$statement_out")"
    fi
  fi
  if $DOCKER logs "$name" 2>&1 | grep -qF "$IMAGE_TEST_PGPASSWORD"; then
    not_ok "the log of $name holds no password" "the password appears in it"
  else
    ok "the log of $name holds no password"
  fi
done

exit "$failed"
