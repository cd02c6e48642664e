import type { Socket } from 'node:net'
import type { Logger } from 'pino'
import type { SessionMetrics } from '../ops/metrics.js'
import { encodeMessage, encodeParameterStatus, errorFields } from '../pgwire/backend-messages.js'
import { BackendCode, FrontendCode } from '../pgwire/codes.js'
import { MessageReader } from '../pgwire/message-reader.js'
import type { CredentialHold, CredentialSource, DbCredential } from '../vault/credential-source.js'
import { setLongTimeout, type LongTimer } from '../vault/long-timer.js'
import { ProxyError } from './proxy-error.js'
import { releaseWhenClosed } from './release-when-closed.js'
import type { ServerConnection } from './server-connection.js'
import { rewriteNotifyPid, type LossDecision, type Relay, type UpstreamLoss } from './relay.js'
import { SessionPhase } from './session-phase.js'
import { SessionState } from './session-state.js'
import { exchange, ExchangeClosedError } from './upstream-exchange.js'
import type { UpstreamSession } from './upstream-connector.js'

/** rotation.* in the configuration. */
export interface RotationSettings {
  /** Reconnect an idle, clean session whose upstream went away (default true). */
  reconnect: boolean
  /** Close every session still on a credential at its end, busy or not (default false). */
  strict: boolean
}

/**
 * The session a mover works for. Its phase says whether a probe or move is under way
 * (src/proxy/session-phase.ts); the mover keeps no such flag of its own, and reports each step
 * to the session's dispatcher instead.
 */
export interface MoverHost {
  phase(): SessionPhase
  report(step: 'probe_started' | 'move_started' | 'parked' | 'move_ended'): void
  /**
   * The session's credential was superseded or its end changed (`act` plans the move), or its end
   * is near (`act` closes the session if it cannot move): the session's dispatcher runs `act` when
   * its phase calls for it.
   */
  credential(event: 'credential_changed' | 'credential_ending', act: () => void): void
}

export interface SessionMoverOptions {
  host: MoverHost
  relay: Relay
  state: SessionState
  /** The upstream the session started on. */
  login: ServerConnection
  credentials: CredentialSource
  /** Logs in a new upstream connection with `credential` and the session's startup parameters. */
  connect(credential: DbCredential): Promise<ServerConnection>
  /** The session's login: the current credential, and one fresh one if the upstream refuses it. */
  relogin(): Promise<ServerConnection>
  ownerRole: string
  /** The client's view of ParameterStatus values (the relay keeps it current). */
  clientParameters: Map<string, string>
  clientProcessId: number
  settings: RotationSettings
  metrics: SessionMetrics
  log: Logger
  /** The session is idle again after a probe, move or reconnect (where a drain ends it, for one). */
  idle(): void
}

/** Probes, replays and logins each get this long before a move is given up. */
const STEP_TIMEOUT_MS = 10_000
/** How long an upstream that went away may take to accept a login again (a restart, a failover). */
const RECONNECT_BUDGET_MS = 15_000
/** After a failed or blocked swap, the next try waits this long. */
const RETRY_SWAP_MS = 2_000
/** After a failed state probe, the next one waits this long. */
const RETRY_PROBE_MS = 1_000
/** The proxy closes sessions this long before their credential's end, so its message, not the revocation's, is what clients see. */
const HARD_END_MARGIN_MS = 1_000
/** Sessions on a superseded credential start moving within this window (bounded by a quarter of what is left). */
const SPREAD_MS = 2_000
const TERMINATE = Buffer.from([FrontendCode.Terminate, 0, 0, 0, 4])

/**
 * Keeps one client session on a working upstream connection without the client noticing
 * (docs/rotation.md). Planned swap: once the session's credential is superseded, the mover logs in
 * with the current credential, then at an idle point probes the session's state, rebuilds it on
 * the new connection and switches the relay over; notifications still arriving on the old
 * connection are passed on until it closes. Unplanned loss: when the upstream of an idle, clean
 * session goes away, it reconnects and rebuilds the last probed state. Nothing in flight is ever
 * replayed.
 */
