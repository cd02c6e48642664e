import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client'

/** What the credential sources record. */
export interface CredentialMetrics {
  /** A credential different from the last one came into use (a lease issued, a changed secret or password file). */
  credentialIssued(source: string): void
  /** New sessions moved to a different credential than the one before. */
  credentialSwapped(source: string): void
  leaseRenewal(outcome: 'renewed' | 'failed'): void
  leaseRevocation(outcome: 'revoked' | 'failed'): void
}

/** What the Vault client records: every HTTP request, by Vault path. */
export interface VaultRequestMetrics {
  /** `failure` is the VaultFailure of a failed request, undefined for a success. */
  vaultRequest(path: string, seconds: number, failure?: string): void
}

export type CancelOutcome = 'forwarded' | 'not_busy' | 'unknown_key' | 'failed'

/** What client sessions record. */
export interface SessionMetrics {
  sessionStarted(): void
  /** A relayed session ended; its byte counts join the totals (live sessions are read at scrape time). */
  sessionEnded(reason: string, bytes: RelayedBytes): void
  /** A client refused before the relay; `reason` is the ProxyError reason. */
  sessionRefused(reason: string): void
  cancelRequest(outcome: CancelOutcome): void
  /** A session moved to a new upstream connection (docs/rotation.md), or tried to. */
  sessionMoved(kind: MoveKind, outcome: MoveOutcome): void
}

/** What the server-connection pools record (src/proxy/server-pool.ts), by route. */
export interface PoolMetrics {
  /** A client got a pooled connection: no Vault call, no upstream login. */
  poolReused(route: string): void
  /** A client's session logged in upstream afresh. */
  upstreamLogin(route: string): void
  /** A reset query ran on a connection whose client left cleanly. */
  poolReset(route: string, outcome: 'ok' | 'failed'): void
  /** A connection was closed instead of pooled or reused (reset failed, credential superseded, limits). */
  poolClosed(route: string): void
  /** A client waited in line at pool.max_server_connections, for this long, whatever the outcome. */
  poolWaited(route: string, seconds: number): void
  /** A client waited pool.wait_timeout_ms in vain and was refused. */
  poolWaitTimedOut(route: string): void
  /** The pool logged in a connection ahead of clients (pool.min_idle), or failed to. */
  poolPrewarmed(route: string, outcome: 'ok' | 'failed'): void
}

/** A route's server connections by state (src/proxy/server-pool.ts), read at scrape time. */
export interface PoolGauges {
  route: string
  idle: number
  linked: number
  opening: number
  waiting: number
}

/** swap: planned, to a fresh credential; reconnect: after the upstream went away. */
export type MoveKind = 'swap' | 'reconnect'
/**
 * moved; blocked: the session held state that cannot move (temp tables, ...); failed: the new
 * connection or the state replay failed; declined: the upstream was lost while the session was busy;
 * closed: the session was still on its credential at the end (blocked, or busy in strict mode) and was closed.
 */
export type MoveOutcome = 'moved' | 'blocked' | 'failed' | 'declined' | 'closed'

/** Bytes a session relayed in each direction. */
export interface RelayedBytes {
  bytesFromClient: number
  bytesFromUpstream: number
}

/** Gauges read when scraped, from whoever owns the state. */
export interface MetricsState {
  activeSessions(): number
  /** Bytes relayed so far by the sessions still relaying (ended ones are in the totals already). */
  liveBytes(): RelayedBytes
  clientConnections(): number
  ready(): boolean
  /** When the credential new sessions get stops being valid (epoch ms), if it expires. */
  credentialExpiresAt(): number | undefined
  /** Server connections of each route's pool, by state. */
  pools?(): PoolGauges[]
}

