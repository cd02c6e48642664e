import type { Socket } from 'node:net'
import type { SessionMetrics } from '../ops/metrics.js'
import type { CredentialHold, CredentialSource } from '../vault/credential-source.js'
import { setLongTimeout, type LongTimer } from '../vault/long-timer.js'
import type { SessionLog } from '../ops/session-log.js'
import type { Relay } from './relay.js'
import type { ServerConnection } from './server-connection.js'
import { isClosed, lossOf, type Rebuilt, type SessionMover } from './session-mover.js'
import { SessionPhase } from './session-phase.js'
import { SessionState } from './session-state.js'
import { credentialEndedFarewell, lostWhileMovingFarewell, reconnectFailedFarewell } from './session-farewell.js'
import type { LossDecision, UpstreamLoss } from './upstream-loss.js'

/** rotation.* in the configuration. */
export interface RotationSettings {
  /** Reconnect an idle, clean session whose upstream went away (default true). */
  reconnect: boolean
  /** Close every session still on a credential at its end, busy or not (default false). */
  strict: boolean
}

/**
 * The session a plan works for. Its phase says whether a probe or move is under way
 * (src/proxy/session-phase.ts); the plan keeps no such flag of its own, and reports each step to
 * the session's dispatcher instead.
 */
export interface PlanHost {
  phase(): SessionPhase
  report(step: 'probe_started' | 'move_started' | 'parked' | 'move_ended'): void
  /**
   * The credential `hold` was superseded or its end changed, or its end is near: the session's
   * dispatcher calls back `credentialChanged` or `credentialEnding` when its phase allows.
   */
  credential(event: 'credential_changed' | 'credential_ending', hold: CredentialHold): void
}

export interface MovePlanOptions {
  host: PlanHost
  mover: SessionMover
  relay: Relay
  state: SessionState
  credentials: CredentialSource
  settings: RotationSettings
  metrics: SessionMetrics
  log: SessionLog
  /** The session is idle again after a probe, move or reconnect (where a drain ends it, for one). */
  idle(): void
}

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

/**
 * When a session moves (docs/rotation.md), and what follows each step of its SessionMover. Owned
 * by the ClientSession and driven by its dispatcher: idle points, a lost upstream and the
 * credential's news come in through it; the steps' start and end go back to it as reports.
 *
 * Planned swap: once the session's credential is superseded, wait a random spread, log in the
 * next connection while the session runs on, then at the next idle point probe, replay and switch.
 * A blocked or failed swap is tried again later; at the credential's end a session that could not
 * move (or any session still on it, with rotation.strict) is closed. Unplanned loss: an idle,
 * clean session reconnects (at once, or when the client next speaks after the server's
 * idle_session_timeout) and rebuilds the last probed state; a dirty state is probed at idle points
 * to keep that snapshot current. Nothing in flight is ever replayed.
 */
export class MovePlan {
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

  constructor(private readonly options: MovePlanOptions) {
    this.follow(options.mover.connection.hold)
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
    this.options.mover.release()
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
    return this.options.mover.connection
  }

