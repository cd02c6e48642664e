import { FramingError, describeCode } from './message-reader.js'

/** Zero bytes, shared. */
const NO_BYTES = Buffer.alloc(0)

/**
 * Reads the server's answer to a query the proxy sent itself (a pooled connection's reset, a
 * link's check) message by message, as chunks arrive. Each message is handed to `onMessage` as a
 * view into the chunk (valid during the call only), with no promise and no copy per message: a
 * new connection per request runs this twice per client. `onMessage` returns true at the last
 * message it wants; `push` then returns whatever followed it, for the connection's next reader.
 *
 * Chunks that end inside a message are kept as they came and joined once the message is whole,
 * so a server that sends its answer a byte at a time costs linear time, not a copy of everything
 * held so far per byte.
 */
export class ReplyScanner {
  /** Chunks received since the last whole message, starting with its first byte. */
  private held: Buffer[] = []
  private heldBytes = 0
  /** Bytes the next message needs before it can be read: its header, then all of it. */
  private needed = 5
  private received = 0
  private over = false

  constructor(
    /** More than this in all, and the answer is not one the proxy's own query can get. */
    private readonly maxBytes: number,
    private readonly onMessage: (code: number, body: Buffer) => boolean,
  ) {}

  /** Undefined while more is awaited; the bytes after the last message once it was seen. Throws on bad framing or too much. */
  push(chunk: Buffer): Buffer | undefined {
    if (this.over) throw new Error('the reply was already read')
    this.received += chunk.length
    this.held.push(chunk)
    this.heldBytes += chunk.length
    if (this.heldBytes < this.needed) return this.waitForMore()
    const bytes = this.held.length === 1 ? chunk : Buffer.concat(this.held, this.heldBytes)
    this.held = []
    this.heldBytes = 0
    this.needed = 5
    let at = 0
    while (bytes.length - at >= 5) {
      const code = bytes[at] as number
      const length = bytes.readUInt32BE(at + 1)
      if (length < 4) throw new FramingError(`invalid message length ${length} for message type ${describeCode(code)}`)
      if (bytes.length - at < 1 + length) {
        this.needed = 1 + length
        break
      }
      const last = this.onMessage(code, bytes.subarray(at + 5, at + 1 + length))
      at += 1 + length
      if (last) {
        this.over = true
        return at === bytes.length ? NO_BYTES : ownCopy(bytes.subarray(at))
      }
    }
    if (at < bytes.length) {
      // A partial message, copied so the chunk it came in is not kept.
      this.held.push(Buffer.from(bytes.subarray(at)))
      this.heldBytes = bytes.length - at
    }
    return this.waitForMore()
  }

  private waitForMore(): undefined {
    if (this.received > this.maxBytes) throw new Error(`the server sent more than ${this.maxBytes} bytes in answer`)
    return undefined
  }
}

/**
 * The caller may keep the rest for as long as the connection lives: a copy in memory of its own,
 * neither a view of the chunk it came in nor a slice of Node's shared 8 KiB allocation pool.
 */
function ownCopy(bytes: Buffer): Buffer {
  const copy = Buffer.allocUnsafeSlow(bytes.length)
  bytes.copy(copy)
  return copy
}
