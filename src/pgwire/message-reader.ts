import type { Socket } from 'node:net'
import { MAX_STARTUP_PACKET_BODY } from './codes.js'

/** The peer closed or broke the socket before a whole packet arrived. */
export class ConnectionClosedError extends Error {
  override name = 'ConnectionClosedError'
}

/** A length word that cannot be right: the peer is not speaking the protocol, or lost framing. */
export class FramingError extends Error {
  override name = 'FramingError'
}

/** A well-formed length word over the caller's limit: the caller may say which limit it was. */
export class MessageTooLongError extends FramingError {
  override name = 'MessageTooLongError'
  constructor(
    message: string,
    readonly length: number,
  ) {
    super(message)
  }
}

export interface TypedMessage {
  code: number
  /** The message body, without the type byte and length word. */
  body: Buffer
}

/**
 * Reads whole packets from a socket during the startup phases (client handshake, upstream login),
 * where the proxy decodes messages one at a time. It never buffers more than one packet beyond what
 * it was asked for: the socket is paused while nobody waits, so a peer cannot make us hold unbounded
 * data. After startup, `detach()` hands any bytes already read to the relay, so none are lost.
 */
interface SocketListeners {
  data: (chunk: Buffer) => void
  end: () => void
  error: (err: Error) => void
}

/** Zero bytes, shared: nothing can be written into it. */
const NO_BYTES = Buffer.alloc(0)

export class MessageReader {
  /** Received and not yet consumed: `buffered`, then the chunks in `arrived`, joined only once a read needs them. */
  private buffered: Buffer = NO_BYTES
  /**
   * Chunks received since the last join. Kept apart so a peer that sends a packet a byte at a time
   * costs linear time, not a copy of everything held so far per byte.
   */
  private arrived: Buffer[] = []
  private arrivedBytes = 0
  private ended: Error | undefined
  private wake: (() => void) | undefined
  /**
   * The socket listeners while reading. Dropped on detach: the session may keep this reader (and
   * so anything it holds) for as long as it lives.
   */
  private listeners: SocketListeners | undefined

  constructor(private socket: Socket) {
    socket.pause()
    this.attach(socket)
  }

  /** Continue reading from a new socket (after a TLS upgrade); no plaintext bytes may be pending. */
  replaceSocket(socket: Socket): void {
    this.detachListeners()
    this.socket = socket
    socket.pause()
    this.attach(socket)
  }

  /** How many bytes were received and not yet consumed. */
  get pendingBytes(): number {
    return this.buffered.length + this.arrivedBytes
  }

  /** Reads exactly one byte (the answer to SSLRequest). */
  async readByte(): Promise<number> {
    await this.fill(1)
    const byte = this.buffered[0] as number
    this.consume(1)
    return byte
  }

  /**
   * Reads a startup-phase packet (Int32 length including itself, then the body) and returns it whole.
   * Lengths outside PostgreSQL's limits throw FramingError, as the server closes on them.
   */
  async readStartupPacket(): Promise<Buffer> {
    await this.fill(4)
    const length = this.buffered.readUInt32BE(0)
    if (length < 8 || length - 4 > MAX_STARTUP_PACKET_BODY) {
      throw new FramingError(`invalid length of startup packet: ${length}`)
    }
    await this.fill(length)
    const packet = Buffer.from(this.buffered.subarray(0, length))
    this.consume(length)
    return packet
  }

  /** Reads one typed message (Byte1 code, Int32 length, body), refusing bodies over maxLength bytes. */
  async readMessage(maxLength: number): Promise<TypedMessage> {
    await this.fill(5)
    const code = this.buffered[0] as number
    const length = this.buffered.readUInt32BE(1)
    if (length < 4) throw new FramingError(`invalid message length ${length} for message type ${describeCode(code)}`)
    if (length - 4 > maxLength) {
      throw new MessageTooLongError(`invalid message length ${length} for message type ${describeCode(code)}`, length)
    }
    await this.fill(1 + length)
    const body = Buffer.from(this.buffered.subarray(5, 1 + length))
    this.consume(1 + length)
    return { code, body }
  }

  /**
   * Stops reading and returns whatever was received but not consumed. Nothing left is a shared empty
   * buffer: an empty slice of the last chunk read would keep that whole chunk alive for the session.
   */
  detach(): Buffer {
    this.detachListeners()
    this.join()
    const rest = this.buffered
    this.buffered = NO_BYTES
    return rest.length > 0 ? rest : NO_BYTES
  }

  private attach(socket: Socket): void {
    const listeners: SocketListeners = {
      data: (chunk) => {
        this.arrived.push(chunk)
        this.arrivedBytes += chunk.length
        this.socket.pause()
        this.notify()
      },
      end: () => {
        this.ended ??= new ConnectionClosedError('connection closed by peer')
        this.notify()
      },
      error: (err) => {
        this.ended ??= new ConnectionClosedError(`connection error: ${err.message}`, { cause: err })
        this.notify()
      },
    }
    this.listeners = listeners
    socket.on('data', listeners.data)
    socket.on('end', listeners.end)
    socket.on('close', listeners.end)
    socket.on('error', listeners.error)
  }

  private detachListeners(): void {
    const { listeners } = this
    if (!listeners) return
    this.listeners = undefined
    this.socket.off('data', listeners.data)
    this.socket.off('end', listeners.end)
    this.socket.off('close', listeners.end)
    this.socket.off('error', listeners.error)
    // Keep an error listener so a late socket error cannot crash the process before the next owner attaches.
    if (this.socket.listenerCount('error') === 0) this.socket.on('error', () => {})
  }

  private async fill(wanted: number): Promise<void> {
    while (this.buffered.length + this.arrivedBytes < wanted) {
      if (this.ended) throw this.ended
      await new Promise<void>((resolve) => {
        this.wake = resolve
        this.socket.resume()
      })
    }
    this.join()
  }

  /** Puts the chunks that arrived after `buffered` into it. */
  private join(): void {
    if (this.arrived.length === 0) return
    const parts = this.buffered.length === 0 ? this.arrived : [this.buffered, ...this.arrived]
    this.buffered = parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts)
    this.arrived = []
    this.arrivedBytes = 0
  }

  private consume(n: number): void {
    this.buffered = this.buffered.subarray(n)
  }

  private notify(): void {
    const wake = this.wake
    this.wake = undefined
    wake?.()
  }
}

export function describeCode(code: number): string {
  return code >= 0x20 && code < 0x7f ? `'${String.fromCharCode(code)}'` : `0x${code.toString(16).padStart(2, '0')}`
}
