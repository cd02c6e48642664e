import { describeCode } from './message-reader.js'

/** A message that breaks framing: the byte stream can no longer be trusted. */
export class ProtocolViolation extends Error {
  override name = 'ProtocolViolation'
  constructor(
    message: string,
    /** The whole messages that preceded the bad header in this chunk: still safe to forward. */
    readonly forwardable: Buffer = Buffer.alloc(0),
  ) {
    super(message)
  }
}

export interface FramerOptions {
  /** Is this a type byte the peer may send? An unknown one means framing is lost. */
  isKnownCode(code: number): boolean
  /** Largest allowed length word for a message type. */
  maxLength(code: number): number
  /**
   * Types whose whole message the caller wants to see (and may patch in place), if at most
   * `maxInspectLength` bytes. All other messages are reported by header only and never copied.
   */
  wantsWhole(code: number): boolean
  maxInspectLength: number
  /** Called for every message. `whole` is the entire message (header included) for inspected types. */
  onMessage(code: number, whole: Buffer | undefined): void
}

/**
 * Frames a relayed byte stream by its 5-byte headers only (type, Int32 length) without decoding
 * or copying payloads: each chunk is forwarded as it arrived, except that a header split across
 * chunks, or a small inspected message split across chunks, is carried into the next chunk.
 */
export class MessageFramer {
  private carry: Buffer | undefined
  /** Bytes of the current (uninspected) message body still to come in later chunks. */
  private skip = 0

  constructor(private readonly options: FramerOptions) {}

  /** Feeds one chunk; returns the bytes that may be forwarded now (possibly empty). */
  push(chunk: Buffer): Buffer {
    let buf = chunk
    if (this.carry) {
      buf = Buffer.concat([this.carry, chunk])
      this.carry = undefined
    }
    let offset = 0
    if (this.skip > 0) {
      const n = Math.min(this.skip, buf.length)
      this.skip -= n
      offset = n
    }
    const { options } = this
    while (offset < buf.length) {
      if (buf.length - offset < 5) return this.hold(buf, offset)
      const code = buf[offset] as number
      const length = buf.readUInt32BE(offset + 1)
      if (!options.isKnownCode(code)) {
        throw new ProtocolViolation(`invalid message type ${describeCode(code)}`, buf.subarray(0, offset))
      }
      if (length < 4 || length > options.maxLength(code)) {
        throw new ProtocolViolation(
          `invalid length ${length} for message type ${describeCode(code)}`,
          buf.subarray(0, offset),
        )
      }
      const total = 1 + length
      const available = buf.length - offset
      if (options.wantsWhole(code) && total <= options.maxInspectLength) {
        if (available < total) return this.hold(buf, offset)
        options.onMessage(code, buf.subarray(offset, offset + total))
        offset += total
      } else {
        options.onMessage(code, undefined)
        if (available < total) {
          this.skip = total - available
          return buf
        }
        offset += total
      }
    }
    return buf
  }

  /** True while a message is only partly through the framer (not a clean message boundary). */
  get isMidMessage(): boolean {
    return this.skip > 0 || this.carry !== undefined
  }

  private hold(buf: Buffer, offset: number): Buffer {
    this.carry = Buffer.from(buf.subarray(offset))
    return buf.subarray(0, offset)
  }
}
