import type { Socket } from 'node:net'
import type { Logger } from 'pino'
import type { RelayedBytes, SessionMetrics } from '../ops/metrics.js'
import { SessionLog } from '../ops/session-log.js'
import { encodeErrorResponse, encodeGreeting, encodeNegotiateProtocolVersion } from '../pgwire/backend-messages.js'
import { FrontendCode } from '../pgwire/codes.js'
import { ConnectionClosedError, FramingError } from '../pgwire/message-reader.js'
import { StartupPacketError, type StartupParameter } from '../pgwire/startup-packet.js'
import type { CredentialHold, CredentialSource, DbCredential } from '../vault/credential-source.js'
import type { CancelRegistry } from './cancel-registry.js'
import { readClientGreeting, startupRefusal } from './client-handshake.js'
import { watchDeparture } from './client-departure.js'
import { ProxyError } from './proxy-error.js'
import { Relay } from './relay.js'
import { SessionBoundary } from './session-boundary.js'
import { idleTimeoutFarewell, internalErrorFarewell, shutdownFarewell, violationFarewell } from './session-farewell.js'
import { linkRefusedError, linkServer } from './server-link.js'
import { ServerPool, type Linked, type LinkOptions, type PoolTarget } from './server-pool.js'
import { MovePlan, type PlanHost, type RotationSettings } from './move-plan.js'
import { SessionMover } from './session-mover.js'
import { ServerConnection } from './server-connection.js'
import { isMoving, SessionPhase, transition, type SessionEventKind } from './session-phase.js'
import { SessionState } from './session-state.js'
import { splitClientStartup, type ClientStartup } from './startup-parameters.js'
import { TransactionTracker } from './transaction-tracker.js'
import { answerUpstreamClosed, answerUpstreamNotice, type LossDecision, type UpstreamLoss } from './upstream-loss.js'
import type { UpstreamConnector } from './upstream-connector.js'
import { refusedCredential, upstreamStartupParameters } from './upstream-login.js'

export interface SessionSettings {
  ownerRole: string
  /** upstream.database; the client's database when unset. */
  database: string | undefined
  startupTimeoutMs: number
  /** idle_client_timeout_ms: unset means never. */
  idleClientTimeoutMs: number | undefined
  rotation: RotationSettings
}

/** Where a session goes: the route chosen for its client user. */
export interface SessionRoute {
  name: string
  settings: SessionSettings
  connector: UpstreamConnector
  credentials: CredentialSource
  /** Logged-in server connections kept between clients, if the route pools them. */
  pool?: ServerPool | undefined
  /** Why this client may not have a session now (too many clients, shutting down), or undefined. */
  admit(): ProxyError | undefined
}

/** What every session shares, handed in by the proxy server. */
export interface SessionContext {
  startupTimeoutMs: number
  /** The route for a client user name on this listener, or why there is none. */
  route(clientUser: string): SessionRoute | ProxyError
  cancels: CancelRegistry
  metrics: SessionMetrics
  logger: Logger
}
const TERMINATE = Buffer.from([FrontendCode.Terminate, 0, 0, 0, 4])

/** What happens to a session; the dispatcher switches on the kind, then on the phase. */
export type SessionEvent =
  | { kind: 'upstream_lost'; loss: UpstreamLoss }
  | { kind: 'credential_changed' | 'credential_ending'; hold: CredentialHold }
  | { kind: Exclude<SessionEventKind, 'upstream_lost' | 'credential_changed' | 'credential_ending'> }

/** What an event is answered with: the relay asks about a lost upstream and a client's Terminate. */
type Answer<E extends SessionEvent> = E extends { kind: 'upstream_lost' }
  ? LossDecision
  : E extends { kind: 'client_terminate' }
    ? boolean
    : void

/**
 * One client connection, start to end: read its startup packet, log in upstream with a credential
 * from the CredentialSource and the owner role as the `role` startup parameter, greet the client
 * only once the upstream is ready, then relay. Any failure before the relay becomes one FATAL
 * ErrorResponse for this client alone.
 */