  /** Called at every idle point of the session (after draining and the idle timeout had their say). */
  onIdle(): void {
    if (this.moving || this.ended || !this.options.relay.isIdle) return
    const { state, settings } = this.options
    if (this.ready) {
      const next = this.ready
      this.ready = undefined
      void this.swap(next)
    } else if (this.swapDue()) this.prepare()
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

  /** The credential `hold` was superseded or its end changed: plan the move and the close at its end. */
  credentialChanged(hold: CredentialHold): void {
    if (this.ended || hold !== this.options.mover.connection.hold) return
    this.armEnd(hold)
    if (hold.superseded && this.swapTimer === undefined) {
      const left = hold.endsAt === undefined ? SPREAD_MS * 4 : hold.endsAt - Date.now()
      const delay = Math.random() * Math.max(0, Math.min(SPREAD_MS, left / 4))
      this.swapAfter = Date.now() + delay
      this.wakeAfter(delay)
    }
  }

  /** The credential `hold` is about to end and the session (relaying or draining) is still on it. */
  credentialEnding(hold: CredentialHold): void {
    const { relay, settings, log, metrics, mover } = this.options
    // A move under way settles it: it re-arms this check if the session is still here afterwards.
    if (this.ended || hold !== mover.connection.hold || this.moving) return
    const why = this.blockedBy
    // Not strict: a busy session is left alone (it moves at its next idle point, if the server lets it live).
    if (why === undefined && !settings.strict) return
    const reason = why ?? (relay.isIdle ? 'it could not be moved' : 'it was busy (a transaction or a long query)')
    log.warn({ leaseId: mover.credential.leaseId, why: reason }, 'closing a session whose credential ends')
    metrics.sessionMoved('swap', 'closed')
    relay.stop('credential_expired', credentialEndedFarewell(mover.credential.origin, why, reason))
  }

  /** Follows the credential of the connection serving the session, through the session's dispatcher. */
  private follow(hold: CredentialHold): void {
    hold.onChange(() => this.options.host.credential('credential_changed', hold))
    this.credentialChanged(hold)
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
      () => this.options.host.credential('credential_ending', hold),
      hold.endsAt - HARD_END_MARGIN_MS - Date.now(),
    )
  }

  private swapDue(): boolean {
    return this.options.mover.connection.hold.superseded && Date.now() >= this.swapAfter
  }

  private retryLater(): void {
    this.swapAfter = Date.now() + RETRY_SWAP_MS
    this.wakeAfter(RETRY_SWAP_MS)
  }

  /** The swap is due: log in with the current credential first, then move at the next idle point. */
  private prepare(): void {
    if (this.preparing) return
    this.preparing = true
    const { credentials, log, metrics, relay, mover } = this.options
    const old = mover.connection
    void (async () => {
      let next: ServerConnection | undefined
      try {
        const credential = await credentials.get()
        if (credential !== old.credential && !this.ended) next = await mover.prepare(credential)
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
      if (this.ended || mover.connection !== old) {
        mover.discard(next)
        return
      }
      this.ready = next
      if (relay.isIdle) this.onIdle()
    })()
  }

  private dropNext(): void {
    if (this.ready) this.options.mover.discard(this.ready)
    this.ready = undefined
  }

  /** The state probe on the suspended upstream; an answer it could not read is probed again a little later. */
  private async probe(socket: Socket): Promise<void> {
    const unread = await this.options.mover.probe(socket)
    if (unread === undefined) return
    this.probeAfter = Date.now() + RETRY_PROBE_MS
    this.options.log.warn({ err: unread }, 'the session state probe failed; will retry')
  }

  /** Probes the session's state at an idle point so an unplanned reconnect can rebuild it. */
  private async refreshSnapshot(): Promise<void> {
    const { relay, host, mover } = this.options
    host.report('probe_started')
    const socket = relay.suspend()
    try {
      await this.probe(socket)
    } catch (err) {
      this.settle()
      if (isClosed(socket)) this.lostWhileSuspended(socket, err)
      else this.options.log.warn({ err: (err as Error).message }, 'the session state probe failed')
      if (!relay.isFinished && !isClosed(socket)) relay.resume()
      return
    }
    relay.resume()
    this.settle()
    this.armEnd(mover.connection.hold)
    if (relay.isIdle) this.options.idle()
  }

  /** The planned move onto `next`, at an idle point: probe, and if the session can move, replay, switch and retire. */
  private async swap(next: ServerConnection): Promise<void> {
    const { relay, state, log, metrics, host, mover } = this.options
    if (this.moving || this.ended || !relay.isIdle) {
      mover.discard(next)
      return
    }
    host.report('probe_started')
    const old = mover.connection
    const socket = relay.suspend()
    let pending: ServerConnection | undefined = next
    try {
      await this.probe(socket)
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
        const rebuilt = await mover.rebuild(next)
        if (relay.isFinished || this.ended) throw new Error('the client left during the move')
        this.switchTo(next, rebuilt)
        pending = undefined
        mover.retire(socket, old)
        metrics.sessionMoved('swap', 'moved')
        log.info(
          { from: old.credential.username, to: mover.credential.username, upstreamPid: mover.upstream.processId },
          'session moved to a new credential',
        )
      }
    } catch (err) {
      this.settle()
      if (relay.isFinished || this.ended) {
        if (pending) mover.discard(pending)
        return
      }
      if (isClosed(socket)) {
        // The old upstream died under the probe: the new connection is as good as any for the reconnect.
        if (pending) mover.discard(pending)
        this.lostWhileSuspended(socket, err)
        return
      }
      metrics.sessionMoved('swap', 'failed')
      log.warn({ err: (err as Error).message }, 'could not move the session to the new credential; will retry')
      this.retryLater()
      relay.resume()
    }
    if (pending) mover.discard(pending)
    this.settle()
    // Still on the old credential (blocked, failed): its end may have come meanwhile.
    if (mover.connection === old) this.armEnd(old.hold)
    if (relay.isIdle) this.options.idle()
  }