/** For parts built without metrics (tests that construct a source directly). */
export const noMetrics: CredentialMetrics & VaultRequestMetrics & SessionMetrics & PoolMetrics = {
  credentialIssued: () => undefined,
  credentialSwapped: () => undefined,
  leaseRenewal: () => undefined,
  leaseRevocation: () => undefined,
  vaultRequest: () => undefined,
  sessionStarted: () => undefined,
  sessionEnded: () => undefined,
  sessionRefused: () => undefined,
  cancelRequest: () => undefined,
  sessionMoved: () => undefined,
  poolReused: () => undefined,
  upstreamLogin: () => undefined,
  poolReset: () => undefined,
  poolClosed: () => undefined,
  poolWaited: () => undefined,
  poolWaitTimedOut: () => undefined,
  poolPrewarmed: () => undefined,
}

const PREFIX = 'pg_vault_proxy_'

/**
 * The proxy's Prometheus metrics, in a registry of its own (not prom-client's global one), so
 * several proxies in one process keep separate counts. Parts record through the narrow interfaces
 * above; gauges of current state are read from `MetricsState` at scrape time.
 */
export class ProxyMetrics implements CredentialMetrics, VaultRequestMetrics, SessionMetrics, PoolMetrics {
  readonly registry = new Registry()
  private state: MetricsState | undefined

  private readonly sessionsTotal: Counter
  private readonly sessionEnds: Counter<'reason'>
  private readonly sessionFailures: Counter<'reason'>
  private readonly moves: Counter<'kind' | 'outcome'>
  private readonly cancels: Counter<'outcome'>
  private readonly issued: Counter<'source'>
  private readonly swaps: Counter<'source'>
  private readonly renewals: Counter<'outcome'>
  private readonly revocations: Counter<'outcome'>
  private readonly vaultDuration: Histogram<'path'>
  private readonly vaultErrors: Counter<'path' | 'failure'>
  private readonly reloads: Counter<'outcome'>
  private readonly poolReuses: Counter<'route'>
  private readonly upstreamLogins: Counter<'route'>
  private readonly poolResets: Counter<'route' | 'outcome'>
  private readonly poolCloses: Counter<'route'>
  private readonly poolWait: Histogram<'route'>
  private readonly poolWaitTimeouts: Counter<'route'>
  private readonly poolPrewarms: Counter<'route' | 'outcome'>
  /** Bytes of the sessions that ended; live sessions' bytes are added at scrape time. */
  private readonly endedBytes: RelayedBytes = { bytesFromClient: 0, bytesFromUpstream: 0 }