export class ClientSession {
  /** Changed only by `dispatch`, as src/proxy/session-phase.ts allows. */
  private current: SessionPhase = SessionPhase.Handshake
  private relay: Relay | undefined
  /** The steps of a move, and the connection serving the session (its credential, its upstream for cancels). */
  private mover: SessionMover | undefined
  /** When the session moves: driven by this dispatcher (idle points, a lost upstream, the credential's news). */
  private plan: MovePlan | undefined
  private readonly startedAt = Date.now()
  private readonly log: SessionLog
  /** Known once read, for the audit line. */
  private startup: ClientStartup | undefined
  private credential: DbCredential | undefined
  /**
   * Shutdown asked this session to end at its next idle point. Not a phase: a probe or move under
   * way finishes first, and its end (move_ended) then leads to draining.
   */
  private shutdownRequested = false
  /** Chosen by client user name once the startup packet is read. */
  private route: SessionRoute | undefined
  private idleTimer: NodeJS.Timeout | undefined
  /** The client was answered before the relay (refused, or failed): the one audit line is written. */
  private refused = false
  /** An error nobody handled in this session's code ends this session only. */
  private readonly boundary = new SessionBoundary(
    (err) => this.fail(err),
    (err) => this.log.error({ err }, 'another internal error in a failed session'),
  )
  /** The session runs on a pooled server connection (the audit line says so). */
  private reused = false
  /** Set while the client may wait for a server connection (pool.max_server_connections): a drain ends the wait. */
  private waiting: ReturnType<typeof watchDeparture> | undefined
  /** ParameterStatus values as the client last saw them, handed to the pool with the connection. */
  private clientParameters: Map<string, string> | undefined

  constructor(
    private readonly socket: Socket,
    private readonly context: SessionContext,
    readonly id: number,
  ) {
    this.log = new SessionLog(context.logger, id, describePeer(socket))
    this.boundary.enclose(socket)
  }

  /** The session's route; only used after it was chosen. */
  private get chosen(): SessionRoute {
    if (!this.route) throw new Error('no route chosen yet')
    return this.route
  }

  get phase(): SessionPhase {
    return this.current
  }

  /** The session relays (or probes, moves, drains): counted as active. */
  get isRelaying(): boolean {
    return this.relay !== undefined && this.current !== SessionPhase.Closed
  }

  /** The route this session runs on, once chosen. */
  get routeName(): string | undefined {
    return this.route?.name
  }

  /** Serves the client to the end, inside the session's boundary. */
  run(): Promise<void> {
    return this.boundary.run(() => this.serve())
  }

