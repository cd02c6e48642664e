import type { Socket } from 'node:net'
import { decodeErrorFields, decodeParameterStatus, type ErrorFields } from '../pgwire/backend-messages.js'
import { BackendCode, FrontendCode, type TransactionStatus } from '../pgwire/codes.js'
import { MessageFramer, ProtocolViolation } from '../pgwire/message-framer.js'
import type { SessionState } from './session-state.js'
import { MAX_TRACKED_RUNS, type TransactionTracker } from './transaction-tracker.js'

// PostgreSQL's own limits (src/backend/tcop/postgres.c SocketBackend): large messages up to 1 GB - 1,
// control messages up to 10000 bytes.
const LARGE_MESSAGE_LIMIT = 0x3fff_ffff
const SMALL_MESSAGE_LIMIT = 10_000
const FRONTEND_LARGE = new Set<number>([
  FrontendCode.Query,
  FrontendCode.Parse,
  FrontendCode.Bind,
  FrontendCode.FunctionCall,
  FrontendCode.CopyData,
])
const FRONTEND_KNOWN = new Set<number>([...FRONTEND_LARGE, ...[0x43, 0x44, 0x45, 0x48, 0x53, 0x58, 0x63, 0x66, 0x70]])
// R K Z T N A G W I V n s t 1 2 3 v S E C D H d c
const BACKEND_KNOWN = new Set<number>(Array.from('RKZTNAGWIVnst123vSECDHdc', (c) => c.charCodeAt(0)))
const TERMINATE = Buffer.from([FrontendCode.Terminate, 0, 0, 0, 4])
/** Zero bytes, shared: what a relay holds once pending bytes were passed on. */
const NO_BYTES = Buffer.alloc(0)
/** NotificationResponse payloads are at most 8000 bytes plus a channel name. */
const MAX_INSPECTED = 16 * 1024
/** Client Query/Parse messages up to this size are read for session state; longer ones mark it unknown. */
const MAX_CLIENT_INSPECTED = 64 * 1024

// How each side is framed, shared by every relay: only `onMessage` belongs to one relay.
const isFrontendCode = (code: number): boolean => FRONTEND_KNOWN.has(code)
const frontendMaxLength = (code: number): number =>
  FRONTEND_LARGE.has(code) ? LARGE_MESSAGE_LIMIT : SMALL_MESSAGE_LIMIT
/** Client messages read whole when the session's state is followed. */
const changesState = (code: number): boolean =>
  code === FrontendCode.Query || code === FrontendCode.Parse || code === FrontendCode.Close
const readsNothingWhole = (): boolean => false
const UPSTREAM_FRAMING = {
  isKnownCode: (code: number): boolean => BACKEND_KNOWN.has(code),
  maxLength: (): number => LARGE_MESSAGE_LIMIT,
  wantsWhole: (code: number): boolean =>
    code === BackendCode.ReadyForQuery ||
    code === BackendCode.NotificationResponse ||
    code === BackendCode.ErrorResponse ||
    code === BackendCode.NoticeResponse ||
    code === BackendCode.ParameterStatus,
  maxInspectLength: MAX_INSPECTED,
} as const

/** The upstream connection a relay runs on; replaced when the session moves (docs/rotation.md). */
export interface RelayUpstream {
  socket: Socket
  /** Bytes already read from it, forwarded before anything else. */
  pending: Buffer
  processId: number
}

/**
 * What to do with an upstream ErrorResponse or NoticeResponse. `fatal` (the server's words) says
 * the upstream ends the session: it is the end's detail, and the connection is not kept for the
 * pool. `replace` writes `bytes` in the message's place; `take_over` withholds it, and the relay
 * drops the upstream and waits, suspended, for resume() or stop().
 */
export type UpstreamAnswer =
  { kind: 'forward'; fatal?: string } | { kind: 'replace'; bytes: Buffer; fatal: string } | { kind: 'take_over' }

/** What to do once the upstream closed without a word: take over as above, or end with `farewell` written to the client. */
export type UpstreamClosedAnswer = 'take_over' | { farewell: Buffer }

