import { unlink } from 'node:fs/promises'
import { createServer, type Server, type Socket } from 'node:net'
import type { Logger } from 'pino'
import { Health } from '../ops/health.js'
import { ProxyMetrics, type RelayedBytes } from '../ops/metrics.js'
import { CredentialPrefetch } from '../vault/credential-prefetch.js'
import type { CredentialSource, CredentialStatus } from '../vault/credential-source.js'
import { CancelRegistry } from './cancel-registry.js'
import { ClientSession, shuttingDown, type SessionSettings } from './client-session.js'
import { isLoopbackHost } from './loopback.js'
import { ProxyError } from './proxy-error.js'
import { StartupSlots } from './startup-slots.js'
import { listenUnixSocket, prepareSocketDir } from './unix-socket.js'
import type { PoolCounts, ServerPool } from './server-pool.js'
import type { UpstreamConnector } from './upstream-connector.js'

/** A route built without a pool (tests that build profiles by hand): nothing counted, no limit. */
const NO_POOL: PoolCounts = { idle: 0, linked: 0, opening: 0, waiting: 0, max: 0 }

/** Idle time before the first TCP keepalive probe on a client connection. */
export const CLIENT_KEEPALIVE_DELAY_MS = 60_000

/**
 * Everything a new session is built from, swapped as a whole by a configuration reload: sessions
 * keep the profile they started with, new ones get the current one.
 */
export interface SessionProfile {
  settings: SessionSettings
  connector: UpstreamConnector
  credentials: CredentialSource
  maxClientConnections: number
}

/** A route: a profile, the listener it is reached on, and the client user names it serves. */
export interface RouteProfile extends SessionProfile {
  name: string
  /** undefined: every user no other route on the same listener claims. */
  users: ReadonlySet<string> | undefined
  /** `host:port` of its TCP listener (see ListenerSpec.key). */
  listener: string
  /** Logged-in server connections kept between this route's clients; none without pooling. */
  pool?: ServerPool | undefined
}

export interface ListenerSpec {
  listen: { host: string; port: number }
  /** A directory for the Unix socket `.s.PGSQL.<port>`, as libpq expects. */
  socketDir?: string | undefined
}

export function listenerKey(listen: { host: string; port: number }): string {
  return `${listen.host}:${listen.port}`
}

export interface ProxyServerOptions {
  listeners: ListenerSpec[]
  allowRemote: boolean
  socketMode: number
  routes: RouteProfile[]
  /** Connections that have not sent their startup packet yet, at most (max_startup_connections). */
  maxStartupConnections: number
  logger: Logger
  /** The parts built for this server record into the same registry (see createProxyServer). */
  metrics?: ProxyMetrics | undefined
}

/** What /status shows. Nothing secret: no password, token or cancel key. */
export interface ProxyStatus {
  phase: string
  ready: boolean
  checks: Array<{ name: string; ok: boolean; detail: string }>
  listen: { tcp: string; unix: string | undefined }
  route: string
  routes: Array<{
    name: string
    users: string[] | undefined
    listen: string
    ownerRole: string
    upstream: string
    credentialsReady: boolean
    /**
     * Server connections: the pool mode; how many wait, logged in, for a client (idle), serve one
     * (linked), are logging in (opening); clients waiting at the limit; the limit (max).
     */
    pool: { mode: 'session' | 'none' } & PoolCounts
  }>
  ownerRole: string
  upstream: { address: string; database: string | undefined; sslmode: string }
  sessions: {
    active: number
    connections: number
    maxClientConnections: number
    /** Connections that have not sent their startup packet yet, and their limit. */
    starting: number
    maxStartupConnections: number
  }
  credentials: {
    ready: boolean
    user: string | undefined
    leaseId: string | undefined
    expiresAt: string | undefined
    ttlSeconds: number | undefined
    detail: string
  }
  configuration: { generation: number; appliedAt: string }
}

/**
 * The listener: accepts clients on TCP and the Unix socket and runs a ClientSession for each, on
 * the current SessionProfile. It owns the lifecycle: start, drain, close, and profile swaps.
 */
export class ProxyServer {
  readonly cancels = new CancelRegistry()
  private readonly startupSlots: StartupSlots
  readonly health: Health
  readonly metrics: ProxyMetrics
  private readonly servers: Server[] = []
  /** Every open client connection, and the route it runs on once chosen. */
  private readonly sessions = new Map<ClientSession, RouteProfile | undefined>()
  private routes: RouteProfile[]
  /** Sources of earlier profiles, closed (their leases revoked) once their last session ends. */
  private readonly retiring = new Set<CredentialSource>()
  private prefetches: CredentialPrefetch[] = []
  private prefetching = false
  private nextSessionId = 1
  private readonly socketPaths: string[] = []
  private draining: Promise<void> | undefined
  private closing: Promise<void> | undefined
  private readonly emptyWaiters: Array<() => void> = []
  private generation = 1
  private appliedAt = new Date()
  /** The TCP port actually bound by the first listener (differs from the configured one when that is 0). */
  port = 0
  /** Every listener's bound port, by its configured `host:port`. */
  readonly ports = new Map<string, number>()

