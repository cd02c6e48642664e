import { chmod, mkdir, unlink } from 'node:fs/promises'
import { connect, createServer, type Server, type Socket } from 'node:net'
import type { Logger } from 'pino'
import { Health } from '../ops/health.js'
import { ProxyMetrics } from '../ops/metrics.js'
import { CredentialPrefetch } from '../vault/credential-prefetch.js'
import type { CredentialSource } from '../vault/credential-source.js'
import { CancelRegistry } from './cancel-registry.js'
import { ClientSession, SessionPhase, shuttingDown, type SessionSettings } from './client-session.js'
import { isLoopbackHost } from './loopback.js'
import { ProxyError } from './proxy-error.js'
import type { UpstreamConnector } from './upstream-connector.js'

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

export interface ProxyServerOptions {
  listen: { host: string; port: number }
  allowRemote: boolean
  /** A directory for the Unix socket `.s.PGSQL.<port>`, as libpq expects. */
  socketDir?: string | undefined
  socketMode: number
  profile: SessionProfile
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
  ownerRole: string
  upstream: { address: string; database: string | undefined; sslmode: string }
  sessions: { active: number; connections: number; maxClientConnections: number }
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
  readonly health: Health
  readonly metrics: ProxyMetrics
  private readonly servers: Server[] = []
  /** Every open client connection, and the profile it runs on. */
  private readonly sessions = new Map<ClientSession, SessionProfile>()
  private profile: SessionProfile
  /** Sources of earlier profiles, closed (their leases revoked) once their last session ends. */
  private readonly retiring = new Set<CredentialSource>()
  private prefetch: CredentialPrefetch | undefined
  private prefetching = false
  private nextSessionId = 1
  private socketPath: string | undefined
  private draining: Promise<void> | undefined
  private closing: Promise<void> | undefined
  private readonly emptyWaiters: Array<() => void> = []
  private generation = 1
  private appliedAt = new Date()
  /** The TCP port actually bound (differs from the configured one when that is 0). */
  port = 0

  constructor(private readonly options: ProxyServerOptions) {
    const { host } = options.listen
    if (!options.allowRemote && !isLoopbackHost(host)) {
      // Anyone who reaches the port acts as the owner role: exposing it must be a decision.
      throw new Error(
        `listen: refusing to listen on ${host}, which is not a loopback address; anyone who can reach it would act as the owner role. Set allow_remote: true if that is intended.`,
      )
    }
    this.profile = options.profile
    this.metrics = options.metrics ?? new ProxyMetrics()
    this.health = new Health(() => this.profile.credentials.status())
    this.metrics.observe({
      activeSessions: () => this.activeSessions,
      clientConnections: () => this.sessions.size,
      ready: () => this.health.readiness().ready,
      credentialExpiresAt: () => this.profile.credentials.status().expiresAt,
    })
  }

  /**
   * Binds the listeners, then fetches a credential in the background (`prefetchCredentials`,
   * default true) so readiness does not wait for a first client.
   */
  async start(options: { prefetchCredentials?: boolean } = {}): Promise<void> {
    const { listen, socketDir, socketMode, logger } = this.options
    const tcp = this.createServer()
    await listenOn(tcp, { host: listen.host, port: listen.port })
    const address = tcp.address()
    this.port = typeof address === 'object' && address ? address.port : listen.port
    this.servers.push(tcp)
    logger.info({ address: `${listen.host}:${this.port}` }, 'listening on TCP')
    if (socketDir) {
      await mkdir(socketDir, { recursive: true })
      const path = `${socketDir}/.s.PGSQL.${this.port}`
      await removeStaleSocket(path)
      const unix = this.createServer()
      await listenOn(unix, { path })
      await chmod(path, socketMode)
      this.socketPath = path
      this.servers.push(unix)
      logger.info({ path }, 'listening on Unix socket')
    }
    this.health.markRunning()
    this.prefetching = options.prefetchCredentials ?? true
    this.startPrefetch()
  }