export class SessionMover {
  private login: ServerConnection
  /** Logging in the next connection ahead of the swap, so the client waits only for probe and replay. */
  private preparing = false
  /** That connection, logged in and waiting for the session's next idle point. */
  private ready: ServerConnection | undefined
  /** When a swap may next be tried (spread, or after a failure). */
  private swapAfter = 0
  private probeAfter = 0
  /** Why the last swap was refused, for the close at the credential's end. */
  private blockedBy: string | undefined
  private swapTimer: NodeJS.Timeout | undefined
  private endTimer: LongTimer | undefined
  moves = 0

  constructor(private readonly options: SessionMoverOptions) {
    this.login = options.login
    this.watch(this.login.hold)
  }

  /** The upstream now serving the session (cancel requests go there). */
  get upstream(): UpstreamSession {
    return this.login.session
  }

  get credential(): DbCredential {
    return this.login.credential
  }

  /** The relay is suspended for a probe or move, or parked: the session's phase says so. */
  private get moving(): boolean {
    const phase = this.options.host.phase()
    return phase === SessionPhase.Probing || phase === SessionPhase.Moving || phase === SessionPhase.Parked
  }

  /** The session is over: whatever step is still under way must not touch it. */
  private get ended(): boolean {
    return this.options.host.phase() === SessionPhase.Closed
  }

  /** A probe or move is over: the session's dispatcher decides where it goes from here. */
  private settle(): void {
    const phase = this.options.host.phase()
    if (phase === SessionPhase.Probing || phase === SessionPhase.Moving) this.options.host.report('move_ended')
  }

  /** The session ended: stop timers and give the credentials back. */
  close(): void {
    clearTimeout(this.swapTimer)
    this.endTimer?.clear()
    // The relay is closing the connection; the lease may be revoked once it has.
    releaseWhenClosed(this.login.session.socket, this.login.hold, STEP_TIMEOUT_MS)
    this.dropNext()
  }

  /**
   * The client ended cleanly at an idle point, not mid-move (the session checks): hand over the
   * connection serving the session, with its hold, for the pool.
   */
  detach(): ServerConnection {
    clearTimeout(this.swapTimer)
    this.endTimer?.clear()
    this.dropNext()
    return this.login
  }

  /** Called at every idle point of the session (after draining and the idle timeout had their say). */
  onIdle(): void {
    if (this.moving || this.ended || !this.options.relay.isIdle) return
    const { state, settings } = this.options
    if (this.ready) {
      const next = this.ready
      this.ready = undefined
      void this.swap(next)
    } else if (this.swapDue()) this.startSwap()
    else if (state.dirty && settings.reconnect && Date.now() >= this.probeAfter) void this.refreshSnapshot()
  }

  /**
   * The upstream of a session that is relaying (the session's dispatcher checked) is going away:
   * reconnect (taking over), or end, saying why when it matters.
   */
  onUpstreamLost(loss: UpstreamLoss): LossDecision {
    if (!this.options.settings.reconnect) return { kind: 'end' }
    return this.takeOver(loss, this.options.relay.isIdle)
  }

  /** Decides about a lost upstream; when it can, starts the reconnect (or parks until the client speaks). */
  private takeOver(loss: UpstreamLoss, idle: boolean): LossDecision {
    const { relay, state, metrics, log, host } = this.options
    const why = this.whyNotReconnect(idle)
    if (why !== undefined) {
      metrics.sessionMoved('reconnect', 'declined')
      log.warn({ loss, why }, 'upstream connection lost; not reconnecting')
      return { kind: 'end', why }
    }
    this.dropNext()
    if (loss.sqlState === '57P05' && state.snapshot.listen.length === 0) {
      // The server's idle_session_timeout: reconnecting now would only be timed out again. Wait
      // until the client has something to say (a LISTENing session cannot wait: it must hear).
      log.info({ loss }, 'upstream closed an idle session; reconnecting when the client next speaks')
      host.report('parked')
      this.login.hold.release()
      setImmediate(() =>
        relay.wakeOnClientData(() => {
          host.report('move_started')
          void this.reconnect(loss)
        }),
      )
      return { kind: 'reconnect' }
    }
    log.info({ loss, upstreamPid: this.upstream.processId }, 'upstream connection lost at an idle point; reconnecting')
    host.report('move_started')
    void this.reconnect(loss)
    return { kind: 'reconnect' }
  }

