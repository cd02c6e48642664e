# pg-vault-proxy container image. Multi-stage:
#   deps      Node 20 with every dependency (npm ci): rebuilt only when the lock file changes.
#   build     deps plus the compiled dist/. docker-compose.yml's vault-init service targets this
#             stage: it has tsx and dev-vault/setup-database.ts, the script the tests run against
#             the dev Vault.
#   prod-deps deps' node_modules pruned to the runtime dependencies; a change to src/ leaves it cached.
#   runtime   (the default target) dist/, bin/, package.json and the production node_modules only,
#             running as the unprivileged `node` user (uid 1000), with a HEALTHCHECK.
#
#   docker build -t pg-vault-proxy .
#   docker run --rm -v "$PWD/proxy.yaml:/etc/pg-vault-proxy/proxy.yaml:ro" pg-vault-proxy
#
# Without a registry (air-gapped): bash scripts/container-base.sh, then docker build --pull=false.
# bash scripts/image-test.sh builds and runs the image as docs/deployment.md describes.
#
# Only plain Dockerfile syntax (no RUN --mount, no COPY --chmod), so the legacy builder works too.

FROM node:20-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund

FROM deps AS build
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build
# For the compose stack's vault-init service only; after the build, so editing it rebuilds nothing.
COPY dev-vault ./dev-vault

FROM deps AS prod-deps
RUN npm prune --omit=dev --no-audit --no-fund

FROM node:20-bookworm-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
# Owned by root and not writable by the proxy's user: the process cannot alter its own code.
COPY --from=prod-deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY bin ./bin
# The configuration is mounted here (a file, a ConfigMap, a volume); see docs/deployment.md.
# PGVP_CONFIG is what --config defaults to, for `run` and for the HEALTHCHECK alike: mount the file
# elsewhere and set PGVP_CONFIG, and both follow.
RUN mkdir -p /etc/pg-vault-proxy
ENV PGVP_CONFIG=/etc/pg-vault-proxy/proxy.yaml
# The image's `node` user, by number: Kubernetes can verify runAsNonRoot only for a numeric user.
USER 1000:1000
# 6432: PostgreSQL clients. 9187: the ops server (/livez, /readyz, /startupz, /metrics). Its default
# listen address, 127.0.0.1:9187, is enough for the HEALTHCHECK (it runs inside the container); set
# ops.listen to 0.0.0.0:9187 (and ops.allow_remote: true) only when something outside must reach it.
EXPOSE 6432 9187
# `healthcheck` reads the same configuration as the proxy: /readyz on whatever ops.listen says, or,
# with ops.enabled: false, the PostgreSQL handshake on each listener. It exits 0 or 1, as Docker wants.
# The timeout leaves room for Node's own start on a busy machine (the probe gives up after 2 s).
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
  CMD ["node", "/app/bin/pg-vault-proxy.js", "healthcheck"]
# node is PID 1: the proxy handles SIGTERM/SIGINT itself (drains, then revokes its leases) and starts
# no child processes, so no init process is needed.
# --max-semi-space-size=1: see bin/pg-vault-proxy.js (a smaller young generation; memory per idle client).
ENTRYPOINT ["node", "--max-semi-space-size=1", "/app/bin/pg-vault-proxy.js"]
CMD ["run"]