export interface RelayOptions {
  client: Socket
  upstream: RelayUpstream
  /** Bytes already read from the client during startup, forwarded before anything else. */
  clientPending: Buffer
  tracker: TransactionTracker
  /** The pid the client was given instead of the upstream's (see rewriteNotifyPid). */
  clientProcessId: number
  /** ParameterStatus values the client was sent at startup; kept current as more pass. */
  parameters: Map<string, string>
  /** Told about client messages that may change session state, so it can be rebuilt elsewhere. */
  state?: SessionState
  /** Every upstream ErrorResponse and NoticeResponse (read whole, fields decoded): see UpstreamAnswer. */
  onUpstreamNotice: (code: number, fields: ErrorFields) => UpstreamAnswer
  /**
   * The upstream closed, or its socket failed (`errorCode`), with nothing said: not after a FATAL,
   * nor the client's Terminate, nor half-way through a message (then the relay just ends).
   */
  onUpstreamClosed: (errorCode: string | undefined) => UpstreamClosedAnswer
  /** The FATAL to write to the client when a side broke the protocol (`what`: the framer's words). */
  violationFarewell: (side: 'client' | 'upstream', what: string) => Buffer
  /** Called after upstream bytes were passed to the client, whenever the session is then idle (see isIdle). */
  onIdle?: () => void
  /** Called for every chunk the client sends. */
  onClientData?: () => void
  /**
   * The client sent Terminate while nothing was under way on the upstream connection. The session
   * answers: true keeps that connection for the pool (it is not sent the Terminate, and is detached,
   * not closed, when the relay ends); false forwards the Terminate as usual.
   */
  onClientTerminate?: () => boolean
  /** Once, when the session outgrows what the proxy follows (see TransactionTracker, SESSION_BOUNDS). */
  onOutgrown?: (why: string) => void
}

export type RelayEndReason =
  | 'client_terminated'
  | 'client_closed'
  | 'client_protocol_violation'
  | 'upstream_fatal'
  | 'upstream_closed'
  | 'upstream_protocol_violation'
  | 'shutdown'
  | 'idle_timeout'
  /** The upstream went away and the session could not be reconnected. */
  | 'upstream_lost'
  /** The session's credential ended and it could not move to a new one. */
  | 'credential_expired'
  /** The proxy failed in this session's code (src/proxy/session-boundary.ts). */
  | 'internal_error'

export interface RelayResult {
  reason: RelayEndReason
  detail?: string
  /** The upstream connection was left open, detached, for the pool (see RelayOptions.onClientTerminate). */
  upstreamKept: boolean
  bytesFromClient: number
  bytesFromUpstream: number
}

/**
 * Relays a running session in both directions, framing by message headers only. Each side is
 * paused while the other cannot take more (backpressure), so a slow reader never makes the proxy
 * buffer without bound. One idempotent `finish` closes both sockets, whichever side ends first.
 *
 * A byte pump that decides nothing: it reports what it sees (client data, idle points, the
 * upstream's errors and notices, its close, a client's Terminate) and does what the session
 * answers, writing the bytes the session gives it; the session's dispatcher decides
 * (src/proxy/client-session.ts, src/proxy/upstream-loss.ts). It can be suspended from one
 * upstream connection and resumed on another (a move).
 */
export class Relay {
  readonly done: Promise<RelayResult>
  private finished = false
  private resolveDone!: (result: RelayResult) => void
  private bytesFromClient = 0
  private bytesFromUpstream = 0
  private clientSentTerminate = false
  /** The client's Terminate was kept from the upstream, which is to be handed back, not closed. */
  private keepingUpstream = false
  /** The session outgrew what the proxy follows, and said so. */
  private outgrown = false
  private kept = false
  private upstreamSentFatal: string | undefined
  private readonly clientFramer: MessageFramer
  private upstreamFramer: MessageFramer
  private upstream: RelayUpstream
  /** Relaying is paused at an idle point while the session talks to an upstream itself. */
  private suspended = false
  /** The upstream announced its end and the session took over: the rest of its bytes are ignored. */
  private upstreamLost = false
  /** What the session wrote in place of an upstream message, written after the bytes before it. */
  private replacement: Buffer | undefined
  /** Set while a lost session waits for its client to speak before reconnecting. */
  private wake: (() => void) | undefined
  /** Messages for the client that must wait for a message boundary in the upstream stream. */
  private readonly toClient: Buffer[] = []
  private readonly upstreamListeners = {
    data: (chunk: Buffer): void => this.onUpstreamData(chunk),
    end: (): void => this.sideEnded('upstream'),
    error: (err: NodeJS.ErrnoException): void => this.sideEnded('upstream', err),
  }