  private whyNotReconnect(idle: boolean): string | undefined {
    const { state } = this.options
    if (!idle)
      return 'The session was inside a transaction or had a request in flight, so pg-vault-proxy did not reconnect it: it never replays statements.'
    if (state.exceeded) return `The session held ${state.exceeded}, so pg-vault-proxy did not reconnect it.`
    if (state.unknown)
      return 'pg-vault-proxy could not read the session state (its state probe failed), so it did not reconnect it.'
    if (state.dirty)
      return 'The session had just changed its state (a SET, PREPARE, LISTEN ...) that pg-vault-proxy had not yet recorded, so it did not reconnect it.'
    const unmovable = SessionState.unmovable(state.snapshot)
    if (unmovable)
      return `The session held ${unmovable}, which cannot move to a new connection, so pg-vault-proxy did not reconnect it.`
    return undefined
  }

  /** Follows the session's credential: move once it is superseded, close at its end if it cannot. */
  private watch(hold: CredentialHold): void {
    const plan = (): void => {
      if (this.ended || hold !== this.login.hold) return
      this.armEnd(hold)
      if (hold.superseded && this.swapTimer === undefined) {
        const left = hold.endsAt === undefined ? SPREAD_MS * 4 : hold.endsAt - Date.now()
        const delay = Math.random() * Math.max(0, Math.min(SPREAD_MS, left / 4))
        this.swapAfter = Date.now() + delay
        this.wakeAfter(delay)
      }
    }
    hold.onChange(() => this.options.host.credential('credential_changed', plan))
    plan()
  }

  /** An idle session sees no idle points of its own: the timer is its idle point. */
  private wakeAfter(delay: number): void {
    clearTimeout(this.swapTimer)
    this.swapTimer = setTimeout(() => {
      this.swapTimer = undefined
      // Timers may fire a millisecond early by the wall clock.
      this.swapAfter = 0
      this.onIdle()
    }, delay)
    this.swapTimer.unref()
  }

  /** Plans what happens HARD_END_MARGIN_MS before the credential ends (at once, if that time has passed). */
  private armEnd(hold: CredentialHold): void {
    this.endTimer?.clear()
    if (hold.endsAt === undefined || this.ended) return
    // A lease may run for months: a plain setTimeout would fire at once (src/vault/long-timer.ts).
    this.endTimer = setLongTimeout(
      () => this.options.host.credential('credential_ending', () => this.credentialEnding(hold)),
      hold.endsAt - HARD_END_MARGIN_MS - Date.now(),
    )
  }

  private swapDue(): boolean {
    return this.login.hold.superseded && Date.now() >= this.swapAfter
  }

  /** The credential is about to end and the session is still on it. */
  private credentialEnding(hold: CredentialHold): void {
    // A move under way settles it: it re-arms this check if the session is still here afterwards.
    if (this.ended || hold !== this.login.hold || this.moving) return
    const { relay, settings, log, metrics } = this.options
    const why = this.blockedBy
    // Not strict: a busy session is left alone (it moves at its next idle point, if the server lets it live).
    if (why === undefined && !settings.strict) return
    const reason = why ?? (relay.isIdle ? 'it could not be moved' : 'it was busy (a transaction or a long query)')
    log.warn({ leaseId: this.credential.leaseId, why: reason }, 'closing a session whose credential ends')
    metrics.sessionMoved('swap', 'closed')
    relay.stop(
      'credential_expired',
      errorFields({
        severity: 'FATAL',
        sqlState: '57P01',
        message: `terminating connection: its upstream credential (${this.credential.origin}) ends, and pg-vault-proxy could not move the session to a new one because ${why !== undefined ? `it held ${why}` : reason}`,
        hint:
          why !== undefined
            ? 'Reconnect. Sessions that hold temporary tables, WITH HOLD cursors or advisory locks cannot move to a new credential; see docs/rotation.md.'
            : 'Reconnect. rotation.strict is on, so sessions still busy when their credential ends are closed; see docs/rotation.md.',
      }),
    )
  }