  private async serve(): Promise<void> {
    const { socket } = this
    socket.on('error', (err: NodeJS.ErrnoException) => this.log.debug({ err: err.code }, 'client socket error'))
    // PostgreSQL closes silently when the startup packet does not arrive in time.
    const timer = setTimeout(() => socket.destroy(), this.context.startupTimeoutMs)
    try {
      const greeting = await readClientGreeting(socket)
      clearTimeout(timer)
      if (greeting.kind === 'CancelRequest') {
        const matched = await this.context.cancels.cancel(greeting.processId, greeting.secretKey)
        if (!matched) this.context.metrics.cancelRequest('unknown_key')
        socket.end()
        return
      }
      this.dispatch({ kind: 'startup_read' })
      const { packet, reader } = greeting
      const startup = splitClientStartup(packet.parameters)
      this.startup = startup
      const route = this.context.route(startup.clientUser)
      if (route instanceof ProxyError) throw route
      this.route = route
      const refusal = route.admit()
      if (refusal) throw refusal
      if (startup.stripped.length > 0)
        this.log.debug({ stripped: startup.stripped }, 'removed client startup parameters the proxy owns')
      const upstream = await this.loginUpstream(startup)
      // The credential stays held until the session ends (or moves), so its lease is never revoked under it.
      try {
        if (this.current === SessionPhase.Draining || this.refused) {
          // Shutdown began (or the session failed) during the login: the client never got AuthenticationOk, so it can be refused.
          upstream.session.socket.end(TERMINATE)
          throw shuttingDown()
        }
        if (socket.readableEnded || socket.destroyed) {
          // The client left while the session logged in: its 'end' and 'close' are past, and a
          // relay started now would wait for them forever, holding the upstream connection.
          upstream.session.socket.end(TERMINATE)
          throw new ConnectionClosedError('the client left during the upstream login')
        }
        this.startRelay(upstream, startup, packet.minorVersion, reader.detach())
        this.context.metrics.sessionStarted()
        const result = await (this.relay as Relay).done
        clearTimeout(this.idleTimer)
        this.context.metrics.sessionEnded(result.reason, result)
        this.credential = this.mover?.credential ?? this.credential
        this.audit(
          'info',
          { reason: result.reason, detail: result.detail, moves: this.mover?.moves ?? 0, reused: this.reused },
          result,
        )
      } finally {
        // A connection left mid-move (or parked) is not the pool's to keep.
        const settled = !isMoving(this.current)
        if (this.relay) this.dispatch({ kind: 'ended' })
        const kept = this.relay?.upstreamKept && settled ? this.plan?.detach() : undefined
        if (kept && this.clientParameters) void route.pool?.give(kept, this.clientParameters)
        else if (this.plan) this.plan.close()
        else upstream.hold.release()
      }
    } catch (err) {
      clearTimeout(timer)
      this.refuse(err)
    } finally {
      if (this.current !== SessionPhase.Closed) this.dispatch({ kind: 'ended' })
    }
  }

  /** Bytes relayed so far while the relay runs; once it ends they are in the metrics' totals. */
  get liveBytes(): RelayedBytes | undefined {
    const { relay } = this
    return relay && !relay.isFinished ? relay.bytesRelayed : undefined
  }

  /** Ends the session now, for shutdown: FATAL 57P01 when relaying (unless mid-message). */
  stop(): void {
    this.dispatch({ kind: 'stop' })
  }

  /**
   * Shutdown has begun: end the session at its next idle point (at once if idle now), so no
   * transaction is cut; one still logging in is refused with 57P03 instead of greeted.
   */
  drain(): void {
    this.dispatch({ kind: 'drain' })
  }

  /**
   * The one place a session's phase changes (src/proxy/session-phase.ts): switch on the event,
   * then on the phase. An (event, phase) pair the table does not allow is a bug: it is logged and
   * ends this session alone with XX000, through the session's boundary.
   */
  private dispatch<E extends SessionEvent>(event: E): Answer<E> {
    const from = this.current
    const { relay } = this
    switch (event.kind) {
      case 'startup_read':
      case 'linked':
      case 'probe_started':
      case 'move_started':
      case 'parked':
      case 'ended':
        this.enter(event.kind)
        return undefined as Answer<E>
      case 'move_ended':
        this.enter(event.kind, this.shutdownRequested ? SessionPhase.Draining : SessionPhase.Relaying)
        return undefined as Answer<E>
      case 'client_message':
        if (this.enter(event.kind)) {
          clearTimeout(this.idleTimer)
          this.idleTimer = undefined
        }
        return undefined as Answer<E>
      case 'client_terminate':
        // Only a session relaying, with nothing moving and no shutdown, hands its connection to the pool.
        return (this.enter(event.kind) &&
          from === SessionPhase.Relaying &&
          !!this.chosen.pool?.enabled &&
          !!this.plan) as Answer<E>
      case 'idle':
        if (this.enter(event.kind)) this.atIdlePoint()
        return undefined as Answer<E>
      case 'upstream_lost': {
        if (!this.enter(event.kind)) return { kind: 'end' } as Answer<E>
        // A probe or move under way (or a parked session) owns its connection: the relay just ends.
        if (from !== SessionPhase.Relaying && from !== SessionPhase.Draining) return { kind: 'end' } as Answer<E>
        return (this.plan?.onUpstreamLost(event.loss) ?? { kind: 'end' }) as Answer<E>
      }
      case 'idle_timeout': {
        if (!this.enter(event.kind)) return undefined as Answer<E>
        // Not idle at this instant (a notification half-way through): the next idle point re-arms it.
        const timeoutMs = this.chosen.settings.idleClientTimeoutMs
        if (relay && timeoutMs !== undefined && (relay.isIdle || from === SessionPhase.Parked))
          relay.stop('idle_timeout', idleTimeoutFarewell(timeoutMs))
        return undefined as Answer<E>
      }
      case 'credential_changed':
        // The plan (re-)plans the move whatever the session is doing, until it is over.
        if (this.enter(event.kind) && from !== SessionPhase.Closed) this.plan?.credentialChanged(event.hold)
        return undefined as Answer<E>
      case 'credential_ending':
        // A probe or move under way settles it (re-arming the check if the session is still on the credential).
        if (this.enter(event.kind) && (from === SessionPhase.Relaying || from === SessionPhase.Draining))
          this.plan?.credentialEnding(event.hold)
        return undefined as Answer<E>
      case 'drain': {
        this.shutdownRequested = true
        this.waiting?.abort(shuttingDown())
        // A session probing or moving keeps its phase until the step ends (move_ended then leads to draining).
        this.enter(event.kind)
        if (relay?.isIdle || from === SessionPhase.Parked) relay?.stop('shutdown', shutdownFarewell())
        return undefined as Answer<E>
      }
      case 'stop':
        this.enter(event.kind)
        if (relay) relay.stop('shutdown', shutdownFarewell())
        else this.socket.destroy()
        return undefined as Answer<E>
    }
  }