  constructor(private readonly options: RelayOptions) {
    this.done = new Promise((resolve) => (this.resolveDone = resolve))
    this.upstream = options.upstream
    const { tracker, state } = options
    this.clientFramer = new MessageFramer({
      isKnownCode: isFrontendCode,
      maxLength: frontendMaxLength,
      wantsWhole: state ? changesState : readsNothingWhole,
      maxInspectLength: state ? MAX_CLIENT_INSPECTED : 0,
      onMessage: (code, whole) => {
        // Nothing a client sends after its Terminate reaches a connection kept for the next client.
        if (this.keepingUpstream) return false
        if (code === FrontendCode.Terminate) {
          this.clientSentTerminate = true
          if (this.mayKeepUpstream() && options.onClientTerminate?.()) {
            this.keepingUpstream = true
            return false
          }
        }
        if (state) {
          if (whole) state.onClientMessage(code, whole)
          else if (code === FrontendCode.Bind) state.onBind()
          else if (code === FrontendCode.Query || code === FrontendCode.Parse) state.onUninspected()
        }
        tracker.onFrontend(code)
        if (!this.outgrown && (tracker.overflowed || state?.exceeded)) this.reportOutgrown()
      },
    })
    this.upstreamFramer = this.newUpstreamFramer()
  }

  private newUpstreamFramer(): MessageFramer {
    return new MessageFramer({ ...UPSTREAM_FRAMING, onMessage: (code, whole) => this.onUpstreamMessage(code, whole) })
  }

  start(): this {
    const { client, clientPending } = this.options
    client.on('data', (chunk: Buffer) => this.onClientData(chunk))
    client.on('end', () => this.sideEnded('client'))
    client.on('close', () => this.sideEnded('client'))
    client.on('error', (err: NodeJS.ErrnoException) => this.sideEnded('client', err))
    if (clientPending.length > 0) client.unshift(clientPending)
    // Passed on: holding it would keep the chunk it was cut from for the life of the session.
    this.options.clientPending = NO_BYTES
    this.attachUpstream(this.upstream)
    client.resume()
    return this
  }

  /** The pid of the upstream backend now serving the session. */
  get upstreamProcessId(): number {
    return this.upstream.processId
  }

  get isFinished(): boolean {
    return this.finished
  }

  /** The relay ended and left its upstream connection open for the pool. */
  get upstreamKept(): boolean {
    return this.finished && this.kept
  }

  /** Bytes relayed so far in each direction, read by the metrics at scrape time. */
  get bytesRelayed(): { bytesFromClient: number; bytesFromUpstream: number } {
    return { bytesFromClient: this.bytesFromClient, bytesFromUpstream: this.bytesFromUpstream }
  }

  /**
   * At an idle point: stop reading the client and stop relaying the upstream, and hand its socket
   * to the caller (to probe it, or to retire it). Until resume(), nothing reaches the upstream.
   */
  suspend(): Socket {
    if (!this.isIdle || this.suspended) throw new Error('the relay can only be suspended at an idle point')
    this.suspended = true
    this.options.client.pause()
    this.detachUpstream()
    return this.upstream.socket
  }

  /** Relays again, on the same upstream after a probe, or on `next` after a move or reconnect. */
  resume(next?: RelayUpstream): void {
    if (!this.suspended || this.finished) return
    this.suspended = false
    this.upstreamLost = false
    if (next) {
      this.upstream = next
      this.upstreamFramer = this.newUpstreamFramer()
    }
    this.attachUpstream(this.upstream)
    this.flushToClient()
    this.options.client.resume()
  }

  /**
   * While suspended after the upstream was lost: call `wake` once the client sends something (its
   * bytes wait for resume()). A client that only says goodbye (Terminate) is let go without a reconnect.
   */
  wakeOnClientData(wake: () => void): void {
    if (!this.suspended || this.finished) return
    this.wake = wake
    this.options.client.resume()
  }

  /** Whole messages for the client (a notification, a ParameterStatus), sent at the next message boundary. */
  sendToClient(messages: Buffer): void {
    if (this.finished) return
    this.toClient.push(messages)
    this.flushToClient()
  }

  private flushToClient(): void {
    if (this.toClient.length === 0 || (!this.suspended && this.upstreamFramer.isMidMessage)) return
    for (const message of this.toClient.splice(0)) {
      if (message[0] === BackendCode.ParameterStatus) this.noteParameter(message)
      this.options.client.write(message)
    }
  }

  private attachUpstream(upstream: RelayUpstream): void {
    const { socket, pending } = upstream
    socket.on('data', this.upstreamListeners.data)
    socket.on('end', this.upstreamListeners.end)
    socket.on('close', this.upstreamListeners.end)
    socket.on('error', this.upstreamListeners.error)
    if (pending.length > 0) socket.unshift(pending)
    upstream.pending = NO_BYTES
    socket.resume()
  }

