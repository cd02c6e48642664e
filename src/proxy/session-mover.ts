import type { Socket } from 'node:net'
import { encodeMessage, encodeParameterStatus, type ErrorFields } from '../pgwire/backend-messages.js'
import { BackendCode, FrontendCode } from '../pgwire/codes.js'
import { MessageReader } from '../pgwire/message-reader.js'
import type { DbCredential } from '../vault/credential-source.js'
import { ProxyError } from './proxy-error.js'
import { releaseWhenClosed } from './release-when-closed.js'
import type { ServerConnection } from './server-connection.js'
import { rewriteNotifyPid, type Relay } from './relay.js'
import type { SessionState } from './session-state.js'
import { exchange, ExchangeClosedError } from './upstream-exchange.js'
import { announcement, type UpstreamLoss } from './upstream-loss.js'
import type { UpstreamSession } from './upstream-connector.js'

export interface SessionMoverOptions {
  relay: Relay
  state: SessionState
  /** The upstream the session started on. */
  login: ServerConnection
  /** Logs in a new upstream connection with `credential` and the session's startup parameters. */
  connect(credential: DbCredential): Promise<ServerConnection>
  /** The session's login: the current credential, and one fresh one if the upstream refuses it. */
  relogin(): Promise<ServerConnection>
  ownerRole: string
  /** The client's view of ParameterStatus values (the relay keeps it current). */
  clientParameters: Map<string, string>
  clientProcessId: number
  /** The session is over (its phase is closed): a login still retrying gives up. */
  isOver(): boolean
}

/** What a replay left on the new connection, for the switch. */
export interface Rebuilt {
  parameters: Map<string, string>
  notifications: Buffer[]
  pending: Buffer
}

/** Probes, replays and logins each get this long before a move is given up. */
export const STEP_TIMEOUT_MS = 10_000
const TERMINATE = Buffer.from([FrontendCode.Terminate, 0, 0, 0, 4])

/**
 * The steps that move one client session to another upstream connection (docs/rotation.md):
 * log in the next connection, probe the session's state on the suspended upstream, replay it on
 * the next one, switch the relay over, retire the old one. Each step does one thing when asked
 * and keeps no plan of its own: when a step runs, and what follows a failure, is decided by the
 * session's MovePlan (src/proxy/move-plan.ts). The one thing it keeps is the connection now
 * serving the session.
 */
export class SessionMover {
  private login: ServerConnection
  /** Moves done so far, for the session's audit line. */
  moves = 0

  constructor(private readonly options: SessionMoverOptions) {
    this.login = options.login
  }

  /** The server connection now serving the session. */
  get connection(): ServerConnection {
    return this.login
  }

  /** The upstream now serving the session (cancel requests go there). */
  get upstream(): UpstreamSession {
    return this.login.session
  }

  get credential(): DbCredential {
    return this.login.credential
  }

  /** Logs in the next connection with `credential` (a pooled one of it, if the pool has one ready). */
  prepare(credential: DbCredential): Promise<ServerConnection> {
    return this.options.connect(credential)
  }

  /**
   * Runs the state probe on the suspended upstream `socket` of the serving connection. The answer
   * becomes the state's snapshot; an answer it cannot read marks the state unknown and is returned
   * as the reason. Throws when the exchange itself fails (the upstream closed, a timeout).
   */
  async probe(socket: Socket): Promise<string | undefined> {
    const { state } = this.options
    const result = await exchange(socket, state.probeMessages(), 1, STEP_TIMEOUT_MS)
    this.passOn(result.notifications, this.login.session.processId, result.parameters)
    // Left in the socket for the relay (or the retirement) to read next.
    if (result.pending.length > 0) socket.unshift(result.pending)
    const row = result.rows[0]?.[0]
    try {
      if (result.error || typeof row !== 'string' || result.status !== 'I')
        throw new Error(result.error?.get('M') ?? 'no answer')
      state.acceptProbeResult(row)
      return undefined
    } catch (err) {
      // A cancel that landed on the probe, a tiny statement_timeout...
      state.markUnknown()
      return (err as Error).message
    }
  }

  /** Replays the session's state on a fresh connection; anything but a clean ReadyForQuery 'I' fails the move. */
  async rebuild(next: ServerConnection): Promise<Rebuilt> {
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

  /** Points the relay (and so cancels) at the rebuilt `next` and tells the client what changed; returns the old connection. */
  switchTo(next: ServerConnection, rebuilt: Rebuilt): ServerConnection {
    const old = this.login
    this.login = next
    this.moves++
    this.options.relay.resume({
      socket: next.session.socket,
      pending: rebuilt.pending,
      processId: next.session.processId,
    })
    this.passOn(rebuilt.notifications, next.session.processId, rebuilt.parameters)
    return old
  }

  /**
   * Ends the old connection politely, passing on notifications it still delivers until it closes,
   * then gives its credential back (which may revoke the lease).
   */
  retire(socket: Socket, old: ServerConnection): void {
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

  /** A connection the session will not use (a move given up): Terminate, and its credential back once it closed. */
  discard(next: ServerConnection): void {
    next.session.socket.end(TERMINATE)
    releaseWhenClosed(next.session.socket, next.hold, STEP_TIMEOUT_MS)
  }

  /** The session ended: its connection is closing (the relay closes it); its credential goes back once it has. */
  release(): void {
    releaseWhenClosed(this.login.session.socket, this.login.hold, STEP_TIMEOUT_MS)
  }

  /**
   * After an unplanned loss, the session's own login (a refused credential gets one fresh
   * credential); a server that is starting up or not listening yet is retried until `deadline`.
   */
  async reconnect(deadline: number): Promise<ServerConnection> {
    const { relay } = this.options
    let delay = 100
    for (;;) {
      if (this.options.isOver() || relay.isFinished) throw new Error('the session ended')
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
}

/** How a suspended upstream that failed under a step went away, and the FATAL it sent, if any. */
export function lossOf(err: unknown): { loss: UpstreamLoss; fatal: ErrorFields | undefined } {
  const fatal = err instanceof ExchangeClosedError ? err.fatal : undefined
  const sqlState = fatal?.get('C')
  const loss: UpstreamLoss = fatal
    ? { announced: announcement(fatal), ...(sqlState ? { sqlState } : {}) }
    : { errorCode: (err as NodeJS.ErrnoException).code ?? 'closed' }
  return { loss, fatal }
}

export function isClosed(socket: Socket): boolean {
  return socket.destroyed || socket.readableEnded || !socket.readable
}
