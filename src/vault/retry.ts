import { MAX_RETRY_AFTER_MS } from './vault-error.js'

export interface RetryPolicy {
  attempts: number
  baseDelayMs: number
  maxDelayMs: number
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 4, baseDelayMs: 200, maxDelayMs: 5_000 }

/**
 * Runs `call` until it succeeds, `isRetryable` says no, or attempts run out. Delays grow
 * exponentially with full jitter, so many proxies retrying a Vault outage do not stampede it. When
 * the server said how long to wait (`retryAfter`, a 429's Retry-After), the delay is that plus the
 * jitter; a wait longer than MAX_RETRY_AFTER_MS is not spent here: the error goes to the caller,
 * whose own schedule tries again later.
 */
export async function withRetry<T>(
  call: () => Promise<T>,
  isRetryable: (err: unknown) => boolean,
  policy: RetryPolicy = DEFAULT_RETRY,
  onRetry?: (err: unknown, attempt: number, delayMs: number) => void,
  retryAfter: (err: unknown) => number | undefined = () => undefined,
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await call()
    } catch (err) {
      if (attempt >= policy.attempts || !isRetryable(err)) throw err
      const asked = retryAfter(err) ?? 0
      if (asked > MAX_RETRY_AFTER_MS) throw err
      const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1))
      const delayMs = asked + Math.round(Math.random() * ceiling)
      onRetry?.(err, attempt, delayMs)
      await new Promise((resolve) => setTimeout(resolve, delayMs))
    }
  }
}
