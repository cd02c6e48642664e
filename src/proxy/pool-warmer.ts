import type { Logger } from 'pino'
import type { PoolMetrics } from '../ops/metrics.js'
import type { ServerConnection } from './server-connection.js'
import type { OpenServer, PoolTarget } from './server-pool.js'

/** Pool keys kept warm: the most recently used ones, so a client with ever new parameters cannot make the pool log in without end. */
export const MAX_WARM_KEYS = 8
/** Pre-warming that fails waits this long before the next try, doubling up to WARM_BACKOFF_MAX_MS. */
const WARM_BACKOFF_MIN_MS = 1_000
const WARM_BACKOFF_MAX_MS = 60_000

/** What the warmer needs from its pool (src/proxy/server-pool.ts). */
export interface WarmHost {
  readonly route: string
  /** Pooling on and the pool open. */
  enabled(): boolean
  readonly minIdle: number
  readonly idleTimeoutMs: number
  /** Idle connections of `key` now. */
  idleFor(key: string): number
  /** One more background login fits: under max_server_connections and, with `warming` more idle, max_idle; nobody waiting. */
  roomToWarm(warming: number): boolean
  /** A login slot is taken for pre-warming. */
  startOpening(): void
  /** That login ended: the pool keeps `login` idle, or closes it and says why; undefined login: it failed. */
  finishOpening(login: ServerConnection | undefined): string | undefined
}

interface WarmKey {
  target: PoolTarget
  usedAt: number
}

/**
 * pool.min_idle: keeps that many idle connections logged in, ahead of clients, for each of the
 * MAX_WARM_KEYS keys used most recently (pgbouncer's min_pool_size does the same for its pools,
 * https://www.pgbouncer.org/config.html). Logins run in the background through the route's
 * `open`, the same login a client's session makes; failures back off and are logged once per run.
 */
export class PoolWarmer {
  /** Least recently used first. */
  private readonly keys = new Map<string, WarmKey>()
  /** Logins under way, by key. */
  private readonly warming = new Map<string, number>()
  private warmingTotal = 0
  private failures = 0
  private retryAt = 0
  private timer: NodeJS.Timeout | undefined
  private scheduled = false
  private closed = false

  constructor(
    private readonly host: WarmHost,
    private readonly open: OpenServer,
    private readonly metrics: PoolMetrics,
    private readonly log: Logger,
  ) {}

  private get active(): boolean {
    return !this.closed && this.host.enabled() && this.host.minIdle > 0
  }

  /** A client asked for `target`: it becomes (or stays) the most recently used warm key. */
  touch(target: PoolTarget): void {
    if (!this.active) return
    this.keys.delete(target.key)
    this.keys.set(target.key, { target, usedAt: Date.now() })
    for (const key of this.keys.keys()) {
      if (this.keys.size <= MAX_WARM_KEYS) break
      this.keys.delete(key)
    }
  }

  /** How many idle connections of `key` the sweep must leave alone (past idle_timeout_ms). */
  spared(key: string): number {
    return this.keys.has(key) ? this.host.minIdle : 0
  }

  /** Keys unused for idle_timeout_ms are no longer kept warm (their idle connections then time out). */
  coolDown(now: number): void {
    for (const [key, warm] of this.keys) if (now - warm.usedAt >= this.host.idleTimeoutMs) this.keys.delete(key)
  }

  /** Something changed in the pool: top the warm keys up soon. */
  schedule(): void {
    if (this.scheduled || !this.active || this.keys.size === 0) return
    this.scheduled = true
    setImmediate(() => {
      this.scheduled = false
      this.warmUp()
    })
  }

  /**
   * The server closed an idle connection itself (idle_session_timeout, pg_terminate_backend, a
   * restart): a pause before it is replaced, so a server that closes every new connection is not
   * met with a login loop.
   */
  pause(): void {
    this.retryAt = Math.max(this.retryAt, Date.now() + WARM_BACKOFF_MIN_MS)
    this.retryAfter(WARM_BACKOFF_MIN_MS)
  }

  close(): void {
    this.closed = true
    clearTimeout(this.timer)
    this.keys.clear()
  }

  /** Opens connections until each warm key has min_idle idle ones, within the pool's limits. */
  private warmUp(): void {
    if (!this.active || Date.now() < this.retryAt) return
    this.coolDown(Date.now())
    for (const { target } of [...this.keys.values()].reverse()) {
      const have = this.host.idleFor(target.key) + (this.warming.get(target.key) ?? 0)
      for (let missing = this.host.minIdle - have; missing > 0 && this.host.roomToWarm(this.warmingTotal); missing--)
        this.openOne(target)
    }
  }

  private openOne(target: PoolTarget): void {
    const { key } = target
    this.host.startOpening()
    this.warmingTotal++
    this.warming.set(key, (this.warming.get(key) ?? 0) + 1)
    const done = (login: ServerConnection | undefined): string | undefined => {
      this.warmingTotal--
      const left = (this.warming.get(key) ?? 1) - 1
      if (left > 0) this.warming.set(key, left)
      else this.warming.delete(key)
      return this.host.finishOpening(login)
    }
    this.open(target).then(
      (login) => {
        const why = done(login)
        if (this.closed) return
        if (why && login.hold.superseded) {
          // A credential switch during the login: not a failure, warm again at once with the new credential.
          this.log.debug({ why }, 'a pre-warmed connection was not kept')
          this.schedule()
          return
        }
        if (why) {
          this.failed(new Error(`the new connection is not usable: ${why}`))
          return
        }
        this.metrics.poolPrewarmed(this.host.route, 'ok')
        if (this.failures > 0) this.log.info('pre-warming server connections works again')
        this.failures = 0
        this.log.debug({ upstreamPid: login.session.processId }, 'pre-warmed a server connection')
      },
      (err: unknown) => {
        if (!this.closed) this.failed(err)
        done(undefined)
      },
    )
  }

  /** Backs off, doubling; logs the first failure of a run only. */
  private failed(err: unknown): void {
    this.metrics.poolPrewarmed(this.host.route, 'failed')
    this.failures++
    const delay = Math.min(WARM_BACKOFF_MIN_MS * 2 ** (this.failures - 1), WARM_BACKOFF_MAX_MS)
    if (this.failures === 1)
      this.log.warn(
        { err: (err as Error).message },
        'pre-warming a server connection failed; retrying with backoff (logged once until it works again)',
      )
    this.retryAt = Date.now() + delay
    this.retryAfter(delay)
  }

  private retryAfter(delay: number): void {
    if (this.closed) return
    clearTimeout(this.timer)
    this.timer = setTimeout(() => this.schedule(), delay)
    this.timer.unref()
  }
}