  /** Moves to the phase `event` leads to (or `to`, if the table allows it); false, and the session failed, on an impossible pair. */
  private enter(event: SessionEventKind, to?: SessionPhase): boolean {
    try {
      this.current = transition(this.current, event, to)
      return true
    } catch (err) {
      this.boundary.fault(err)
      return false
    }
  }

  /** The relay's upstream is going away (announced, or closed without a word): the dispatcher decides. */
  private readonly upstreamLost = (loss: UpstreamLoss): LossDecision => this.dispatch({ kind: 'upstream_lost', loss })

  /** What the move plan sees of the session: its phase, and the dispatcher for the steps and news it reports. */
  private readonly planHost: PlanHost = {
    phase: () => this.current,
    report: (step) => this.dispatch({ kind: step }),
    credential: (kind, hold) => this.dispatch({ kind, hold }),
  }

  /**
   * Logs in upstream. The credential is held (`use`) from the moment it is handed out, so a lease
   * cannot be revoked while this session is still logging in with it; the caller releases it.
   */
  private async loginUpstream(startup: ClientStartup): Promise<ServerConnection> {
    const { pool } = this.chosen
    if (!pool) return this.loginFresh(startup)
    // A new client may wait at pool.max_server_connections; a running session's reconnect never does.
    const wait = !this.relay
    // Watched only once it waits in line: a drain that came first ends the wait at once.
    const signal = (): AbortSignal => {
      this.waiting ??= watchDeparture(this.socket)
      if (this.shutdownRequested) this.waiting.abort(shuttingDown())
      return this.waiting.signal
    }
    try {
      const { login, reused } = await this.linkFromPool(pool, startup, () => this.loginFresh(startup), {
        wait,
        signal: wait ? signal : undefined,
      })
      if (reused) {
        this.reused = true
        if (!this.relay) this.credential = login.credential
      }
      return login
    } finally {
      this.waiting?.stop()
      this.waiting = undefined
    }
  }

  /** A move's connection to `credential`: a pooled one of it if ready, else a login; counted by the pool, never waiting. */
  private async connectForMove(startup: ClientStartup, credential: DbCredential): Promise<ServerConnection> {
    const { pool } = this.chosen
    if (!pool) return this.connectWith(startup, credential)
    const open = (): Promise<ServerConnection> => this.connectWith(startup, credential)
    return (await this.linkFromPool(pool, startup, open, { wait: false, credential })).login
  }

