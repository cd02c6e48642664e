import type { Socket } from 'node:net'
import { decodeErrorFields, encodeErrorResponse, errorFields } from '../pgwire/backend-messages.js'
import { BackendCode, FrontendCode, type TransactionStatus } from '../pgwire/codes.js'
import { MessageFramer, ProtocolViolation } from '../pgwire/message-framer.js'
import type { TransactionTracker } from './transaction-tracker.js'

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
/** NotificationResponse payloads are at most 8000 bytes plus a channel name. */
const MAX_INSPECTED = 16 * 1024

export interface RelayOptions {
  client: Socket
  upstream: Socket
  /** Bytes already read from each side during startup, forwarded before anything else. */
  clientPending: Buffer
  upstreamPending: Buffer
  tracker: TransactionTracker
  /** The upstream backend's pid, and the pid the client was given instead (see rewriteNotifyPid). */
  upstreamProcessId: number
  clientProcessId: number
  /** Called after upstream bytes were passed to the client, whenever the session is then idle (see isIdle). */
  onIdle?: () => void
  /** Called for every chunk the client sends. */
  onClientData?: () => void
  /** Counts bytes as they pass, so long sessions show up in metrics before they end. */
  meter?: { bytesFromClient(n: number): void; bytesFromUpstream(n: number): void }
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

export interface RelayResult {
  reason: RelayEndReason
  detail?: string
  bytesFromClient: number
  bytesFromUpstream: number
}

/**
 * Relays a running session in both directions, framing by message headers only. Each side is
 * paused while the other cannot take more (backpressure), so a slow reader never makes the proxy
 * buffer without bound. One idempotent `finish` closes both sockets, whichever side ends first.
 */
export class Relay {
  readonly done: Promise<RelayResult>
  private finished = false
  private resolveDone!: (result: RelayResult) => void
  private bytesFromClient = 0
  private bytesFromUpstream = 0
  private clientSentTerminate = false
  private upstreamSentFatal: string | undefined
  private readonly clientFramer: MessageFramer
  private readonly upstreamFramer: MessageFramer

  constructor(private readonly options: RelayOptions) {
    this.done = new Promise((resolve) => (this.resolveDone = resolve))
    const { tracker } = options
    this.clientFramer = new MessageFramer({
      isKnownCode: (code) => FRONTEND_KNOWN.has(code),
      maxLength: (code) => (FRONTEND_LARGE.has(code) ? LARGE_MESSAGE_LIMIT : SMALL_MESSAGE_LIMIT),
      wantsWhole: () => false,
      maxInspectLength: 0,
      onMessage: (code) => {
        if (code === FrontendCode.Terminate) this.clientSentTerminate = true
        tracker.onFrontend(code)
      },
    })
    this.upstreamFramer = new MessageFramer({
      isKnownCode: (code) => BACKEND_KNOWN.has(code),
      maxLength: () => LARGE_MESSAGE_LIMIT,
      wantsWhole: (code) =>
        code === BackendCode.ReadyForQuery ||
        code === BackendCode.NotificationResponse ||
        code === BackendCode.ErrorResponse,
      maxInspectLength: MAX_INSPECTED,
      onMessage: (code, whole) => this.onUpstreamMessage(code, whole),
    })
  }

  start(): this {
    const { client, upstream, clientPending, upstreamPending, onIdle, onClientData, meter } = this.options
    this.pipe(client, upstream, this.clientFramer, 'client', (n) => {
      this.bytesFromClient += n
      meter?.bytesFromClient(n)
      onClientData?.()
    })
    this.pipe(
      upstream,
      client,
      this.upstreamFramer,
      'upstream',
      (n) => {
        this.bytesFromUpstream += n
        meter?.bytesFromUpstream(n)
      },
      // After the write, so whatever the idle handler sends lands after the ReadyForQuery.
      () => {
        if (onIdle && this.isIdle) onIdle()
      },
    )
    if (clientPending.length > 0) client.unshift(clientPending)
    if (upstreamPending.length > 0) upstream.unshift(upstreamPending)
    client.resume()
    upstream.resume()
    return this
  }

  /**
   * Waiting for the client's next command outside any transaction, where PostgreSQL itself applies
   * idle_session_timeout: nothing outstanding, no COPY, no open extended-query batch, status I, and
   * no message half-way through in either direction.
   */
  get isIdle(): boolean {
    return (
      !this.finished &&
      this.options.tracker.isIdle &&
      !this.clientFramer.isMidMessage &&
      !this.upstreamFramer.isMidMessage
    )
  }