  /** Probes the session's state at an idle point so an unplanned reconnect can rebuild it. */
  private async refreshSnapshot(): Promise<void> {
    const { relay, host } = this.options
    host.report('probe_started')
    const socket = relay.suspend()
    try {
      await this.probe(socket, this.upstream)
    } catch (err) {
      this.settle()
      if (isClosed(socket)) this.lostWhileSuspended(socket, err)
      else this.options.log.warn({ err: (err as Error).message }, 'the session state probe failed')
      if (!relay.isFinished && !isClosed(socket)) relay.resume()
      return
    }
    relay.resume()
    this.settle()
    this.armEnd(this.login.hold)
    if (relay.isIdle) this.options.idle()
  }

  /** Runs the state probe on a suspended upstream; the answer becomes the state's snapshot. */
  private async probe(socket: Socket, upstream: UpstreamSession): Promise<void> {
    const { state, log } = this.options
    const result = await exchange(socket, state.probeMessages(), 1, STEP_TIMEOUT_MS)
    this.passOn(result.notifications, upstream.processId, result.parameters)
    // Left in the socket for the relay (or the retirement) to read next.
    if (result.pending.length > 0) socket.unshift(result.pending)
    const row = result.rows[0]?.[0]
    try {
      if (result.error || typeof row !== 'string' || result.status !== 'I')
        throw new Error(result.error?.get('M') ?? 'no answer')
      state.acceptProbeResult(row)
    } catch (err) {
      // A cancel that landed on the probe, a tiny statement_timeout...: try again a little later.
      state.markUnknown()
      this.probeAfter = Date.now() + RETRY_PROBE_MS
      log.warn({ err: (err as Error).message }, 'the session state probe failed; will retry')
    }
  }

  /** The swap is due: log in with the current credential first, then move at the next idle point. */
  private startSwap(): void {
    if (this.preparing) return
    this.preparing = true
    const { credentials, log, metrics, relay } = this.options
    const old = this.login
    void (async () => {
      let next: ServerConnection | undefined
      try {
        const credential = await credentials.get()
        if (credential !== old.credential && !this.ended) next = await this.options.connect(credential)
      } catch (err) {
        metrics.sessionMoved('swap', 'failed')
        log.warn({ err: (err as Error).message }, 'could not log in with the new credential; will retry')
      }
      this.preparing = false
      if (!next) {
        // Nothing newer to move to yet (Vault may be down), or the login failed: the old one serves on.
        this.retryLater()
        return
      }
      if (this.ended || this.login !== old) {
        this.discard(next)
        return
      }
      this.ready = next
      if (relay.isIdle) this.onIdle()
    })()
  }

  private dropNext(): void {
    if (this.ready) this.discard(this.ready)
    this.ready = undefined
  }

  /** The planned move onto `next`, at an idle point. */
  private async swap(next: ServerConnection): Promise<void> {
    const { relay, state, log, metrics, host } = this.options
    if (this.moving || this.ended || !relay.isIdle) {
      this.discard(next)
      return
    }
    host.report('probe_started')
    const old = this.login
    const socket = relay.suspend()
    let pending: ServerConnection | undefined = next
    try {
      await this.probe(socket, old.session)
      const unmovable =
        state.exceeded ?? (state.unknown ? 'state the probe could not read' : SessionState.unmovable(state.snapshot))
      if (unmovable) {
        if (this.blockedBy !== unmovable) {
          log.warn({ why: unmovable, leaseId: old.credential.leaseId }, 'session cannot move to the new credential')
          metrics.sessionMoved('swap', 'blocked')
        }
        this.blockedBy = unmovable
        this.retryLater()
        relay.resume()
      } else {
        this.blockedBy = undefined
        host.report('move_started')
        const rebuilt = await this.rebuild(next)
        if (relay.isFinished || this.ended) throw new Error('the client left during the move')
        this.switchTo(next, rebuilt)
        pending = undefined
        this.retire(socket, old)
        metrics.sessionMoved('swap', 'moved')
        log.info(
          { from: old.credential.username, to: this.credential.username, upstreamPid: this.upstream.processId },
          'session moved to a new credential',
        )
      }
    } catch (err) {
      this.settle()
      if (relay.isFinished || this.ended) {
        if (pending) this.discard(pending)
        return
      }
      if (isClosed(socket)) {
        // The old upstream died under the probe: the new connection is as good as any for the reconnect.
        if (pending) this.discard(pending)
        this.lostWhileSuspended(socket, err)
        return
      }
      metrics.sessionMoved('swap', 'failed')
      log.warn({ err: (err as Error).message }, 'could not move the session to the new credential; will retry')
      this.retryLater()
      relay.resume()
    }
    if (pending) this.discard(pending)
    this.settle()
    // Still on the old credential (blocked, failed): its end may have come meanwhile.
    if (this.login === old) this.armEnd(old.hold)
    if (relay.isIdle) this.options.idle()
  }