  /**
   * A server connection from the pool with this client's own parameters applied. Each pooled
   * connection that cannot take them is destroyed or given back, so this ends: with a linked pooled
   * connection, a refusal, or one that `open` logs in.
   */
  private async linkFromPool(
    pool: ServerPool,
    startup: ClientStartup,
    open: () => Promise<ServerConnection>,
    options: LinkOptions,
  ): Promise<Linked> {
    for (;;) {
      const linked = await pool.link(this.poolTarget(startup), open, options)
      const login = await this.applyClientParameters(startup, linked)
      if (login) return { login, reused: linked.reused }
    }
  }

  /**
   * A pooled connection shares this client's key, but its linkable parameters (application_name,
   * TimeZone...) may hold another client's values: set this client's own (server-link.ts). One that
   * refuses them goes back to the pool and the client is refused as a fresh login would be; one
   * whose link broke is destroyed, and undefined asks for another connection.
   */
  private async applyClientParameters(startup: ClientStartup, linked: Linked): Promise<ServerConnection | undefined> {
    if (!linked.reused) return linked.login
    const pooled = linked.login
    const check = this.chosen.pool?.needsCheck(pooled) ?? true
    const link = await linkServer(pooled.session, startup.forwarded, check)
    if (check && link.linked) pooled.checkedAt = Date.now()
    // Superseded while the link's query ran: the pool closes it (give), and never hands it out.
    if (link.linked && !pooled.hold.superseded) return pooled
    void this.chosen.pool?.give(pooled, pooled.session.parameters)
    if (link.linked) return undefined
    if (link.refusal) throw linkRefusedError(link.refusal, this.chosen.connector.endpoint.address)
    this.log.debug({ why: link.why }, 'a pooled server connection could not be linked; logging in afresh')
    return undefined
  }

  private async loginFresh(startup: ClientStartup): Promise<ServerConnection> {
    const { credentials, pool } = this.chosen
    pool?.countLogin()
    const credential = await credentials.get()
    try {
      return await this.connectWith(startup, credential)
    } catch (err) {
      // A refused credential may have been rotated or revoked: one fresh credential, one retry.
      if (!refusedCredential(err)) throw err
      this.log.warn(
        { user: credential.username, origin: credential.origin, sqlState: err.sqlState },
        'upstream refused the credential',
      )
      if (!(await credentials.invalidate(credential))) throw err
      return this.connectWith(startup, await credentials.get())
    }
  }

  private async connectWith(startup: ClientStartup, credential: DbCredential): Promise<ServerConnection> {
    if (!this.relay) this.credential = credential
    const hold = this.chosen.credentials.use(credential)
    try {
      const session = await this.chosen.connector.connect(this.upstreamParameters(startup, credential), credential)
      this.boundary.enclose(session.socket)
      return new ServerConnection(session, credential, hold, this.poolKey(startup), 'linked')
    } catch (err) {
      hold.release()
      throw err
    }
  }

  /** The upstream database for this client: upstream.database, else the client's (libpq's default: its user name). */
  private database(startup: ClientStartup): string {
    return this.chosen.settings.database ?? startup.database ?? startup.clientUser
  }

  /** Which pooled connections this client may be given: those logged in with the same database and parameters. */
  private poolKey(startup: ClientStartup): string {
    return ServerPool.key(this.database(startup), startup.forwarded)
  }

  private poolTarget(startup: ClientStartup): PoolTarget {
    return { key: this.poolKey(startup), database: this.database(startup), forwarded: startup.forwarded }
  }

  private upstreamParameters(startup: ClientStartup, credential: DbCredential): StartupParameter[] {
    return upstreamStartupParameters(
      credential,
      this.database(startup),
      startup.forwarded,
      this.chosen.settings.ownerRole,
    )
  }

