import type { Socket } from 'node:net'
import type { Logger } from 'pino'
import type { PoolMetrics } from '../ops/metrics.js'
import { FrontendCode } from '../pgwire/codes.js'
import type { StartupParameter } from '../pgwire/startup-packet.js'
import type { CredentialSource } from '../vault/credential-source.js'
import type { UpstreamLogin } from './session-mover.js'
import { linkableName } from './linkable-parameters.js'
import { releaseWhenClosed } from './release-when-closed.js'
import { resetServer } from './server-reset.js'

export interface PoolSettings {
  /** session: a cleanly ended client's server connection is reset and handed to the next client; none: never. */
  mode: 'session' | 'none'
  /** Run on a connection before it goes back to the pool (pgbouncer's server_reset_query). */
  resetQuery: string
  /** Idle connections kept per route; one more is closed instead of pooled. */
  maxIdle: number
  /** An idle connection unused for this long is closed. */
  idleTimeoutMs: number
  /** A connection older than this (counted from its first return to the pool) is closed when it next goes idle. */
  serverLifetimeMs: number
}

/**
 * A pooled connection whose credential ends sooner than this is closed, not handed out. The same
 * margin a fresh login gets: the Vault source hands a credential to new sessions until at most 2 s
 * before its end (minRemainingMs in src/vault/dynamic-source.ts), and supersedes it before that
 * when it can, which closes its pooled connections anyway. A wider margin only made clients log in
 * afresh with that same credential, and pooled nothing at all for leases shorter than it
 * (test/integration/pool-rotation.test.ts).
 */
const CREDENTIAL_END_MARGIN_MS = 2_000
/** How long the reset query may take before the connection is closed instead of pooled. */
const RESET_TIMEOUT_MS = 5_000
const SWEEP_INTERVAL_MS = 1_000
const TERMINATE = Buffer.from([FrontendCode.Terminate, 0, 0, 0, 4])

interface IdleServer {
  key: string
  login: UpstreamLogin
  idleSince: number
  onClose: () => void
}

/** Nothing is read while pooled; an error (the server going away) only closes the socket. */
const ignoreError = (): void => undefined

/** Once per socket, and for good: a pooled connection passes through moments where nobody else listens. */
function guardErrors(socket: Socket): void {
  if (!socket.listeners('error').includes(ignoreError)) socket.on('error', ignoreError)
}

/**
 * Logged-in upstream connections kept between clients, as pgbouncer's session pooling does: when a
 * client ends cleanly at an idle point its connection is reset (`reset_query`, DISCARD ALL by
 * default: https://www.postgresql.org/docs/current/sql-discard.html) and kept, keyed by database
 * and the client's startup parameters, for the next client with the same key: no Vault call, no
 * authentication, no backend fork. A pooled connection keeps a hold on its credential, so its lease
 * is not revoked under it; connections whose credential was superseded are closed, never handed out.
 */
export class ServerPool {
  private readonly idle = new Map<string, IdleServer[]>()
  private idleCount = 0
  /** When each connection first came back to the pool, for server_lifetime_ms. */
  private readonly firstPooled = new WeakMap<UpstreamLogin['session'], number>()
  private sweepTimer: NodeJS.Timeout | undefined
  private closed = false

  constructor(
    readonly route: string,
    readonly settings: PoolSettings,
    private readonly credentials: CredentialSource,
    private readonly metrics: PoolMetrics,
    private readonly log: Logger,
  ) {}

  get enabled(): boolean {
    return this.settings.mode === 'session' && !this.closed
  }

  get idleConnections(): number {
    return this.idleCount
  }

  /**
   * What a client must share with a pooled connection's first client to be given it: the
   * database and every startup parameter the server saw (the proxy's own `user` and `role` are the
   * same for all clients of a route and credential), by name and value, except the linkable ones
   * (src/proxy/linkable-parameters.ts), which count by name only: the link sets their values
   * (src/proxy/server-link.ts). The name must still match. A startup value becomes the session's
   * reset value, and the pool's DISCARD ALL (RESET ALL) returns the connection to its first
   * client's values: a client that never sent `application_name` must not get a connection that
   * comes back to someone else's on reset, and one that sent it must not get one whose reset value
   * is the server's default, which the proxy cannot know to set.
   */
  static key(database: string, forwarded: readonly StartupParameter[]): string {
    const linked = new Set<string>()
    const parts: string[] = []
    for (const [name, value] of forwarded) {
      const reported = linkableName(name)
      if (reported === undefined) parts.push(`${name}\0${value}`)
      else linked.add(`${reported}\0\x01`)
    }
    return [database, ...[...parts, ...linked].sort()].join('\0\0')
  }

  /** A client's session logs in upstream afresh (no pooled connection fit, or pooling is off). */
  countLogin(): void {
    this.metrics.upstreamLogin(this.route)
  }

  /** A reset, logged-in connection for `key`, or undefined when none is ready (the caller logs in). */
  take(key: string): UpstreamLogin | undefined {
    const stack = this.idle.get(key)
    while (stack && stack.length > 0) {
      const entry = stack.pop() as IdleServer
      this.forget(entry, stack)
      const why = this.unusable(entry.login)
      if (why) {
        this.retire(entry.login, why)
        continue
      }
      this.metrics.poolReused(this.route)
      return entry.login
    }
    return undefined
  }