  constructor(private readonly options: ProxyServerOptions) {
    for (const { listen } of options.listeners) {
      if (!options.allowRemote && !isLoopbackHost(listen.host)) {
        // Anyone who reaches the port acts as the owner role: exposing it must be a decision.
        throw new Error(
          `listen: refusing to listen on ${listen.host}, which is not a loopback address; anyone who can reach it would act as the owner role. Set allow_remote: true if that is intended.`,
        )
      }
    }
    this.routes = options.routes
    this.startupSlots = new StartupSlots(options.maxStartupConnections)
    this.metrics = options.metrics ?? new ProxyMetrics()
    this.health = new Health(() => combinedStatus(this.routes.map((r) => r.credentials.status())))
    this.metrics.observe({
      activeSessions: () => this.activeSessions,
      liveBytes: () => this.liveBytes(),
      clientConnections: () => this.sessions.size,
      ready: () => this.health.readiness().ready,
      credentialExpiresAt: () => combinedStatus(this.routes.map((r) => r.credentials.status())).expiresAt,
      pools: () => this.routes.flatMap((r) => (r.pool ? [{ route: r.name, ...r.pool.counts }] : [])),
    })
  }

  /** The first route's profile (the only one without `routes`). */
  private get profile(): RouteProfile {
    return this.routes[0] as RouteProfile
  }

  /**
   * Binds the listeners, then fetches a credential in the background (`prefetchCredentials`,
   * default true) so readiness does not wait for a first client.
   */
  async start(options: { prefetchCredentials?: boolean } = {}): Promise<void> {
    const { listeners, socketMode, logger } = this.options
    for (const spec of listeners) {
      const key = listenerKey(spec.listen)
      const tcp = this.createServer(key)
      await listenOn(tcp, { host: spec.listen.host, port: spec.listen.port })
      const address = tcp.address()
      const port = typeof address === 'object' && address ? address.port : spec.listen.port
      if (this.ports.size === 0) this.port = port
      this.ports.set(key, port)
      this.servers.push(tcp)
      logger.info({ address: `${spec.listen.host}:${port}` }, 'listening on TCP')
      if (spec.socketDir) {
        await prepareSocketDir(spec.socketDir, socketMode, logger)
        const path = `${spec.socketDir}/.s.PGSQL.${port}`
        const unix = this.createServer(key)
        await listenUnixSocket(unix, path, socketMode)
        this.socketPaths.push(path)
        this.servers.push(unix)
        logger.info({ path }, 'listening on Unix socket')
      }
    }
    this.health.markRunning()
    this.prefetching = options.prefetchCredentials ?? true
    this.startPrefetch()
  }

  /**
   * New sessions use `profile` from now on; open sessions keep theirs. A credential source no
   * longer current is closed (its leases revoked) when its last session ends.
   */
  reconfigure(routes: RouteProfile[]): void {
    if (this.draining || this.closing) throw new Error('the proxy is shutting down')
    const previous = this.routes
    this.routes = routes
    this.generation++
    this.appliedAt = new Date()
    const kept = new Set(routes.map((r) => r.credentials))
    const dropped = previous.map((r) => r.credentials).filter((c) => !kept.has(c))
    if (dropped.length > 0 || routes.some((r) => !previous.some((p) => p.credentials === r.credentials)))
      this.startPrefetch()
    // Connections pooled under the old profile are closed: new clients log in under the new one.
    for (const route of previous) if (!routes.includes(route)) route.pool?.close()
    for (const source of new Set(dropped)) this.retire(source)
  }

  /** What new sessions are built from now, route by route. */
  get currentRoutes(): readonly RouteProfile[] {
    return this.routes
  }

  /**
   * Graceful shutdown: readiness turns false and new clients are refused (57P03) while the
   * listeners stay up for CancelRequests; each session ends at its next idle point; those still
   * busy after `graceMs` are ended with 57P01; then everything is closed.
   */
  drain(graceMs: number): Promise<void> {
    this.draining ??= this.drainSessions(graceMs)
    return this.draining
  }

  /** Stops at once: ends every session (FATAL 57P01 to those relaying), closes the listeners and credentials. */
  close(): Promise<void> {
    this.closing ??= this.closeAll()
    return this.closing
  }

  /** What new sessions are built from now. */
  get currentProfile(): SessionProfile {
    return this.profile
  }