  private startRelay(
    login: ServerConnection,
    startup: ClientStartup,
    minorVersion: number,
    clientPending: Buffer,
  ): void {
    const { session: upstream, credential } = login
    const tracker = new TransactionTracker()
    tracker.status = upstream.transactionStatus
    const { cancels, metrics } = this.context
    const { connector, settings, credentials } = this.chosen
    const key = cancels.register(async () => {
      // Only a busy session is cancelled: a late cancel must not hit the client's next statement
      // (nor the proxy's own state probe or replay during a move).
      const mover = this.mover
      // Not while the proxy's own probe or replay runs (a parked session is never busy).
      const stillBusy = (pid: number): boolean =>
        tracker.isBusy &&
        !!mover &&
        this.current !== SessionPhase.Probing &&
        this.current !== SessionPhase.Moving &&
        mover.upstream.processId === pid
      if (!mover || !stillBusy(mover.upstream.processId)) {
        metrics.cancelRequest('not_busy')
        return
      }
      this.log.info('forwarding cancel request')
      // The upstream serving the session now: the mapping follows a move.
      const { processId, secretKey } = mover.upstream
      await connector
        .cancel(processId, secretKey, () => stillBusy(processId))
        .then(
          () => metrics.cancelRequest('forwarded'),
          (err: Error) => {
            metrics.cancelRequest('failed')
            this.log.warn({ err: err.message }, 'cancel forwarding failed')
          },
        )
    })
    this.socket.once('close', () => cancels.unregister(key.processId))

    const negotiate =
      minorVersion > 0 || startup.unsupportedProtocolOptions.length > 0
        ? encodeNegotiateProtocolVersion(0, startup.unsupportedProtocolOptions)
        : undefined
    this.socket.write(
      encodeGreeting({
        negotiate,
        parameters: upstream.parameters,
        processId: key.processId,
        secretKey: key.secretKey,
        notices: upstream.notices,
        status: upstream.transactionStatus,
      }),
    )

    this.dispatch({ kind: 'linked' })
    this.log.info(
      {
        upstreamUser: credential.username,
        upstreamPid: upstream.processId,
        auth: upstream.authMethod,
        tls: upstream.isTls,
      },
      'session started',
    )
    const state = new SessionState()
    // Not a copy: from here on the login's map is what the client saw, which is also what this
    // upstream last reported. Nothing reads the login's own values after the greeting (a move reads
    // the new login's, and the pool rebuilds them when it takes the connection back).
    const clientParameters = upstream.parameters
    this.clientParameters = clientParameters
    const relay = new Relay({
      client: this.socket,
      upstream: { socket: upstream.socket, pending: upstream.pending, processId: upstream.processId },
      clientPending,
      tracker,
      clientProcessId: key.processId,
      parameters: clientParameters,
      state,
      onUpstreamNotice: (code, fields) => answerUpstreamNotice(code, fields, this.upstreamLost),
      onUpstreamClosed: (errorCode) => answerUpstreamClosed(errorCode, this.upstreamLost),
      violationFarewell,
      onIdle: () => this.dispatch({ kind: 'idle' }),
      onClientData: () => this.dispatch({ kind: 'client_message' }),
      onOutgrown: (why) =>
        this.log.warn({ why }, 'session outgrew what pg-vault-proxy follows: it keeps working, but cannot move'),
      onClientTerminate: () => this.dispatch({ kind: 'client_terminate' }),
    })
    this.relay = relay
    const mover = new SessionMover({
      relay,
      state,
      login,
      connect: (next) => this.connectForMove(startup, next),
      relogin: () => this.loginUpstream(startup),
      ownerRole: settings.ownerRole,
      clientParameters,
      clientProcessId: key.processId,
      isOver: () => this.current === SessionPhase.Closed,
    })
    this.mover = mover
    this.plan = new MovePlan({
      host: this.planHost,
      mover,
      relay,
      state,
      credentials,
      settings: settings.rotation,
      metrics,
      log: this.log,
      idle: () => this.dispatch({ kind: 'idle' }),
    })
    relay.start()
    if (relay.isIdle) this.dispatch({ kind: 'idle' })
  }

