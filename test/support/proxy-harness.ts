import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import pg from 'pg'
import { parseConfig, type Config } from '../../src/config/load-config.js'
import { createLogger } from '../../src/ops/logger.js'
import { createProxyServer } from '../../src/proxy/create-proxy-server.js'
import type { ProxyServer } from '../../src/proxy/proxy-server.js'
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
  const server = createProxyServer(config, createLogger('debug', sink))
  await server.start(options)
  const clients: pg.Client[] = []
  let stopped = false
  const stop = async (): Promise<void> => {
    if (stopped) return
    stopped = true
    await Promise.all(clients.map((c) => c.end().catch(() => undefined)))
    await server.close()
    await rm(socketDir, { recursive: true, force: true })
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
      const client = new pg.Client({ host: '127.0.0.1', port: server.port, user: 'app', database: cluster.database })
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
        database: cluster.database,
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