  /** Sessions relaying now (connections still in their handshake or login not counted). */
  get activeSessions(): number {
    let n = 0
    for (const session of this.sessions.keys()) if (session.isRelaying) n++
    return n
  }

  /** Bytes relayed so far by the sessions still relaying. */
  private liveBytes(): RelayedBytes {
    const sum = { bytesFromClient: 0, bytesFromUpstream: 0 }
    for (const session of this.sessions.keys()) {
      const bytes = session.liveBytes
      if (!bytes) continue
      sum.bytesFromClient += bytes.bytesFromClient
      sum.bytesFromUpstream += bytes.bytesFromUpstream
    }
    return sum
  }

  status(): ProxyStatus {
    const { settings, connector, credentials, maxClientConnections } = this.profile
    const readiness = this.health.readiness()
    const credential = credentials.status()
    return {
      phase: this.health.phase,
      ready: readiness.ready,
      checks: readiness.checks,
      listen: { tcp: `${this.options.listeners[0]?.listen.host}:${this.port}`, unix: this.socketPaths[0] },
      route: this.profile.name,
      routes: this.routes.map((r) => ({
        name: r.name,
        users: r.users ? [...r.users] : undefined,
        listen: r.listener,
        ownerRole: r.settings.ownerRole,
        upstream: r.connector.endpoint.address,
        credentialsReady: r.credentials.status().ready,
        pool: { mode: r.pool?.settings.mode ?? 'none', ...(r.pool?.counts ?? NO_POOL) },
      })),
      ownerRole: settings.ownerRole,
      upstream: {
        address: connector.endpoint.address,
        database: settings.database,
        sslmode: connector.endpoint.sslmode,
      },
      sessions: {
        active: this.activeSessions,
        connections: this.sessions.size,
        maxClientConnections,
        starting: this.startupSlots.inUse,
        maxStartupConnections: this.startupSlots.limit,
      },
      credentials: {
        ready: credential.ready,
        user: credential.user,
        leaseId: credential.leaseId,
        expiresAt: credential.expiresAt === undefined ? undefined : new Date(credential.expiresAt).toISOString(),
        ttlSeconds:
          credential.expiresAt === undefined
            ? undefined
            : Math.max(0, Math.round((credential.expiresAt - Date.now()) / 1000)),
        detail: credential.detail,
      },
      configuration: { generation: this.generation, appliedAt: this.appliedAt.toISOString() },
    }
  }

