import { randomFillSync, timingSafeEqual } from 'node:crypto'

export interface CancelKey {
  processId: number
  secretKey: Buffer
}

/** What a session does when its key arrives: forward the cancel to its current upstream, if busy. */
export type CancelHandler = () => Promise<void>

/**
 * Random bytes drawn from the CSPRNG a page at a time: one randomFillSync per 512 sessions instead of
 * one or two per session (a measurable share of a new connection's cost under connect-per-request load).
 */
const entropy = Buffer.alloc(4096)
let drawn = entropy.length

function randomUint32(): number {
  if (drawn + 4 > entropy.length) {
    randomFillSync(entropy)
    drawn = 0
  }
  const value = entropy.readUInt32BE(drawn)
  // Used once: the bytes are zeroed so nothing that reads this buffer later can learn a key.
  entropy.fill(0, drawn, drawn + 4)
  drawn += 4
  return value
}

/**
 * Issues the BackendKeyData each client gets (never the upstream's) and routes CancelRequests to the
 * session that owns the key. The pid is random too (it is not secret: applications can see it), and
 * only the secret is compared, in constant time. Unknown keys are ignored, as PostgreSQL does.
 */
export class CancelRegistry {
  private readonly sessions = new Map<number, { secretKey: Buffer; onCancel: CancelHandler }>()

  /** A fresh key for a protocol 3.0 client: 4-byte secret, pid in the positive int32 range. */
  register(onCancel: CancelHandler): CancelKey {
    let processId: number
    do processId = randomUint32() & 0x7fff_ffff
    while (processId === 0 || this.sessions.has(processId))
    const secretKey = Buffer.allocUnsafe(4)
    secretKey.writeUInt32BE(randomUint32())
    this.sessions.set(processId, { secretKey, onCancel })
    return { processId, secretKey }
  }

  unregister(processId: number): void {
    this.sessions.delete(processId)
  }

  /** Runs the owner's handler when the key matches; resolves false (and does nothing) otherwise. */
  async cancel(processId: number, secretKey: Buffer): Promise<boolean> {
    const entry = this.sessions.get(processId)
    if (!entry || entry.secretKey.length !== secretKey.length || !timingSafeEqual(entry.secretKey, secretKey))
      return false
    await entry.onCancel()
    return true
  }

  get size(): number {
    return this.sessions.size
  }
}
