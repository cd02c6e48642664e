import { randomBytes, randomInt, timingSafeEqual } from 'node:crypto'

export interface CancelKey {
  processId: number
  secretKey: Buffer
}

/** What a session does when its key arrives: forward the cancel to its current upstream, if busy. */
export type CancelHandler = () => Promise<void>

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
    do processId = randomInt(1, 0x7fff_ffff)
    while (this.sessions.has(processId))
    const secretKey = randomBytes(4)
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