  private detachUpstream(): void {
    const { socket } = this.upstream
    socket.off('data', this.upstreamListeners.data)
    socket.off('end', this.upstreamListeners.end)
    socket.off('close', this.upstreamListeners.end)
    socket.off('error', this.upstreamListeners.error)
    if (socket.listenerCount('error') === 0) socket.on('error', () => {})
    socket.pause()
  }

  private onClientData(chunk: Buffer): void {
    const { onClientData } = this.options
    if (this.wake) {
      const wake = this.wake
      this.wake = undefined
      if (chunk.length === 5 && chunk[0] === FrontendCode.Terminate) {
        this.clientSentTerminate = true
        this.finish('client_terminated')
        return
      }
      this.options.client.pause()
      this.options.client.unshift(chunk)
      wake()
      return
    }
    this.bytesFromClient += chunk.length
    onClientData?.()
    let out: Buffer
    try {
      out = this.clientFramer.push(chunk)
    } catch (err) {
      if (!(err instanceof ProtocolViolation)) throw err
      if (err.forwardable.length > 0) this.upstream.socket.write(err.forwardable)
      this.violation('client', err)
      return
    }
    const upstream = this.upstream.socket
    if (out.length > 0 && !upstream.write(out)) {
      const client = this.options.client
      client.pause()
      upstream.once('drain', () => {
        if (!this.suspended && this.upstream.socket === upstream) client.resume()
      })
    }
    // The server would close the connection on Terminate; the proxy closes the client's side itself.
    if (this.keepingUpstream) this.finish('client_terminated')
  }

  private onUpstreamData(chunk: Buffer): void {
    const { onIdle, client } = this.options
    this.bytesFromUpstream += chunk.length
    let out: Buffer
    try {
      out = this.upstreamFramer.push(chunk)
    } catch (err) {
      if (!(err instanceof ProtocolViolation)) throw err
      if (err.forwardable.length > 0) client.write(err.forwardable)
      this.violation('upstream', err)
      return
    }
    if (out.length > 0 && !client.write(out)) {
      const upstream = this.upstream.socket
      upstream.pause()
      client.once('drain', () => {
        if (!this.suspended && this.upstream.socket === upstream) upstream.resume()
      })
    }
    if (this.replacement) {
      client.write(this.replacement)
      this.replacement = undefined
    }
    if (this.upstreamLost) {
      // The session took over after the upstream announced its end: stop listening to it.
      this.loseUpstream()
      return
    }
    this.flushToClient()
    // After the write, so whatever the idle handler sends lands after the ReadyForQuery.
    if (onIdle && this.isIdle) onIdle()
  }

  /**
   * Waiting for the client's next command outside any transaction, where PostgreSQL itself applies
   * idle_session_timeout: nothing outstanding, no COPY, no open extended-query batch, status I, and
   * no message half-way through in either direction.
   */
  get isIdle(): boolean {
    return (
      !this.finished &&
      !this.suspended &&
      this.options.tracker.isIdle &&
      !this.clientFramer.isMidMessage &&
      !this.upstreamFramer.isMidMessage
    )
  }

  private reportOutgrown(): void {
    this.outgrown = true
    const why = this.options.tracker.overflowed
      ? `more than ${MAX_TRACKED_RUNS} unanswered pipelined requests`
      : (this.options.state?.exceeded ?? '')
    this.options.onOutgrown?.(why)
  }

  /** Nothing is under way on the upstream, so it can serve another client once reset. */
  private mayKeepUpstream(): boolean {
    return (
      !this.suspended &&
      !this.upstreamLost &&
      this.upstreamSentFatal === undefined &&
      this.options.tracker.isIdle &&
      !this.upstreamFramer.isMidMessage
    )
  }

  /** Ends the session from outside: the client is sent `farewell` (unless mid-message), the upstream gets Terminate. */
  stop(
    reason: 'shutdown' | 'idle_timeout' | 'upstream_lost' | 'credential_expired' | 'internal_error',
    farewell: Buffer,
  ): void {
    if (this.finished) return
    if (!this.upstreamFramer.isMidMessage) this.options.client.write(farewell)
    this.finish(reason)
  }

