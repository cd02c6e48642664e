import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import pg from 'pg'
import type { Logger } from 'pino'
import { parseConfig, type Config } from '../../src/config/load-config.js'
import { createLogger } from '../../src/ops/logger.js'
import { ProxyMetrics } from '../../src/ops/metrics.js'
import { createProxyServer, createRouteProfiles, listenersOf } from '../../src/proxy/create-proxy-server.js'
import { ProxyServer } from '../../src/proxy/proxy-server.js'
import type { CredentialSource } from '../../src/vault/credential-source.js'
import type { PgCluster } from './pg-cluster.js'

export interface RunningProxy {
  server: ProxyServer
  config: Config
  host: string
  port: number
  socketDir: string
  /** Every log line the proxy wrote, as parsed JSON (to assert on, e.g. that no secret appears). */
  logs: Array<Record<string, unknown>>
  /** The raw log text. */
  logText(): string
  /** One short session through the proxy: connect, ask who we are, disconnect. */
  whoAmI(): Promise<{ current: string; session: string }>
  /** A connected node-postgres client through the proxy (closed at teardown). */
  client(options?: pg.ClientConfig): Promise<pg.Client>
  stop(): Promise<void>
}

interface Teardown {
  teardown(fn: () => unknown): void
}

/**
 * Starts a proxy in this process in front of the test cluster, on a free port and a private socket
 * directory, logging into the scram user by default. `overrides` are merged into the raw config.
 * `prefetchCredentials: false` starts it cold: no credential until the first client asks.
 */
export async function startProxy(
  t: Teardown,
  cluster: PgCluster,
  overrides: Record<string, unknown> = {},
  options: { prefetchCredentials?: boolean } = {},
): Promise<RunningProxy> {
  const socketDir = await mkdtemp(join(tmpdir(), 'pgvp-sock-'))
  const passwordFile = join(socketDir, 'password')
  await writeFile(passwordFile, `${cluster.users.scram.password}\n`, { mode: 0o600 })
  const upstreamOverrides = (overrides.upstream ?? {}) as Record<string, unknown>
  const raw = {
    listen: '127.0.0.1:0',
    socket_dir: socketDir,
    owner_role: cluster.ownerRole,
    credentials: { static: { username: cluster.users.scram.user, password_file: passwordFile } },
    ...overrides,
    upstream: { host: cluster.host, port: cluster.port, sslmode: 'disable', ...upstreamOverrides },
  }
  return startProxyWith(t, raw, { ...options, database: cluster.database, socketDir })
}

/**
 * Starts a proxy in this process from a raw configuration, through the same composition as
 * `run` (parseConfig, then the route profiles). `credentials` replaces every route's credential
 * source with one the test drives (the configured one is never built); `socketDir` is removed at
 * the end; `database` is what the harness's clients ask for.
 */
export async function startProxyWith(
  t: Teardown,
  raw: Record<string, unknown>,
  options: {
    prefetchCredentials?: boolean
    credentials?: CredentialSource
    database?: string
    socketDir?: string
  } = {},
): Promise<RunningProxy> {
  const { socketDir = '', database } = options
  const config = parseConfig(raw)
  const logs: Array<Record<string, unknown>> = []
  let text = ''
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      text += chunk.toString()
      for (const line of chunk.toString().split('\n'))
        if (line.trim()) logs.push(JSON.parse(line) as Record<string, unknown>)
      done()
    },
  })
  const logger = createLogger('debug', sink)
  const server = options.credentials
    ? serverWith(config, logger, options.credentials)
    : createProxyServer(config, logger)
  await server.start(options)
  const clients: pg.Client[] = []
  let stopped = false
  const stop = async (): Promise<void> => {
    if (stopped) return
    stopped = true
    await Promise.all(clients.map((c) => c.end().catch(() => undefined)))
    await server.close()
    if (socketDir) await rm(socketDir, { recursive: true, force: true })
  }
  t.teardown(stop)
  return {
    server,
    config,
    host: '127.0.0.1',
    port: server.port,
    socketDir,
    logs,
    logText: () => text,
    async whoAmI() {
      const client = new pg.Client({ host: '127.0.0.1', port: server.port, user: 'app', database })
      client.on('error', () => {})
      await client.connect()
      try {
        const result = await client.query<{ current: string; session: string }>(
          'select current_user as current, session_user as session',
        )
        return result.rows[0]!
      } finally {
        await client.end()
      }
    },
    async client(options = {}) {
      const client = new pg.Client({
        host: '127.0.0.1',
        port: server.port,
        user: 'anyone',
        database,
        ...options,
      })
      client.on('error', () => {})
      await client.connect()
      clients.push(client)
      return client
    },
    stop,
  }
}

/** createProxyServer's composition, every route on `credentials` instead of its configured source. */
function serverWith(config: Config, logger: Logger, credentials: CredentialSource): ProxyServer {
  const metrics = new ProxyMetrics()
  const keep = new Map(config.routes.map((route) => [route.name, credentials]))
  return new ProxyServer({
    listeners: listenersOf(config),
    allowRemote: config.allow_remote,
    socketMode: parseInt(config.socket_mode, 8),
    routes: createRouteProfiles(config, logger, metrics, process.env, keep),
    maxStartupConnections: config.max_startup_connections,
    logger,
    metrics,
  })
}
