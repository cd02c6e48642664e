/**
 * Limits how often an upstream refusal may trigger a fresh credential: the first refusal retries at
 * once, later ones only after a delay that doubles up to a ceiling, so a misconfigured role does not
 * hammer Vault and the database; the client gets the upstream's error meanwhile.
 */
export class RefusalBackoff {
  private nextAllowedAt = 0
  private delayMs: number

  constructor(
    private readonly initialMs = 2_000,
    private readonly maxMs = 60_000,
  ) {
    this.delayMs = initialMs
  }

  allow(now = Date.now()): boolean {
    if (now < this.nextAllowedAt) return false
    // Refusals far apart are independent events: start over.
    if (now - this.nextAllowedAt > this.maxMs) this.delayMs = this.initialMs
    this.nextAllowedAt = now + this.delayMs
    this.delayMs = Math.min(this.maxMs, this.delayMs * 2)
    return true
  }

  get remainingMs(): number {
    return Math.max(0, this.nextAllowedAt - Date.now())
  }
}
