import type { Socket } from 'node:net'
import type { Logger } from 'pino'
import type { PoolMetrics } from '../ops/metrics.js'
import { FrontendCode } from '../pgwire/codes.js'
import type { StartupParameter } from '../pgwire/startup-packet.js'
import type { CredentialSource, DbCredential } from '../vault/credential-source.js'
import { ProxyError } from './proxy-error.js'
import type { ServerConnection } from './server-connection.js'
import { linkableName } from './linkable-parameters.js'
import { PoolWarmer, type WarmHost } from './pool-warmer.js'
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
  /** Server connections of the route, idle, linked and opening together, at most (pool.max_server_connections). */
  maxServerConnections: number
  /** How long a client waits for a server connection at that limit before it is refused (pool.wait_timeout_ms). */
  waitTimeoutMs: number
  /** Idle connections kept logged in for each recently used key (pool.min_idle). */
  minIdle: number
  /**
   * A pooled connection whose login role was last seen to exist longer ago than this is checked
   * again when it is linked (pool.server_check_delay_ms, as pgbouncer's server_check_delay).
   */
  serverCheckDelayMs: number
}

/** What a client is linked to: its pool key, and what a login for that key sends upstream. */
export interface PoolTarget {
  key: string
  database: string
  forwarded: readonly StartupParameter[]
}

/**
 * Logs in a new server connection for `target` exactly as a client's fresh login would (the
 * route's credential, held; the owner role as the `role` startup parameter). Injected by the
 * route's builder, so the pool knows nothing of client sessions.
 */
export type OpenServer = (target: PoolTarget) => Promise<ServerConnection>

export interface LinkOptions {
  /**
   * true: at the limit, wait in line (a new client). false: never wait, and count even beyond the
   * limit (a running session's move or reconnect: it replaces a connection it holds, and waiting
   * for a slot held by sessions that wait in turn could deadlock).
   */
  wait: boolean
  /**
   * Asked for only when the client must wait in line: a wait ends with the signal's reason when it
   * aborts (the client left, the proxy drains). Most clients never wait, and pay nothing for it.
   */
  signal?: (() => AbortSignal) | undefined
  /** Only a pooled connection logged in with this credential will do (a move to it). */
  credential?: DbCredential | undefined
}

export interface Linked {
  login: ServerConnection
  /** A pooled connection, not a fresh login. */
  reused: boolean
}