  /** Returns false to keep a message from the client (withheld or replaced, as the session answered). */
  private onUpstreamMessage(code: number, whole: Buffer | undefined): boolean {
    const { tracker } = this.options
    if (this.upstreamLost) return false
    switch (code) {
      case BackendCode.ReadyForQuery:
        tracker.onBackend(code, whole ? (String.fromCharCode(whole[5] ?? 0x49) as TransactionStatus) : undefined)
        return true
      case BackendCode.NotificationResponse:
        if (whole && whole.length >= 9) rewriteNotifyPid(whole, this.upstream.processId, this.options.clientProcessId)
        break
      case BackendCode.ParameterStatus:
        if (whole) this.noteParameter(whole)
        break
      case BackendCode.ErrorResponse:
      case BackendCode.NoticeResponse: {
        if (!whole) break
        const answer = this.options.onUpstreamNotice(code, decodeErrorFields(whole.subarray(5)))
        if (answer.kind === 'take_over') {
          this.upstreamLost = true
          return false
        }
        if (answer.fatal !== undefined) this.upstreamSentFatal = answer.fatal
        if (answer.kind === 'replace') {
          this.replacement = answer.bytes
          return false
        }
        break
      }
    }
    tracker.onBackend(code)
    return true
  }

  private noteParameter(message: Buffer): void {
    const reported = decodeParameterStatus(message.subarray(5))
    if (reported) this.options.parameters.set(...reported)
  }

  /** The session took over a lost upstream: drop it, keep the client waiting (paused) for resume() or stop(). */
  private loseUpstream(): void {
    this.suspended = true
    this.options.client.pause()
    this.detachUpstream()
    this.upstream.socket.destroy()
  }

  private violation(side: 'client' | 'upstream', err: ProtocolViolation): void {
    const { client, violationFarewell } = this.options
    if (side === 'client') {
      if (!this.upstreamFramer.isMidMessage) client.write(violationFarewell('client', err.message))
      this.finish('client_protocol_violation', err.message)
    } else {
      client.write(violationFarewell('upstream', err.message))
      this.finish('upstream_protocol_violation', err.message)
    }
  }

  private sideEnded(side: 'client' | 'upstream', err?: NodeJS.ErrnoException): void {
    if (this.finished) return
    if (side === 'client') {
      this.finish(this.clientSentTerminate ? 'client_terminated' : 'client_closed', err?.code)
      return
    }
    if (this.upstreamSentFatal !== undefined) {
      this.finish('upstream_fatal', this.upstreamSentFatal)
      return
    }
    // After the client's Terminate the upstream closing is the expected end: nothing more to say.
    if (this.clientSentTerminate) {
      this.finish('client_terminated')
      return
    }
    // The upstream vanished without a word (a socket error, a killed server): the session may take
    // over, or says what to tell the client. Half-way through a message, nothing more can be said.
    if (!this.upstreamFramer.isMidMessage) {
      const answer = this.options.onUpstreamClosed(err?.code)
      if (answer === 'take_over') {
        this.loseUpstream()
        return
      }
      this.options.client.write(answer.farewell)
    }
    this.finish('upstream_closed', err?.code)
  }

  private finish(reason: RelayEndReason, detail?: string): void {
    if (this.finished) return
    this.finished = true
    const { client } = this.options
    const upstream = this.upstream.socket
    const kept = this.keepingUpstream && this.mayKeepUpstream() && !upstream.destroyed
    this.kept = kept
    if (kept) this.detachUpstream()
    // A clean Terminate lets the server end the session without logging an unexpected EOF.
    else if (
      (this.keepingUpstream || !this.clientSentTerminate) &&
      !upstream.destroyed &&
      !this.clientFramer.isMidMessage
    )
      upstream.end(TERMINATE)
    else upstream.end()
    client.end()
    // Sockets that do not close promptly (a peer that never reads) are destroyed.
    setTimeout(() => {
      client.destroy()
      if (!kept) upstream.destroy()
    }, 5_000).unref()
    this.resolveDone({
      reason,
      upstreamKept: kept,
      ...(detail !== undefined ? { detail } : {}),
      bytesFromClient: this.bytesFromClient,
      bytesFromUpstream: this.bytesFromUpstream,
    })
  }
}

/**
 * Applications that LISTEN and NOTIFY on one connection compare the notifying pid with their own
 * (from BackendKeyData). The client was given a proxy-issued pid, so notifications from its own
 * upstream backend carry that pid instead. Patched in place: the bytes are ours until written.
 */
export function rewriteNotifyPid(message: Buffer, upstreamPid: number, clientPid: number): void {
  if (message.readUInt32BE(5) === upstreamPid) message.writeUInt32BE(clientPid, 5)
}
