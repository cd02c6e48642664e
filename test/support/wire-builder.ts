// A separate, deliberately simple encoder for test fixtures, so the codec under test is checked
// against a second implementation rather than against itself.

export class BufferList {
  private parts: Buffer[] = []

  int32(n: number): this {
    const b = Buffer.alloc(4)
    b.writeInt32BE(n)
    this.parts.push(b)
    return this
  }

  int16(n: number): this {
    const b = Buffer.alloc(2)
    b.writeInt16BE(n)
    this.parts.push(b)
    return this
  }

  byte(n: number): this {
    this.parts.push(Buffer.from([n]))
    return this
  }

  cstring(s: string): this {
    this.parts.push(Buffer.from(s, 'utf8'), Buffer.from([0]))
    return this
  }

  bytes(b: Buffer): this {
    this.parts.push(b)
    return this
  }

  /** Untyped startup-phase packet: Int32 length (including itself) + body. */
  packet(): Buffer {
    const body = Buffer.concat(this.parts)
    const len = Buffer.alloc(4)
    len.writeInt32BE(body.length + 4)
    return Buffer.concat([len, body])
  }

  /** Typed message: type byte + Int32 length + body. */
  message(type: string): Buffer {
    const body = Buffer.concat(this.parts)
    const head = Buffer.alloc(5)
    head.write(type, 0, 'latin1')
    head.writeInt32BE(body.length + 4, 1)
    return Buffer.concat([head, body])
  }
}

export function startupMessage(params: Record<string, string>, version = 0x30000): Buffer {
  const list = new BufferList().int32(version)
  for (const [k, v] of Object.entries(params)) list.cstring(k).cstring(v)
  return list.byte(0).packet()
}

export const sslRequest = (): Buffer => new BufferList().int32(80877103).packet()
export const gssEncRequest = (): Buffer => new BufferList().int32(80877104).packet()
export const cancelRequest = (pid: number, key: Buffer): Buffer =>
  new BufferList().int32(80877102).int32(pid).bytes(key).packet()

/** Splits a buffer at every offset: [a, b] pairs to feed a framer in two chunks. */
export function* splits(buf: Buffer): Generator<[Buffer, Buffer, number]> {
  for (let i = 0; i <= buf.length; i++) yield [buf.subarray(0, i), buf.subarray(i), i]
}

/** A typed message as a test reads it back. */
export interface WireMessage {
  type: string
  body: Buffer
}

/** Whole typed messages in `buf`; a trailing partial message is left out. */
export function parseMessages(buf: Buffer): WireMessage[] {
  const messages: WireMessage[] = []
  let offset = 0
  while (offset + 5 <= buf.length) {
    const length = buf.readUInt32BE(offset + 1)
    if (length < 4 || offset + 1 + length > buf.length) break
    messages.push({ type: String.fromCharCode(buf[offset]!), body: buf.subarray(offset + 5, offset + 1 + length) })
    offset += 1 + length
  }
  return messages
}

/** ErrorResponse/NoticeResponse fields by code (S, V, C, M, ...). */
export function errorFieldsOf(body: Buffer): Record<string, string> {
  const fields: Record<string, string> = {}
  let offset = 0
  while (offset < body.length && body[offset] !== 0) {
    const end = body.indexOf(0, offset + 1)
    if (end < 0) break
    fields[String.fromCharCode(body[offset]!)] = body.toString('utf8', offset + 1, end)
    offset = end + 1
  }
  return fields
}