  /** The relay runs on `next` now; its credential is the one to follow. */
  private switchTo(next: ServerConnection, rebuilt: Rebuilt): void {
    this.options.mover.switchTo(next, rebuilt)
    this.follow(next.hold)
  }

  /** Decides about a lost upstream; when it can, starts the reconnect (or parks until the client speaks). */
  private takeOver(loss: UpstreamLoss, idle: boolean): LossDecision {
    const { relay, state, metrics, log, host, mover } = this.options
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
      mover.connection.hold.release()
      setImmediate(() =>
        relay.wakeOnClientData(() => {
          host.report('move_started')
          void this.reconnect(loss)
        }),
      )
      return { kind: 'reconnect' }
    }
    log.info({ loss, upstreamPid: mover.upstream.processId }, 'upstream connection lost at an idle point; reconnecting')
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

  /** After an unplanned loss: log in again and rebuild the last probed state, or end the session with the reason. */
  private async reconnect(loss: UpstreamLoss): Promise<void> {
    const { relay, metrics, log, mover } = this.options
    const old = mover.connection
    const deadline = Date.now() + RECONNECT_BUDGET_MS
    let next: ServerConnection | undefined
    // pg_terminate_backend may be the start of the credential's revocation: log in with another.
    if (loss.sqlState === '57P01') this.options.credentials.distrust?.(old.credential)
    try {
      next = await mover.reconnect(deadline)
      const rebuilt = await mover.rebuild(next)
      if (relay.isFinished || this.ended) throw new Error('the client left during the reconnect')
      this.switchTo(next, rebuilt)
      next = undefined
      old.hold.release()
      metrics.sessionMoved('reconnect', 'moved')
      log.info({ upstreamPid: mover.upstream.processId, user: mover.credential.username }, 'session reconnected')
    } catch (err) {
      if (next) mover.discard(next)
      this.settle()
      if (relay.isFinished || this.ended) return
      metrics.sessionMoved('reconnect', 'failed')
      const why = (err as Error).message
      log.warn({ err: why, loss }, 'could not reconnect the session')
      relay.stop('upstream_lost', reconnectFailedFarewell(loss, why))
      return
    }
    this.settle()
    this.options.idle()
  }

  /** The suspended upstream died while a step was talking to it: an unplanned loss at an idle point. */
  private lostWhileSuspended(socket: Socket, err: unknown): void {
    const { relay, settings } = this.options
    socket.destroy()
    if (relay.isFinished || this.ended) return
    const { loss, fatal } = lossOf(err)
    const decision: LossDecision = settings.reconnect
      ? this.takeOver(loss, true)
      : { kind: 'end', why: 'rotation.reconnect is off.' }
    if (decision.kind === 'reconnect') return
    relay.stop('upstream_lost', lostWhileMovingFarewell(fatal, (err as Error).message, decision.why))
  }
}