  /** After an unplanned loss: log in again and rebuild the last probed state, or end the session with the reason. */
  private async reconnect(loss: UpstreamLoss): Promise<void> {
    const { relay, metrics, log } = this.options
    const old = this.login
    const deadline = Date.now() + RECONNECT_BUDGET_MS
    let next: ServerConnection | undefined
    // pg_terminate_backend may be the start of the credential's revocation: log in with another.
    if (loss.sqlState === '57P01') this.options.credentials.distrust?.(old.credential)
    try {
      next = await this.loginAgain(deadline)
      const rebuilt = await this.rebuild(next)
      if (relay.isFinished || this.ended) throw new Error('the client left during the reconnect')
      this.switchTo(next, rebuilt)
      next = undefined
      old.hold.release()
      metrics.sessionMoved('reconnect', 'moved')
      log.info({ upstreamPid: this.upstream.processId, user: this.credential.username }, 'session reconnected')
    } catch (err) {
      if (next) this.discard(next)
      this.settle()
      if (relay.isFinished || this.ended) return
      metrics.sessionMoved('reconnect', 'failed')
      const why = (err as Error).message
      log.warn({ err: why, loss }, 'could not reconnect the session')
      relay.stop(
        'upstream_lost',
        errorFields({
          severity: 'FATAL',
          sqlState: loss.sqlState ?? '08006',
          message: `pg-vault-proxy lost the connection to the upstream server (${loss.announced ?? loss.errorCode ?? 'closed'}) and could not reconnect: ${why}`,
          hint: 'Reconnect.',
        }),
      )
      return
    }
    this.settle()
    this.options.idle()
  }

  /** The session's own login (a refused credential gets one fresh credential); an unreachable or starting server is retried until the deadline. */
  private async loginAgain(deadline: number): Promise<ServerConnection> {
    const { relay } = this.options
    let delay = 100
    for (;;) {
      if (this.ended || relay.isFinished) throw new Error('the session ended')
      try {
        return await this.options.relogin()
      } catch (err) {
        // A server starting up (57P03) or not listening yet: wait and try again while time is left.
        const retriable =
          err instanceof ProxyError && (err.clientError.sqlState === '57P03' || err.reason === 'upstream_unreachable')
        if (!retriable || Date.now() + delay > deadline) throw err
        await new Promise((resolve) => setTimeout(resolve, delay))
        delay = Math.min(delay * 2, 2_000)
      }
    }
  }

  /** Replays the session's state on a fresh connection; anything but a clean ReadyForQuery 'I' fails the move. */
  private async rebuild(
    next: ServerConnection,
  ): Promise<{ parameters: Map<string, string>; notifications: Buffer[]; pending: Buffer }> {
    const { state, ownerRole, clientParameters } = this.options
    const replay = state.replay(state.snapshot, ownerRole, clientParameters.get('client_encoding'))
    const parameters = new Map(next.session.parameters)
    if (replay.readyForQueries === 0) return { parameters, notifications: [], pending: next.session.pending }
    const result = await exchange(
      next.session.socket,
      replay.messages,
      replay.readyForQueries,
      STEP_TIMEOUT_MS,
      next.session.pending,
    )
    if (result.error) {
      throw new Error(
        `replaying the session state failed: ${result.error.get('C') ?? ''} ${result.error.get('M') ?? ''}`,
      )
    }
    if (result.status !== 'I') throw new Error(`replaying the session state left status ${result.status}`)
    for (const [name, value] of result.parameters) parameters.set(name, value)
    return { parameters, notifications: result.notifications, pending: result.pending }
  }

