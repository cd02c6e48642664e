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
