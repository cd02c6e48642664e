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
  /**
   * Called for every message. `whole` is the entire message (header included) for inspected types.
   * Returning false drops the message from the forwarded bytes; for an uninspected one, the rest of
   * its body in later chunks is dropped too.
   */
  onMessage(code: number, whole: Buffer | undefined): boolean | void
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
  /** Those bytes belong to a dropped message. */
  private skipDropped = false

  constructor(private readonly options: FramerOptions) {}

  /** Feeds one chunk; returns the bytes that may be forwarded now (possibly empty). */
  push(chunk: Buffer): Buffer {
    this.kept = undefined
    this.keptFrom = 0
    let buf = chunk
    if (this.carry) {
      buf = Buffer.concat([this.carry, chunk])
      this.carry = undefined
    }
    let offset = 0
    if (this.skip > 0) {
      const n = Math.min(this.skip, buf.length)
      this.skip -= n
      if (this.skipDropped) this.drop(buf, 0, n)
      if (this.skip === 0) this.skipDropped = false
      offset = n
    }
    const { options } = this
    while (offset < buf.length) {
      if (buf.length - offset < 5) return this.hold(buf, offset)
      const code = buf[offset] as number
      const length = buf.readUInt32BE(offset + 1)
      if (!options.isKnownCode(code)) {
        throw new ProtocolViolation(`invalid message type ${describeCode(code)}`, this.forward(buf, offset))
      }
      if (length < 4 || length > options.maxLength(code)) {
        throw new ProtocolViolation(
          `invalid length ${length} for message type ${describeCode(code)}`,
          this.forward(buf, offset),
        )
      }
      const total = 1 + length
      const available = buf.length - offset
      if (options.wantsWhole(code) && total <= options.maxInspectLength) {
        if (available < total) return this.hold(buf, offset)
        if (options.onMessage(code, buf.subarray(offset, offset + total)) === false) this.drop(buf, offset, total)
        offset += total
      } else {
        const keep = options.onMessage(code, undefined) !== false
        if (available < total) {
          if (!keep) this.drop(buf, offset, available)
          this.skip = total - available
          this.skipDropped = !keep
          return this.forward(buf, buf.length)
        }
        if (!keep) this.drop(buf, offset, total)
        offset += total
      }
    }
    return this.forward(buf, buf.length)
  }

  /** True while a message is only partly through the framer (not a clean message boundary). */
  get isMidMessage(): boolean {
    return this.skip > 0 || this.carry !== undefined
  }

  private hold(buf: Buffer, offset: number): Buffer {
    this.carry = Buffer.from(buf.subarray(offset))
    return this.forward(buf, offset)
  }

  /** Pieces of this chunk kept around dropped messages; undefined when nothing was dropped (the fast path). */
  private kept: Buffer[] | undefined
  private keptFrom = 0

  private drop(buf: Buffer, offset: number, total: number): void {
    ;(this.kept ??= []).push(buf.subarray(this.keptFrom, offset))
    this.keptFrom = offset + total
  }

  private forward(buf: Buffer, end: number): Buffer {
    if (!this.kept) return end === buf.length ? buf : buf.subarray(0, end)
    return Buffer.concat([...this.kept, buf.subarray(this.keptFrom, end)])
  }
}