  /** The client is waiting outside a transaction: the point where draining ends it, and the idle timeout runs. */
  private atIdlePoint(): void {
    const { relay } = this
    if (!relay) return
    if (this.shutdownRequested) {
      relay.stop('shutdown', shutdownFarewell())
      return
    }
    this.plan?.onIdle()
    const timeoutMs = this.chosen.settings.idleClientTimeoutMs
    if (timeoutMs === undefined || this.idleTimer !== undefined) return
    this.idleTimer = setTimeout(() => {
      this.idleTimer = undefined
      this.dispatch({ kind: 'idle_timeout' })
    }, timeoutMs)
    this.idleTimer.unref()
  }

  /**
   * The session's boundary caught an error nobody handled (a throw in a message handler, a rejected
   * promise of its own): this session ends with FATAL XX000, the others go on.
   */
  private fail(err: unknown): void {
    this.log.error({ err }, 'internal error in session')
    const { relay } = this
    if (relay && !relay.isFinished) {
      try {
        // serve() then records and audits the end (reason internal_error).
        relay.stop('internal_error', internalErrorFarewell(this.id))
      } catch (stopErr) {
        this.log.error({ err: stopErr }, 'could not end a failed session cleanly')
        this.socket.destroy()
      }
    } else if (!relay) this.refuse(err)
  }

  /** Every failure before the relay: one reply to the client (or silence), one audit line. */
  private refuse(err: unknown): void {
    const { socket } = this
    if (this.refused) {
      socket.destroy()
      return
    }
    this.refused = true
    if (err instanceof StartupPacketError) {
      const reply = startupRefusal(err)
      this.audit('debug', { reason: 'bad_startup_packet', detail: err.message })
      if (reply) socket.end(reply)
      else socket.destroy()
      return
    }
    if (err instanceof FramingError || err instanceof ConnectionClosedError) {
      // Port probes and clients that give up land here: not worth more than a debug line.
      this.audit('debug', { reason: 'client_left_during_startup', detail: err.message })
      socket.destroy()
      return
    }
    if (err instanceof ProxyError) {
      this.context.metrics.sessionRefused(err.reason)
      this.audit('warn', {
        reason: 'refused',
        refusal: err.reason,
        sqlState: err.clientError.sqlState,
        detail: err.message,
      })
      socket.end(encodeErrorResponse(err.fields()))
      return
    }
    this.context.metrics.sessionRefused('internal_error')
    if (!this.boundary.hasFaulted) this.log.error({ err }, 'internal error in session')
    this.audit('error', { reason: 'internal_error' })
    socket.end(internalErrorFarewell(this.id))
  }

  /**
   * The session's audit line, exactly one per client session (CancelRequest connections have none).
   * The client address is on every line of the session's log (SessionLog); no field ever holds a secret.
   */
  private audit(
    level: 'debug' | 'info' | 'warn' | 'error',
    end: {
      reason: string
      detail?: string | undefined
      refusal?: string
      sqlState?: string
      moves?: number
      reused?: boolean
    },
    bytes: { bytesFromClient: number; bytesFromUpstream: number } = { bytesFromClient: 0, bytesFromUpstream: 0 },
  ): void {
    const { startup, credential } = this
    this.log.write(
      level,
      {
        route: this.route?.name,
        clientUser: startup?.clientUser,
        database: startup ? (this.route?.settings.database ?? startup.database ?? startup.clientUser) : undefined,
        upstreamUser: credential?.username,
        leaseId: credential?.leaseId,
        credential: credential?.origin,
        durationMs: Date.now() - this.startedAt,
        bytesFromClient: bytes.bytesFromClient,
        bytesFromUpstream: bytes.bytesFromUpstream,
        ...end,
      },
      'session ended',
    )
  }
}

/** The refusal for a client that arrives or finishes logging in while the proxy drains (PostgreSQL says the same). */
export function shuttingDown(): ProxyError {
  return new ProxyError('shutting_down', {
    sqlState: '57P03',
    message: 'the database system is shutting down (pg-vault-proxy is draining and accepts no new sessions)',
    hint: 'Connect again in a moment, to this proxy once it has restarted or to another instance.',
  })
}

function describePeer(socket: Socket): string {
  return socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix'
}