  /** Points the relay (and so cancels) at the new connection and tells the client what changed. */
  private switchTo(
    next: ServerConnection,
    rebuilt: { parameters: Map<string, string>; notifications: Buffer[]; pending: Buffer },
  ): void {
    const { relay } = this.options
    this.login = next
    this.moves++
    relay.resume({ socket: next.session.socket, pending: rebuilt.pending, processId: next.session.processId })
    this.passOn(rebuilt.notifications, next.session.processId, rebuilt.parameters)
    this.watch(next.hold)
  }

  /**
   * Ends the old connection politely, passing on notifications it still delivers until it closes,
   * then gives its credential back (which may revoke the lease).
   */
  private retire(socket: Socket, old: ServerConnection): void {
    let done = false
    const finish = (): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      reader?.detach()
      socket.destroy()
      old.hold.release()
    }
    const timer = setTimeout(finish, STEP_TIMEOUT_MS)
    timer.unref()
    // It may have closed while nobody listened (during the login or replay): nothing left to read.
    if (isClosed(socket)) {
      finish()
      return
    }
    const reader: MessageReader | undefined = new MessageReader(socket)
    socket.write(TERMINATE)
    const drain = async (): Promise<void> => {
      for (;;) {
        const { code, body } = await reader.readMessage(64 << 20)
        if (code === BackendCode.NotificationResponse) this.passOn([encodeMessage(code, body)], old.session.processId)
      }
    }
    void drain()
      .catch(() => undefined)
      .finally(finish)
  }

  private discard(next: ServerConnection): void {
    next.session.socket.end(TERMINATE)
    releaseWhenClosed(next.session.socket, next.hold, STEP_TIMEOUT_MS)
  }

  /** Notifications, and ParameterStatus values the client has not seen, from a connection the relay was not reading. */
  private passOn(notifications: Buffer[], upstreamPid: number, parameters?: Map<string, string>): void {
    const { relay, clientProcessId, clientParameters } = this.options
    const out: Buffer[] = []
    for (const message of notifications) {
      rewriteNotifyPid(message, upstreamPid, clientProcessId)
      out.push(message)
    }
    for (const [name, value] of parameters ?? []) {
      if (clientParameters.get(name) !== value) out.push(encodeParameterStatus(name, value))
    }
    if (out.length > 0) relay.sendToClient(Buffer.concat(out))
  }

  /** The suspended upstream died while the mover was talking to it: an unplanned loss at an idle point. */
  private lostWhileSuspended(socket: Socket, err: unknown): void {
    const { relay, settings } = this.options
    socket.destroy()
    if (relay.isFinished || this.ended) return
    const fatal = err instanceof ExchangeClosedError ? err.fatal : undefined
    const sqlState = fatal?.get('C')
    const loss: UpstreamLoss = fatal
      ? { announced: `${sqlState ?? '?'} ${fatal.get('M') ?? ''}`, ...(sqlState ? { sqlState } : {}) }
      : { errorCode: (err as NodeJS.ErrnoException).code ?? 'closed' }
    const decision: LossDecision = settings.reconnect
      ? this.takeOver(loss, true)
      : { kind: 'end', why: 'rotation.reconnect is off.' }
    if (decision.kind === 'reconnect') return
    const fields =
      fatal ??
      errorFields({
        severity: 'FATAL',
        sqlState: '08006',
        message: `pg-vault-proxy lost the connection to the upstream server: ${(err as Error).message}`,
      })
    fields.set('D', [fields.get('D'), decision.why].filter(Boolean).join(' '))
    relay.stop('upstream_lost', fields)
  }

  private retryLater(): void {
    this.swapAfter = Date.now() + RETRY_SWAP_MS
    this.wakeAfter(RETRY_SWAP_MS)
  }
}

function isClosed(socket: Socket): boolean {
  return socket.destroyed || socket.readableEnded || !socket.readable
}