  constructor(options: { processMetrics?: boolean } = {}) {
    const registers = [this.registry]
    if (options.processMetrics) collectDefaultMetrics({ register: this.registry })
    const state = (): MetricsState | undefined => this.state
    this.gauge('sessions_active', 'Client sessions currently relaying to the upstream.', () =>
      state()?.activeSessions(),
    )
    this.gauge(
      'client_connections',
      'Client connections open, in any phase (what max_client_connections limits).',
      () => state()?.clientConnections(),
    )
    this.gauge('ready', '1 when /readyz answers 200: listening, a valid credential at hand, not shutting down.', () =>
      state()?.ready() ? 1 : 0,
    )
    this.gauge(
      'credential_ttl_seconds',
      'Seconds until the credential new sessions get expires; absent for credentials without an expiry.',
      () => {
        const expiresAt = state()?.credentialExpiresAt()
        return expiresAt === undefined ? undefined : Math.max(0, (expiresAt - Date.now()) / 1000)
      },
    )
    this.sessionsTotal = new Counter({
      name: `${PREFIX}sessions_total`,
      help: 'Client sessions that logged in upstream and started relaying.',
      registers,
    })
    this.sessionEnds = new Counter({
      name: `${PREFIX}session_ends_total`,
      help: 'Relayed sessions that ended, by how they ended.',
      labelNames: ['reason'],
      registers,
    })
    this.sessionFailures = new Counter({
      name: `${PREFIX}session_failures_total`,
      help: 'Clients refused before the relay (FATAL at startup), by reason.',
      labelNames: ['reason'],
      registers,
    })
    // Read at scrape time rather than counted per chunk: the relay counts bytes anyway, and a
    // labelled prom-client increment for every chunk was half of the relay's own CPU time.
    const ended = this.endedBytes
    const bytes = new Counter({
      name: `${PREFIX}bytes_total`,
      help: 'Bytes relayed, by direction.',
      labelNames: ['direction'],
      registers,
      collect: () => {
        const live = state()?.liveBytes() ?? { bytesFromClient: 0, bytesFromUpstream: 0 }
        bytes.reset()
        bytes.inc({ direction: 'client_to_upstream' }, ended.bytesFromClient + live.bytesFromClient)
        bytes.inc({ direction: 'upstream_to_client' }, ended.bytesFromUpstream + live.bytesFromUpstream)
      },
    })
    this.cancels = new Counter({
      name: `${PREFIX}cancel_requests_total`,
      help: 'CancelRequests received, by outcome.',
      labelNames: ['outcome'],
      registers,
    })
    this.issued = new Counter({
      name: `${PREFIX}credentials_issued_total`,
      help: 'Distinct credentials obtained: Vault leases issued, changed secrets or password files read.',
      labelNames: ['source'],
      registers,
    })
    this.swaps = new Counter({
      name: `${PREFIX}credential_swaps_total`,
      help: 'Times new sessions moved to a different credential (a new lease, a rotated password).',
      labelNames: ['source'],
      registers,
    })
    this.renewals = new Counter({
      name: `${PREFIX}lease_renewals_total`,
      help: 'Vault lease renewals, by outcome.',
      labelNames: ['outcome'],
      registers,
    })
    this.revocations = new Counter({
      name: `${PREFIX}lease_revocations_total`,
      help: 'Vault lease revocations, by outcome.',
      labelNames: ['outcome'],
      registers,
    })
    this.vaultDuration = new Histogram({
      name: `${PREFIX}vault_request_duration_seconds`,
      help: 'Vault HTTP requests, successful or not, by Vault path.',
      labelNames: ['path'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    })
    this.vaultErrors = new Counter({
      name: `${PREFIX}vault_request_errors_total`,
      help: 'Failed Vault HTTP requests, by Vault path and failure kind.',
      labelNames: ['path', 'failure'],
      registers,
    })
    this.moves = new Counter({
      name: `${PREFIX}session_moves_total`,
      help: 'Sessions moved to a new upstream connection: planned swaps to a fresh credential and reconnects after upstream loss, by outcome.',
      labelNames: ['kind', 'outcome'],
      registers,
    })
    this.reloads = new Counter({
      name: `${PREFIX}config_reloads_total`,
      help: 'Configuration reloads (SIGHUP), by outcome.',
      labelNames: ['outcome'],
      registers,
    })
    const poolGauge = (name: string, help: string, read: (pool: PoolGauges) => number): void => {
      const gauge: Gauge<'route'> = new Gauge({
        name: `${PREFIX}${name}`,
        help,
        labelNames: ['route'],
        registers,
        collect: () => {
          gauge.reset()
          for (const pool of state()?.pools?.() ?? []) gauge.set({ route: pool.route }, read(pool))
        },
      })
    }
    poolGauge(
      'pool_idle_connections',
      'Logged-in server connections waiting in the pool for a client, by route.',
      (p) => p.idle,
    )
    poolGauge(
      'pool_linked_connections',
      'Server connections in use by a client session (a moving session counts both of its connections), by route.',
      (p) => p.linked,
    )
    poolGauge(
      'pool_opening_connections',
      'Server connections logging in (for a client, or pre-warming), by route.',
      (p) => p.opening,
    )
    poolGauge(
      'pool_waiting_clients',
      'Clients waiting for a server connection at pool.max_server_connections, by route.',
      (p) => p.waiting,
    )
    this.poolReuses = new Counter({
      name: `${PREFIX}pool_reuses_total`,
      help: 'Client sessions given a pooled server connection (no Vault call, no upstream login), by route.',
      labelNames: ['route'],
      registers,
    })
    this.upstreamLogins = new Counter({
      name: `${PREFIX}upstream_logins_total`,
      help: 'Client sessions that logged in upstream afresh, by route.',
      labelNames: ['route'],
      registers,
    })
    this.poolResets = new Counter({
      name: `${PREFIX}pool_resets_total`,
      help: 'Reset queries run on server connections whose client ended cleanly, by route and outcome.',
      labelNames: ['route', 'outcome'],
      registers,
    })
    this.poolWait = new Histogram({
      name: `${PREFIX}pool_wait_seconds`,
      help: 'Time clients waited in line for a server connection at pool.max_server_connections, whatever the outcome, by route.',
      labelNames: ['route'],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    })
    this.poolWaitTimeouts = new Counter({
      name: `${PREFIX}pool_wait_timeouts_total`,
      help: 'Clients refused (53300) after waiting pool.wait_timeout_ms for a server connection, by route.',
      labelNames: ['route'],
      registers,
    })
    this.poolPrewarms = new Counter({
      name: `${PREFIX}pool_prewarms_total`,
      help: 'Server connections the pool logged in ahead of clients (pool.min_idle), by route and outcome.',
      labelNames: ['route', 'outcome'],
      registers,
    })
    this.poolCloses = new Counter({
      name: `${PREFIX}pool_closed_connections_total`,
      help: 'Server connections closed instead of pooled or reused (reset failed, credential superseded or ending, limits), by route.',
      labelNames: ['route'],
      registers,
    })
  }

  /** A gauge read at scrape time; absent while `read` gives undefined. */
  private gauge(name: string, help: string, read: () => number | undefined): void {
    const gauge: Gauge = new Gauge({
      name: `${PREFIX}${name}`,
      help,
      registers: [this.registry],
      collect: () => {
        gauge.reset()
        const value = read()
        if (value !== undefined) gauge.set(value)
      },
    })
  }

  /** Connects the scrape-time gauges to the state they report. */
  observe(state: MetricsState): void {
    this.state = state
  }

  sessionStarted(): void {
    this.sessionsTotal.inc()
  }

  sessionEnded(reason: string, bytes: RelayedBytes): void {
    this.sessionEnds.inc({ reason })
    this.endedBytes.bytesFromClient += bytes.bytesFromClient
    this.endedBytes.bytesFromUpstream += bytes.bytesFromUpstream
  }

  sessionRefused(reason: string): void {
    this.sessionFailures.inc({ reason })
  }

  cancelRequest(outcome: CancelOutcome): void {
    this.cancels.inc({ outcome })
  }

  sessionMoved(kind: MoveKind, outcome: MoveOutcome): void {
    this.moves.inc({ kind, outcome })
  }

  credentialIssued(source: string): void {
    this.issued.inc({ source })
  }

  credentialSwapped(source: string): void {
    this.swaps.inc({ source })
  }

  leaseRenewal(outcome: 'renewed' | 'failed'): void {
    this.renewals.inc({ outcome })
  }

  leaseRevocation(outcome: 'revoked' | 'failed'): void {
    this.revocations.inc({ outcome })
  }

  vaultRequest(path: string, seconds: number, failure?: string): void {
    this.vaultDuration.observe({ path }, seconds)
    if (failure !== undefined) this.vaultErrors.inc({ path, failure })
  }

  poolReused(route: string): void {
    this.poolReuses.inc({ route })
  }

  upstreamLogin(route: string): void {
    this.upstreamLogins.inc({ route })
  }

  poolReset(route: string, outcome: 'ok' | 'failed'): void {
    this.poolResets.inc({ route, outcome })
  }

  poolClosed(route: string): void {
    this.poolCloses.inc({ route })
  }

  poolWaited(route: string, seconds: number): void {
    this.poolWait.observe({ route }, seconds)
  }

  poolWaitTimedOut(route: string): void {
    this.poolWaitTimeouts.inc({ route })
  }

  poolPrewarmed(route: string, outcome: 'ok' | 'failed'): void {
    this.poolPrewarms.inc({ route, outcome })
  }

  configReload(outcome: 'applied' | 'refused'): void {
    this.reloads.inc({ outcome })
  }
}
