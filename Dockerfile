# pg-vault-proxy container image. Multi-stage:
#   build     Node 20 with every dependency and the compiled dist/. docker-compose.yml's vault-init
#             service targets this stage: it has tsx and dev-vault/setup-database.ts, the script the
#             tests run against the dev Vault.
#   prod-deps the build stage's node_modules pruned to the runtime dependencies.
#   runtime   (the default target) dist/, bin/, package.json and the production node_modules only,
#             running as the unprivileged `node` user (uid 1000), with a HEALTHCHECK.
#
#   docker build -t pg-vault-proxy .
#   docker run --rm -v "$PWD/proxy.yaml:/etc/pg-vault-proxy/proxy.yaml:ro" pg-vault-proxy
#
# Only plain Dockerfile syntax (no RUN --mount, no COPY --chmod), so the legacy builder works too.

FROM node:20-bookworm-slim AS build
WORKDIR /app
# Dependencies first: this layer is rebuilt only when the lock file changes.
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build
# For the compose stack's vault-init service only; after the build, so editing it rebuilds nothing.
COPY dev-vault ./dev-vault

FROM build AS prod-deps
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
RUN mkdir -p /etc/pg-vault-proxy
# The image's `node` user, by number: Kubernetes can verify runAsNonRoot only for a numeric user.
USER 1000:1000
# 6432: PostgreSQL clients. 9187: the ops server (/livez, /readyz, /startupz). Its default listen
# address is 127.0.0.1:9187, which is enough for the HEALTHCHECK below (it runs inside the
# container); set ops.listen to 0.0.0.0:9187 (and ops.allow_remote: true) only when something
# outside the container must reach it.
EXPOSE 6432 9187
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9187/readyz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# node is PID 1: the proxy handles SIGTERM/SIGINT itself (drains, then revokes its leases) and starts
# no child processes, so no init process is needed.
ENTRYPOINT ["node", "/app/bin/pg-vault-proxy.js"]
CMD ["run", "--config", "/etc/pg-vault-proxy/proxy.yaml"]
