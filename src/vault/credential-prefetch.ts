import type { Logger } from 'pino'
import type { CredentialSource } from './credential-source.js'

export interface PrefetchTiming {
  /** How often a source that has a credential is looked at again. */
  checkMs: number
  /** First and longest wait after a failed attempt (doubling in between). */
  retryMs: number
  maxRetryMs: number
}

const DEFAULT_TIMING: PrefetchTiming = { checkMs: 5_000, retryMs: 1_000, maxRetryMs: 30_000 }

/**
 * Keeps a credential at hand before any client asks for one: fetched at start, and again whenever
 * the source holds none (say Vault was down when the last lease ran out), with backoff. So readiness
 * turns true on its own, and the first client's connect timeout is not spent waiting on Vault.
 */
export class CredentialPrefetch {
  private timer: NodeJS.Timeout | undefined
  private stopped = false
  private failures = 0

  constructor(
    private readonly source: CredentialSource,
    private readonly log: Logger,
    private readonly timing: PrefetchTiming = DEFAULT_TIMING,
  ) {}

  start(): this {
    void this.tick()
    return this
  }

  stop(): void {
    this.stopped = true
    clearTimeout(this.timer)
  }

  private async tick(): Promise<void> {
    if (this.stopped) return
    let delay = this.timing.checkMs
    if (!this.source.status().ready) {
      try {
        await this.source.get()
        if (this.failures > 0) this.log.info({ attempts: this.failures + 1 }, 'obtained a credential in advance')
        this.failures = 0
      } catch (err) {
        this.failures++
        delay = Math.min(this.timing.maxRetryMs, this.timing.retryMs * 2 ** (this.failures - 1))
        if (!this.stopped)
          this.log.warn(
            { err: (err as Error).message, attempts: this.failures, retryInMs: delay },
            'could not obtain a credential in advance; not ready until one is at hand',
          )
      }
    }
    if (this.stopped) return
    this.timer = setTimeout(() => void this.tick(), delay)
    this.timer.unref()
  }
}