  /**
   * New sessions use `profile` from now on; open sessions keep theirs. A credential source no
   * longer current is closed (its leases revoked) when its last session ends.
   */
  reconfigure(profile: SessionProfile): void {
    if (this.draining || this.closing) throw new Error('the proxy is shutting down')
    const previous = this.profile
    this.profile = profile
    this.generation++
    this.appliedAt = new Date()
    if (previous.credentials !== profile.credentials) {
      this.startPrefetch()
      this.retire(previous.credentials)
    }
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
    for (const session of this.sessions.keys()) if (session.phase === SessionPhase.Relay) n++
    return n
  }

  status(): ProxyStatus {
    const { settings, connector, credentials, maxClientConnections } = this.profile
    const readiness = this.health.readiness()
    const credential = credentials.status()
    return {
      phase: this.health.phase,
      ready: readiness.ready,
      checks: readiness.checks,
      listen: { tcp: `${this.options.listen.host}:${this.port}`, unix: this.socketPath },
      route: 'default',
      ownerRole: settings.ownerRole,
      upstream: {
        address: connector.endpoint.address,
        database: settings.database,
        sslmode: connector.endpoint.sslmode,
      },
      sessions: { active: this.activeSessions, connections: this.sessions.size, maxClientConnections },
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
    this.prefetch?.stop()
    logger.info({ sessions: this.sessions.size, graceMs }, 'draining: no new sessions; open ones end when idle')
    for (const session of this.sessions.keys()) session.drain()
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
    this.prefetch?.stop()
    const closing = this.servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve())))
    for (const session of this.sessions.keys()) session.stop()
    await Promise.all(closing)
    if (this.socketPath) await unlink(this.socketPath).catch(() => undefined)
    const sources = new Set([this.profile.credentials, ...this.retiring])
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
    this.prefetch?.stop()
    this.prefetch = undefined
    if (!this.prefetching || this.draining || this.closing) return
    this.prefetch = new CredentialPrefetch(this.profile.credentials, this.options.logger).start()
  }

  private retire(source: CredentialSource): void {
    if ([...this.sessions.values()].some((p) => p.credentials === source)) {
      this.retiring.add(source)
      return
    }
    this.retiring.delete(source)
    void source
      .close()
      .catch((err: Error) => this.options.logger.warn({ err: err.message }, 'error closing a credential source'))
  }

  /** Who may start a session now; the server's view, as the session cannot see the others. */
  private admission(profile: SessionProfile): ProxyError | undefined {
    if (this.draining || this.closing) return shuttingDown()
    if (this.sessions.size > profile.maxClientConnections) {
      return new ProxyError('too_many_clients', {
        sqlState: '53300',
        message: 'sorry, too many clients already (pg-vault-proxy max_client_connections reached)',
        hint: 'Raise max_client_connections in the proxy configuration, or close idle connections.',
      })
    }
    return undefined
  }

  private createServer(): Server {
    return createServer({ noDelay: true }, (socket) => this.accept(socket))
  }

  private accept(socket: Socket): void {
    const { logger } = this.options
    const profile = this.profile
    const { settings, connector, credentials } = profile
    socket.setNoDelay(true)
    const session = new ClientSession(
      socket,
      {
        settings,
        connector,
        credentials,
        cancels: this.cancels,
        logger,
        metrics: this.metrics,
        admit: () => this.admission(profile),
      },
      this.nextSessionId++,
    )
    this.sessions.set(session, profile)
    session
      .run()
      .catch((err: unknown) => logger.error({ err }, 'session crashed'))
      .finally(() => this.ended(session, profile))
  }

  private ended(session: ClientSession, profile: SessionProfile): void {
    this.sessions.delete(session)
    if (this.retiring.has(profile.credentials)) this.retire(profile.credentials)
    if (this.sessions.size === 0) for (const resolve of this.emptyWaiters.splice(0)) resolve()
  }
}

async function listenOn(server: Server, options: { host: string; port: number } | { path: string }): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(options, () => {
      server.off('error', reject)
      resolve()
    })
  })
}

/** A socket file left by a crashed proxy blocks listen; one that still answers belongs to a live process. */
async function removeStaleSocket(path: string): Promise<void> {
  const alive = await new Promise<boolean>((resolve) => {
    const probe = connect({ path })
    probe.once('connect', () => {
      probe.destroy()
      resolve(true)
    })
    probe.once('error', () => resolve(false))
  })
  if (alive) throw new Error(`socket_dir: ${path} is in use by another process`)
  await unlink(path).catch(() => undefined)
}