  /** Ends the session from outside: the client is told why (unless mid-message), the upstream gets Terminate. */
  stop(
    reason: 'shutdown' | 'idle_timeout' = 'shutdown',
    fields = errorFields({
      severity: 'FATAL',
      sqlState: '57P01',
      message: 'terminating connection: pg-vault-proxy is shutting down',
    }),
  ): void {
    if (this.finished) return
    if (!this.upstreamFramer.isMidMessage) this.options.client.write(encodeErrorResponse(fields))
    this.finish(reason)
  }

  private onUpstreamMessage(code: number, whole: Buffer | undefined): void {
    const { tracker } = this.options
    if (code === BackendCode.ReadyForQuery) {
      tracker.onBackend(code, whole ? (String.fromCharCode(whole[5] ?? 0x49) as TransactionStatus) : undefined)
      return
    }
    if (code === BackendCode.NotificationResponse && whole && whole.length >= 9) {
      rewriteNotifyPid(whole, this.options.upstreamProcessId, this.options.clientProcessId)
    }
    if (code === BackendCode.ErrorResponse && whole) {
      const fields = decodeErrorFields(whole.subarray(5))
      const severity = fields.get('V') ?? fields.get('S')
      if (severity === 'FATAL' || severity === 'PANIC')
        this.upstreamSentFatal = `${fields.get('C') ?? '?'} ${fields.get('M') ?? ''}`
    }
    tracker.onBackend(code)
  }

  private pipe(
    from: Socket,
    to: Socket,
    framer: MessageFramer,
    side: 'client' | 'upstream',
    count: (n: number) => void,
    afterWrite?: () => void,
  ): void {
    from.on('data', (chunk: Buffer) => {
      count(chunk.length)
      let out: Buffer
      try {
        out = framer.push(chunk)
      } catch (err) {
        if (!(err instanceof ProtocolViolation)) throw err
        // Whole messages before the bad header still go through, so anything written next lands on a boundary.
        if (err.forwardable.length > 0) to.write(err.forwardable)
        this.violation(side, err)
        return
      }
      if (out.length > 0 && !to.write(out)) {
        from.pause()
        to.once('drain', () => from.resume())
      }
      afterWrite?.()
    })
    from.on('end', () => this.sideEnded(side))
    from.on('close', () => this.sideEnded(side))
    from.on('error', (err: NodeJS.ErrnoException) => this.sideEnded(side, err))
    to.on('error', () => {}) // reported through the 'from' handlers of that socket
  }

  private violation(side: 'client' | 'upstream', err: ProtocolViolation): void {
    const { client } = this.options
    if (side === 'client') {
      if (!this.upstreamFramer.isMidMessage) {
        client.write(encodeErrorResponse(errorFields({ severity: 'FATAL', sqlState: '08P01', message: err.message })))
      }
      this.finish('client_protocol_violation', err.message)
    } else {
      client.write(
        encodeErrorResponse(
          errorFields({
            severity: 'FATAL',
            sqlState: '08006',
            message: `pg-vault-proxy lost the connection to the upstream server: it sent an ${err.message}`,
          }),
        ),
      )
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
    // The upstream vanished without a word: tell the client, unless that would land mid-message.
    if (!this.upstreamFramer.isMidMessage) {
      this.options.client.write(
        encodeErrorResponse(
          errorFields({
            severity: 'FATAL',
            sqlState: '08006',
            message: `pg-vault-proxy lost the connection to the upstream server${err?.code ? ` (${err.code})` : ''}`,
            hint: 'The server may have restarted or the network failed; reconnect.',
          }),
        ),
      )
    }
    this.finish('upstream_closed', err?.code)
  }

  private finish(reason: RelayEndReason, detail?: string): void {
    if (this.finished) return
    this.finished = true
    const { client, upstream } = this.options
    // A clean Terminate lets the server end the session without logging an unexpected EOF.
    if (!this.clientSentTerminate && !upstream.destroyed && !this.clientFramer.isMidMessage) upstream.end(TERMINATE)
    else upstream.end()
    client.end()
    // Sockets that do not close promptly (a peer that never reads) are destroyed.
    setTimeout(() => {
      client.destroy()
      upstream.destroy()
    }, 5_000).unref()
    this.resolveDone({
      reason,
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