  /**
   * The connection's client ended cleanly at an idle point: reset it and keep it for the next
   * client, or close it. `parameters` are the ParameterStatus values as the client last saw them.
   * Resolves once the connection is pooled or closed; never rejects.
   */
  async give(key: string, login: UpstreamLogin, parameters: ReadonlyMap<string, string>): Promise<void> {
    guardErrors(login.session.socket)
    const why = this.closed
      ? 'the pool is closed'
      : (this.unusable(login) ?? (this.idleCount >= this.settings.maxIdle ? 'pool.max_idle reached' : undefined))
    if (why) {
      this.retire(login, why)
      return
    }
    const { session } = login
    let changed: Map<string, string>
    try {
      changed = await resetServer(session.socket, this.settings.resetQuery, RESET_TIMEOUT_MS)
    } catch (err) {
      this.metrics.poolReset(this.route, 'failed')
      this.retire(login, `the reset query failed: ${(err as Error).message}`)
      return
    }
    this.metrics.poolReset(this.route, 'ok')
    if (this.closed || this.idleCount >= this.settings.maxIdle) {
      this.retire(login, this.closed ? 'the pool is closed' : 'pool.max_idle reached')
      return
    }
    session.parameters = new Map([...parameters, ...changed])
    session.notices = []
    session.pending = Buffer.alloc(0)
    session.transactionStatus = 'I'
    if (!this.firstPooled.has(session)) this.firstPooled.set(session, Date.now())
    // A fresh hold for the pool's stay: the client's hold goes, and with it the listeners its session
    // registered (a hold cannot unregister them), so nothing accumulates over a connection's reuses.
    const hold = this.credentials.use(login.credential)
    login.hold.release()
    const pooled: UpstreamLogin = { ...login, hold }
    const entry: IdleServer = {
      key,
      login: pooled,
      idleSince: Date.now(),
      onClose: () => {
        if (!this.remove(entry)) return
        pooled.hold.release()
        this.log.debug({ upstreamPid: session.processId }, 'a pooled server connection closed')
      },
    }
    hold.onChange(() => {
      if (hold.superseded) this.evict(entry, 'its credential was superseded')
    })
    session.socket.on('close', entry.onClose)
    guardErrors(session.socket)
    const stack = this.idle.get(key) ?? []
    stack.push(entry)
    this.idle.set(key, stack)
    this.idleCount++
    this.ensureSweep()
  }

  /** Closes every idle connection (shutdown, or a reload that replaced the route). */
  close(): void {
    this.closed = true
    clearInterval(this.sweepTimer)
    this.sweepTimer = undefined
    for (const stack of [...this.idle.values()]) {
      for (const entry of [...stack]) this.evict(entry, 'the proxy is closing the pool')
    }
  }

  /** Why a connection must not be (re)used, or undefined. */
  private unusable(login: UpstreamLogin): string | undefined {
    const { session, hold } = login
    if (session.socket.destroyed || !session.socket.writable) return 'its socket is closed'
    // Anything the server said while pooled (a FATAL before it closes, a shutdown WARNING) is not for a new client.
    if (session.socket.readableLength > 0) return 'the server sent something while it was pooled'
    if (hold.superseded) return 'its credential was superseded'
    if (hold.endsAt !== undefined && hold.endsAt - Date.now() < CREDENTIAL_END_MARGIN_MS)
      return 'its credential ends soon'
    const first = this.firstPooled.get(session)
    if (first !== undefined && Date.now() - first >= this.settings.serverLifetimeMs)
      return 'pool.server_lifetime_ms reached'
    return undefined
  }

  private evict(entry: IdleServer, why: string): void {
    if (this.remove(entry)) this.retire(entry.login, why)
  }

  /** Takes an entry out of the pool; false when it was not in it. */
  private remove(entry: IdleServer): boolean {
    const stack = this.idle.get(entry.key)
    const index = stack?.indexOf(entry) ?? -1
    if (!stack || index < 0) return false
    stack.splice(index, 1)
    this.forget(entry, stack)
    return true
  }

  /** Takes an entry's bookkeeping off (it is no longer idle in the pool). */
  private forget(entry: IdleServer, stack: IdleServer[]): void {
    entry.login.session.socket.off('close', entry.onClose)
    this.idleCount--
    if (stack.length === 0) this.idle.delete(entry.key)
  }

  /** Closes a connection politely and gives its credential back (which may revoke the lease). */
  private retire(login: UpstreamLogin, why: string): void {
    this.metrics.poolClosed(this.route)
    this.log.debug({ upstreamPid: login.session.processId, why }, 'closing a server connection instead of pooling it')
    const { socket } = login.session
    guardErrors(socket)
    if (!socket.destroyed) socket.end(TERMINATE)
    // Not at once: released before the backend has gone, the last hold of a superseded lease would
    // have the revocation terminate it mid-exit (test/integration/pool-rotation.test.ts).
    releaseWhenClosed(socket, login.hold, RESET_TIMEOUT_MS)
  }

  private ensureSweep(): void {
    if (this.sweepTimer) return
    this.sweepTimer = setInterval(() => this.sweep(), SWEEP_INTERVAL_MS)
    this.sweepTimer.unref()
  }

  /** Closes connections idle past idle_timeout_ms, past their lifetime, or whose credential is ending. */
  private sweep(): void {
    const now = Date.now()
    for (const stack of [...this.idle.values()]) {
      for (const entry of [...stack]) {
        const why =
          now - entry.idleSince >= this.settings.idleTimeoutMs
            ? 'pool.idle_timeout_ms reached'
            : this.unusable(entry.login)
        if (why) this.evict(entry, why)
      }
    }
    if (this.idleCount === 0) {
      clearInterval(this.sweepTimer)
      this.sweepTimer = undefined
    }
  }
}