/** Server connections of a route by state, for /status and the metrics. */
export interface PoolCounts {
  idle: number
  linked: number
  opening: number
  /** Clients waiting for a connection at the limit. */
  waiting: number
  max: number
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

/** An idle connection in the pool, with the listener that takes it out if its socket closes. */
interface IdleServer {
  conn: ServerConnection
  onClose: () => void
}

interface Waiter {
  target: PoolTarget
  since: number
  /** A pooled connection, or undefined: a login slot is reserved for the waiter. */
  grant(login: ServerConnection | undefined): void
  fail(err: unknown): void
}

function asError(reason: unknown): Error {
  return reason instanceof Error ? reason : new Error(String(reason))
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
 *
 * The pool also counts every server connection of its route, idle, linked to a client, or opening
 * (logging in), and keeps them within max_server_connections: a client beyond it waits in line
 * (pgbouncer's cl_waiting, https://www.pgbouncer.org/usage.html#show-pools) and is refused with
 * 53300 after wait_timeout_ms. With min_idle it keeps connections logged in ahead of clients for the
 * keys used lately (pgbouncer's min_pool_size, https://www.pgbouncer.org/config.html).
 */
export class ServerPool {
  private readonly idle = new Map<string, IdleServer[]>()
  private idleCount = 0
  /** Every open server connection of the route that the pool counts: idle ones and those linked to a client. */
  private readonly members = new Set<ServerConnection>()
  /** Logins under way (clients' and pre-warming), each holding a slot. */
  private opening = 0
  private readonly waiters: Waiter[] = []
  /** pool.min_idle; none without an `open`. */
  private readonly warmer: PoolWarmer | undefined
  private pumping = false
  private sweepTimer: NodeJS.Timeout | undefined
  private closed = false

  constructor(
    readonly route: string,
    readonly settings: PoolSettings,
    private readonly credentials: CredentialSource,
    private readonly metrics: PoolMetrics,
    private readonly log: Logger,
    /** Logs in connections the pool opens itself (pre-warming); without it the pool never pre-warms. */
    open?: OpenServer,
  ) {
    this.warmer = open && new PoolWarmer(this.warmHost(), open, metrics, log)
  }

  get enabled(): boolean {
    return this.settings.mode === 'session' && !this.closed
  }

  get idleConnections(): number {
    return this.idleCount
  }

  get counts(): PoolCounts {
    return {
      idle: this.idleCount,
      linked: this.members.size - this.idleCount,
      opening: this.opening,
      waiting: this.waiters.length,
      max: this.settings.maxServerConnections,
    }
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

  /**
   * A server connection for a client: a pooled one for its key when one is ready, else one that
   * `login` opens, within max_server_connections. At the limit a new client waits in line (FIFO) for
   * a connection to come back or close, and after wait_timeout_ms is refused with 53300.
   */
  async link(target: PoolTarget, login: () => Promise<ServerConnection>, options: LinkOptions): Promise<Linked> {
    const linked = await this.linkOnce(target, login, options)
    // Kept warm from now on; not before, so pre-warming never competes with a key's first login
    // (for the server's connection slots, or for a role's CONNECTION LIMIT).
    this.warmer?.touch(target)
    this.warmer?.schedule()
    return linked
  }

  private async linkOnce(
    target: PoolTarget,
    login: () => Promise<ServerConnection>,
    options: LinkOptions,
  ): Promise<Linked> {
    const inLine = options.wait && this.waiters.length > 0
    const pooled = inLine ? undefined : this.takeIdle(target.key, options.credential)
    if (pooled) return { login: pooled, reused: true }
    if (inLine || !this.makeRoom()) {
      if (options.wait) {
        // Granted a pooled connection, or a login slot (already counted in `opening`).
        const granted = await this.waitInLine(target, options.signal?.())
        if (granted) return { login: granted, reused: true }
      } else this.opening++ // a move or reconnect: counted, beyond the limit if need be
    } else this.opening++
    let opened: ServerConnection
    try {
      opened = await login()
    } catch (err) {
      this.opening--
      this.changed()
      throw err
    }
    this.opening--
    this.track(opened)
    this.changed()
    return { login: opened, reused: false }
  }

  /**
   * The connection's client ended cleanly at an idle point: reset it and keep it for the next
   * client of its key, or close it. `parameters` are the ParameterStatus values as the client last
   * saw them. Resolves once the connection is pooled or closed; never rejects.
   */
  async give(login: ServerConnection, parameters: ReadonlyMap<string, string>): Promise<void> {
    guardErrors(login.session.socket)
    const why = this.closed
      ? 'the pool is closed'
      : (this.unusable(login) ?? (this.idleCount >= this.settings.maxIdle ? 'pool.max_idle reached' : undefined))
    if (why) {
      this.retire(login, why)
      return
    }
    const { session } = login
    login.enter('resetting')
    // Usually the very map the client's session kept current (its greeting's, the login's): updated
    // in place, as nobody else reads it once the session is over.
    const current = parameters === session.parameters ? session.parameters : new Map(parameters)
    try {
      await resetServer(session.socket, this.settings.resetQuery, RESET_TIMEOUT_MS, current)
    } catch (err) {
      this.metrics.poolReset(this.route, 'failed')
      this.retire(login, `the reset query failed: ${(err as Error).message}`)
      return
    }
    this.metrics.poolReset(this.route, 'ok')
    login.checkedAt = Date.now()
    if (this.closed || this.idleCount >= this.settings.maxIdle) {
      this.retire(login, this.closed ? 'the pool is closed' : 'pool.max_idle reached')
      return
    }
    session.parameters = current
    session.notices = []
    session.pending = Buffer.alloc(0)
    session.transactionStatus = 'I'
    // A fresh hold for the pool's stay: the client's hold goes, and with it the listeners its session
    // registered (a hold cannot unregister them), so nothing accumulates over a connection's reuses.
    const hold = this.credentials.use(login.credential)
    login.hold.release()
    login.hold = hold
    this.keep(login)
  }

  /**
   * Whether linking `conn` to a client must first check that its login role still exists: its last
   * check (at login, or with its reset) is older than pool.server_check_delay_ms.
   */
  needsCheck(conn: ServerConnection): boolean {
    return Date.now() - conn.checkedAt >= this.settings.serverCheckDelayMs
  }

  /** Closes every idle connection and stops pre-warming (shutdown, or a reload that replaced the route). */
  close(): void {
    this.closed = true
    clearInterval(this.sweepTimer)
    this.sweepTimer = undefined
    this.warmer?.close()
    for (const stack of [...this.idle.values()]) {
      for (const entry of [...stack]) this.evict(entry, 'the proxy is closing the pool')
    }
  }

  /** Puts a reset (or freshly pre-warmed) connection among the idle ones, and hands it to a waiting client if one fits. */
  private keep(conn: ServerConnection): void {
    const { session, hold, key } = conn
    conn.enter('idle')
    conn.idleSince = Date.now()
    conn.firstPooledAt ??= conn.idleSince
    const entry: IdleServer = {
      conn,
      onClose: () => {
        if (!this.remove(entry)) return
        hold.release()
        this.log.debug({ upstreamPid: session.processId }, 'a pooled server connection closed')
        // The server closed it: pre-warming pauses before it replaces it.
        this.warmer?.pause()
      },
    }
    // Superseded, or ending within the margin: the same test as at every take and sweep.
    hold.onChange(() => {
      const why = this.unusable(conn)
      if (why) this.evict(entry, why)
    })
    session.socket.on('close', entry.onClose)
    guardErrors(session.socket)
    const stack = this.idle.get(key) ?? []
    stack.push(entry)
    this.idle.set(key, stack)
    this.idleCount++
    this.ensureSweep()
    this.changed()
  }

  /** A reset, logged-in connection for `key` (and `credential`, if given), or undefined when none is ready. */
  private takeIdle(key: string, credential?: DbCredential): ServerConnection | undefined {
    if (!this.enabled) return undefined
    const stack = this.idle.get(key)
    for (let i = (stack?.length ?? 0) - 1; stack && i >= 0; i--) {
      const entry = stack[i] as IdleServer
      const { conn } = entry
      if (credential !== undefined && conn.credential !== credential) continue
      stack.splice(i, 1)
      this.forget(entry, stack)
      const why = this.unusable(conn)
      if (why) {
        this.retire(conn, why)
        continue
      }
      conn.enter('linked')
      this.metrics.poolReused(this.route)
      this.changed()
      return conn
    }
    return undefined
  }

  /** True when one more connection fits under the limit, after closing the longest idle one if it must. */
  private makeRoom(): boolean {
    if (this.members.size + this.opening < this.settings.maxServerConnections) return true
    let oldest: IdleServer | undefined
    for (const stack of this.idle.values()) {
      const bottom = stack[0]
      if (bottom && (!oldest || bottom.conn.idleSince < oldest.conn.idleSince)) oldest = bottom
    }
    if (!oldest) return false
    // pgbouncer does the same: an idle connection of another key gives way to a waiting client.
    this.evict(oldest, 'pool.max_server_connections reached and a client of another key needs the slot')
    return this.members.size + this.opening < this.settings.maxServerConnections
  }

  /** Waits for a pooled connection of the key, or for a login slot (reserved in `opening`), in FIFO order. */
  private waitInLine(target: PoolTarget, signal: AbortSignal | undefined): Promise<ServerConnection | undefined> {
    return new Promise((resolve, reject) => {
      const since = Date.now()
      const leave = (): void => {
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        const index = this.waiters.indexOf(waiter)
        if (index >= 0) this.waiters.splice(index, 1)
        this.metrics.poolWaited(this.route, (Date.now() - since) / 1000)
      }
      const waiter: Waiter = {
        target,
        since,
        grant: (login) => {
          leave()
          resolve(login)
        },
        fail: (err) => {
          leave()
          reject(asError(err))
        },
      }
      const onAbort = (): void => waiter.fail(signal?.reason)
      const timer = setTimeout(() => {
        this.metrics.poolWaitTimedOut(this.route)
        this.log.warn(
          { database: target.database, waitTimeoutMs: this.settings.waitTimeoutMs, ...this.counts },
          'a client waited pool.wait_timeout_ms for a server connection and was refused',
        )
        waiter.fail(serverLimitReached(this.route, this.settings, target))
      }, this.settings.waitTimeoutMs)
      if (signal?.aborted) {
        reject(asError(signal.reason))
        clearTimeout(timer)
        return
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      this.waiters.push(waiter)
      this.log.debug(
        { database: target.database, waiting: this.waiters.length },
        'a client waits for a server connection',
      )
      this.changed()
    })
  }

  /** Something freed or added a connection: serve the clients in line, then top up the warm keys. */
  private changed(): void {
    if (this.pumping) return
    this.pumping = true
    try {
      while (this.waiters.length > 0) {
        const head = this.waiters[0] as Waiter
        const pooled = this.takeIdle(head.target.key)
        if (pooled) {
          head.grant(pooled)
          continue
        }
        if (!this.makeRoom()) break
        this.opening++
        head.grant(undefined)
      }
    } finally {
      this.pumping = false
    }
    this.warmer?.schedule()
  }

  /** Counts a connection until it closes (or the pool retires it). */
  private track(conn: ServerConnection): void {
    if (this.members.has(conn)) return
    this.members.add(conn)
    const { socket } = conn.session
    guardErrors(socket)
    socket.once('close', () => {
      if (this.members.delete(conn)) this.changed()
    })
  }

  /** Why a connection must not be (re)used, or undefined. */
  private unusable(login: ServerConnection): string | undefined {
    const { session, hold } = login
    if (session.socket.destroyed || !session.socket.writable) return 'its socket is closed'
    // Anything the server said while pooled (a FATAL before it closes, a shutdown WARNING) is not for a new client.
    if (session.socket.readableLength > 0 || session.pending.length > 0)
      return 'the server sent something while it was pooled'
    if (hold.superseded) return 'its credential was superseded'
    if (hold.endsAt !== undefined && hold.endsAt - Date.now() < CREDENTIAL_END_MARGIN_MS)
      return 'its credential ends soon'
    const first = login.firstPooledAt
    if (first !== undefined && Date.now() - first >= this.settings.serverLifetimeMs)
      return 'pool.server_lifetime_ms reached'
    return undefined
  }

  private evict(entry: IdleServer, why: string): void {
    if (this.remove(entry)) this.retire(entry.conn, why)
  }

  /** Takes an entry out of the pool; false when it was not in it. */
  private remove(entry: IdleServer): boolean {
    const stack = this.idle.get(entry.conn.key)
    const index = stack?.indexOf(entry) ?? -1
    if (!stack || index < 0) return false
    stack.splice(index, 1)
    this.forget(entry, stack)
    return true
  }

  /** Takes an entry's bookkeeping off (it is no longer idle in the pool). */
  private forget(entry: IdleServer, stack: IdleServer[]): void {
    entry.conn.session.socket.off('close', entry.onClose)
    this.idleCount--
    if (stack.length === 0) this.idle.delete(entry.conn.key)
  }

  /**
   * Closes a connection politely and gives its credential back (which may revoke the lease). Its
   * slot is free at once: the backend ends on Terminate.
   */
  private retire(login: ServerConnection, why: string): void {
    this.metrics.poolClosed(this.route)
    this.log.debug({ upstreamPid: login.session.processId, why }, 'closing a server connection instead of pooling it')
    login.enter('closing')
    const { socket } = login.session
    guardErrors(socket)
    if (!socket.destroyed) socket.end(TERMINATE)
    // Not at once: released before the backend has gone, the last hold of a superseded lease would
    // have the revocation terminate it mid-exit (test/integration/pool-rotation.test.ts).
    releaseWhenClosed(socket, login.hold, RESET_TIMEOUT_MS)
    if (this.members.delete(login)) this.changed()
  }

  private ensureSweep(): void {
    if (this.sweepTimer || this.closed) return
    this.sweepTimer = setInterval(() => this.sweep(), SWEEP_INTERVAL_MS)
    this.sweepTimer.unref()
  }

  /**
   * Closes connections idle past idle_timeout_ms (except the min_idle newest of a warm key), past
   * their lifetime, or whose credential is ending.
   */
  private sweep(): void {
    const now = Date.now()
    this.warmer?.coolDown(now)
    for (const [key, stack] of [...this.idle]) {
      const spared = this.warmer?.spared(key) ?? 0
      stack.slice().forEach((entry, index) => {
        const timedOut = now - entry.conn.idleSince >= this.settings.idleTimeoutMs && index < stack.length - spared
        const why = timedOut ? 'pool.idle_timeout_ms reached' : this.unusable(entry.conn)
        if (why) this.evict(entry, why)
      })
    }
    if (this.idleCount === 0) {
      clearInterval(this.sweepTimer)
      this.sweepTimer = undefined
    }
  }

  /** The pool as its warmer sees it. */
  private warmHost(): WarmHost {
    return {
      route: this.route,
      enabled: () => this.enabled,
      minIdle: this.settings.minIdle,
      idleTimeoutMs: this.settings.idleTimeoutMs,
      idleFor: (key) => this.idle.get(key)?.length ?? 0,
      // Pre-warming never takes a slot a waiting client could use, nor goes past max_idle.
      roomToWarm: (warming) =>
        this.waiters.length === 0 &&
        this.members.size + this.opening < this.settings.maxServerConnections &&
        this.idleCount + warming < this.settings.maxIdle,
      startOpening: () => void this.opening++,
      finishOpening: (login) => {
        this.opening--
        if (!login) {
          this.changed()
          return undefined
        }
        this.track(login)
        const why = this.closed ? 'the pool is closed' : this.unusable(login)
        if (why) this.retire(login, why)
        else this.keep(login)
        return why
      },
    }
  }
}

/** The refusal for a client that waited wait_timeout_ms at max_server_connections. */
function serverLimitReached(route: string, settings: PoolSettings, target: PoolTarget): ProxyError {
  // The database and application_name say which clients compete; other startup values may be private.
  const app = target.forwarded.find(([name]) => name === 'application_name')?.[1]
  const who = `route "${route}", database "${target.database}"${app ? `, application_name "${app}"` : ''}`
  return new ProxyError('too_many_server_connections', {
    sqlState: '53300',
    message: `sorry, too many server connections: pg-vault-proxy pool.max_server_connections (${settings.maxServerConnections}) reached for ${who}, and none came free within pool.wait_timeout_ms (${settings.waitTimeoutMs} ms)`,
    hint: 'Retry shortly. If it keeps happening, close idle client sessions (each holds a server connection), or raise pool.max_server_connections (keeping the total under the server max_connections) or pool.wait_timeout_ms in the proxy configuration.',
  })
}