  private async drainSessions(graceMs: number): Promise<void> {
    const { logger } = this.options
    this.health.markDraining()
    for (const prefetch of this.prefetches) prefetch.stop()
    logger.info({ sessions: this.sessions.size, graceMs }, 'draining: no new sessions; open ones end when idle')
    for (const session of this.sessions.keys()) session.drain()
    // No client will take an idle connection now (new ones are refused): close them, and stop pre-warming.
    for (const route of this.routes) route.pool?.close()
    let timer: NodeJS.Timeout | undefined
    const graceOver = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), graceMs)))
    const allEnded = await Promise.race([this.sessionsEnded().then(() => true), graceOver])
    clearTimeout(timer)
    if (!allEnded)
      logger.warn({ sessions: this.sessions.size }, 'shutdown grace period over; ending the sessions still busy')
    await this.close()
  }

  private async closeAll(): Promise<void> {
    const { logger } = this.options
    this.health.markDraining()
    for (const prefetch of this.prefetches) prefetch.stop()
    const closing = this.servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve())))
    for (const session of this.sessions.keys()) session.stop()
    // Before the sources close: a pooled connection holds its credential, and its lease is revoked after.
    for (const route of this.routes) route.pool?.close()
    await Promise.all(closing)
    for (const path of this.socketPaths) await unlink(path).catch(() => undefined)
    const sources = new Set([...this.routes.map((r) => r.credentials), ...this.retiring])
    await Promise.all(
      [...sources].map((source) =>
        source.close().catch((err: Error) => logger.warn({ err: err.message }, 'error closing a credential source')),
      ),
    )
    this.health.markStopped()
  }

  private sessionsEnded(): Promise<void> {
    if (this.sessions.size === 0) return Promise.resolve()
    return new Promise((resolve) => this.emptyWaiters.push(resolve))
  }

  private startPrefetch(): void {
    for (const prefetch of this.prefetches) prefetch.stop()
    this.prefetches = []
    if (!this.prefetching || this.draining || this.closing) return
    for (const source of new Set(this.routes.map((r) => r.credentials))) {
      this.prefetches.push(new CredentialPrefetch(source, this.options.logger).start())
    }
  }

  private retire(source: CredentialSource): void {
    if ([...this.sessions.values()].some((p) => p?.credentials === source)) {
      this.retiring.add(source)
      return
    }
    this.retiring.delete(source)
    void source
      .close()
      .catch((err: Error) => this.options.logger.warn({ err: err.message }, 'error closing a credential source'))
  }

  /** Who may start a session now; the server's view, as the session cannot see the others. */
  private admission(route: RouteProfile): ProxyError | undefined {
    if (this.draining || this.closing) return shuttingDown()
    let onRoute = 0
    for (const r of this.sessions.values()) if (r?.name === route.name) onRoute++
    if (onRoute > route.maxClientConnections) {
      return new ProxyError('too_many_clients', {
        sqlState: '53300',
        message: 'sorry, too many clients already (pg-vault-proxy max_client_connections reached)',
        hint: 'Raise max_client_connections in the proxy configuration, or close idle connections.',
      })
    }
    return undefined
  }

  private createServer(listener: string): Server {
    const server = createServer({ noDelay: true }, (socket) => this.accept(socket, listener))
    // After listen, errors are failed accepts (EMFILE, ENFILE): the listener keeps running, and an
    // unhandled 'error' would end the process.
    server.on('error', (err: NodeJS.ErrnoException) => {
      if (server.listening) this.options.logger.error({ err: err.code ?? err.message, listener }, 'accept failed')
    })
    return server
  }

  /**
   * The route for a client user on a listener: the route that names the user, else the one that
   * takes every user. Chosen from the routes current when the startup packet arrives.
   */
  private chooseRoute(listener: string, clientUser: string): RouteProfile | ProxyError {
    const here = this.routes.filter((r) => r.listener === listener)
    const route = here.find((r) => r.users?.has(clientUser)) ?? here.find((r) => r.users === undefined)
    if (route) return route
    // The user names routed here are for the operator's eyes only: a client that may not connect
    // should not learn which names would let it (docs/security.md, "What the proxy grants").
    this.options.logger.warn(
      { listener, clientUser, routedUsers: here.flatMap((r) => [...(r.users ?? [])]) },
      'no route for the client user on this listener',
    )
    return new ProxyError('no_route', {
      sqlState: '28000',
      message: `pg-vault-proxy has no route for user "${clientUser}" on this listener`,
      hint: 'Connect with a user name that a route on this listener serves (routes[].users in the proxy configuration), or add a route without users.',
    })
  }

  private accept(socket: Socket, listener: string): void {
    const { logger } = this.options
    socket.setNoDelay(true)
    // A client host that vanishes (no FIN, no RST) is found by the kernel instead of holding its
    // session forever. Loopback and Unix sockets need it less; a remote listener does.
    socket.setKeepAlive(true, CLIENT_KEEPALIVE_DELAY_MS)
    const releaseSlot = this.startupSlots.take()
    if (!releaseSlot) {
      this.metrics.sessionRefused('too_many_startups')
      if (this.startupSlots.refuse(socket))
        logger.warn(
          { maxStartupConnections: this.startupSlots.limit, client: socket.remoteAddress ?? 'unix' },
          'max_startup_connections reached: refusing new connections until clients finish their startup or time out',
        )
      return
    }
    const session: ClientSession = new ClientSession(
      socket,
      {
        // The current profile's, so that a reload of startup_timeout_ms applies to new connections.
        startupTimeoutMs: this.profile.settings.startupTimeoutMs,
        route: (clientUser) => {
          // The startup packet is read: from here max_client_connections counts the session.
          releaseSlot()
          const route = this.chooseRoute(listener, clientUser)
          if (route instanceof ProxyError) return route
          this.sessions.set(session, route)
          return { ...route, admit: () => this.admission(route) }
        },
        cancels: this.cancels,
        logger,
        metrics: this.metrics,
      },
      this.nextSessionId++,
    )
    this.sessions.set(session, undefined)
    session
      .run()
      .catch((err: unknown) => logger.error({ err }, 'session crashed'))
      .finally(() => {
        releaseSlot()
        this.ended(session)
      })
  }

  private ended(session: ClientSession): void {
    const route = this.sessions.get(session)
    this.sessions.delete(session)
    if (route && this.retiring.has(route.credentials)) this.retire(route.credentials)
    if (this.sessions.size === 0) for (const resolve of this.emptyWaiters.splice(0)) resolve()
  }
}

async function listenOn(server: Server, options: { host: string; port: number }): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(options, () => {
      server.off('error', reject)
      resolve()
    })
  })
}

/** All routes' credential states as one: ready when every route has a credential; the earliest expiry. */
function combinedStatus(statuses: CredentialStatus[]): CredentialStatus {
  if (statuses.length === 1) return statuses[0] as CredentialStatus
  const expiries = statuses.map((s) => s.expiresAt).filter((e): e is number => e !== undefined)
  return {
    ready: statuses.every((s) => s.ready),
    expiresAt: expiries.length > 0 ? Math.min(...expiries) : undefined,
    detail: statuses.map((s) => s.detail).join('; '),
  }
}
