/**
 * Rate-limit quotas (vault/quotas/quotas_rate_limit.go, http/util.go rateLimitQuotaWrapping), the
 * part a client can meet: a quota of `rate` requests per `interval` for each client address, on
 * every path (path ""), a mount ("auth/approle/") or a path inside one ("database/creds/"); the
 * most specific quota applies. A request over the limit gets 429 `request path "<path>": rate limit
 * quota exceeded`; with `enable_rate_limit_response_headers` (sys/quotas/config) every answer under
 * a quota carries X-Ratelimit-Limit/-Remaining/-Reset and a refusal Retry-After.
 *
 * Counting follows the go-limiter memory store Vault uses: fixed windows of `interval` starting at
 * a client's first request, `round(rate)` requests in each. Role-based quotas, namespaces and lease
 * count quotas are not implemented.
 */
import { respondError } from './envelope.js'

export interface RateLimitQuota {
  name: string
  /** "" (every path), a mount path with its trailing slash, or a mount path plus a suffix. */
  path: string
  rate: number
  intervalSeconds: number
  blockIntervalSeconds: number
  inheritable: boolean
}

export interface QuotaConfig {
  enableRateLimitResponseHeaders: boolean
  enableRateLimitAuditLogging: boolean
  rateLimitExemptPaths: string[]
}

export interface QuotaDecision {
  allowed: boolean
  /** Response headers to send (only with enable_rate_limit_response_headers). */
  headers: Record<string, string>
}

/** quotas.go defaultExemptPaths. */
const DEFAULT_EXEMPT_PATHS = [
  'sys/generate-recovery-token/attempt',
  'sys/generate-recovery-token/update',
  'sys/generate-root/attempt',
  'sys/generate-root/update',
  'sys/health',
  'sys/seal-status',
  'sys/unseal',
]

/** The most clients one quota keeps windows for; the oldest is forgotten first. */
const MAX_CLIENTS_PER_QUOTA = 10_000

interface ClientWindow {
  startMs: number
  lastTick: number
  available: number
  blockedAtMs: number | undefined
}

export class RateLimitQuotas {
  private readonly quotas = new Map<string, RateLimitQuota>()
  private readonly windows = new Map<string, Map<string, ClientWindow>>()
  config: QuotaConfig = {
    enableRateLimitResponseHeaders: false,
    enableRateLimitAuditLogging: false,
    rateLimitExemptPaths: [...DEFAULT_EXEMPT_PATHS],
  }

  constructor(private readonly now: () => number) {}

  names(): string[] {
    return [...this.quotas.keys()].sort()
  }

  get(name: string): RateLimitQuota | undefined {
    return this.quotas.get(name)
  }

  /** Creates or replaces a quota; its counting starts afresh. */
  set(quota: RateLimitQuota): void {
    for (const other of this.quotas.values()) {
      if (other.name !== quota.name && other.path === quota.path) {
        throw respondError(`quota rule with similar properties exists under the name ${JSON.stringify(other.name)}`)
      }
    }
    this.quotas.set(quota.name, quota)
    this.windows.set(quota.name, new Map())
  }

  delete(name: string): void {
    this.quotas.delete(name)
    this.windows.delete(name)
  }

  /** Counts the request against the quota that applies to `path`, if any. */
  apply(path: string, clientAddress: string): QuotaDecision {
    const headers: Record<string, string> = {}
    const quota = this.quotaFor(path)
    if (quota === undefined) return { allowed: true, headers }
    const windows = this.windows.get(quota.name)!
    const nowMs = this.now()
    const intervalMs = quota.intervalSeconds * 1000
    const blockMs = quota.blockIntervalSeconds * 1000
    let window = windows.get(clientAddress)

    if (window?.blockedAtMs !== undefined) {
      if (nowMs - window.blockedAtMs < blockMs) {
        return this.refused(headers, secondsUntil(window.blockedAtMs + blockMs, nowMs))
      }
      windows.delete(clientAddress)
      window = undefined
    }
    const limit = Math.round(quota.rate)
    if (window === undefined) {
      if (windows.size >= MAX_CLIENTS_PER_QUOTA) windows.delete(windows.keys().next().value!)
      window = { startMs: nowMs, lastTick: 0, available: limit, blockedAtMs: undefined }
      windows.set(clientAddress, window)
    }
    const tick = Math.floor((nowMs - window.startMs) / intervalMs)
    if (window.lastTick < tick) {
      window.available = limit
      window.lastTick = tick
    }
    const allowed = window.available > 0
    if (allowed) window.available -= 1
    const reset = secondsUntil(window.startMs + (tick + 1) * intervalMs, nowMs)
    if (this.config.enableRateLimitResponseHeaders) {
      headers['X-Ratelimit-Limit'] = String(limit)
      headers['X-Ratelimit-Remaining'] = String(window.available)
      headers['X-Ratelimit-Reset'] = String(reset)
    }
    if (allowed) return { allowed, headers }
    if (blockMs > 0) {
      window.blockedAtMs = nowMs
      return this.refused(headers, secondsUntil(nowMs + blockMs, nowMs))
    }
    return this.refused(headers, reset)
  }

  private refused(headers: Record<string, string>, retryAfterSeconds: number): QuotaDecision {
    if (this.config.enableRateLimitResponseHeaders) headers['Retry-After'] = String(retryAfterSeconds)
    return { allowed: false, headers }
  }

  /** The most specific quota: a path suffix, then the mount, then the global one. */
  private quotaFor(path: string): RateLimitQuota | undefined {
    if (this.quotas.size === 0) return undefined
    if (this.config.rateLimitExemptPaths.some((exempt) => path === exempt || path.startsWith(`${exempt}/`))) {
      return undefined
    }
    let best: RateLimitQuota | undefined
    for (const quota of this.quotas.values()) {
      const applies = quota.path === '' || path.startsWith(quota.path) || `${path}/` === quota.path
      if (applies && (best === undefined || quota.path.length > best.path.length)) best = quota
    }
    return best
  }
}

/** int(time.Until(t).Seconds()): whole seconds, truncated, as Vault writes them. */
function secondsUntil(atMs: number, nowMs: number): number {
  return Math.max(0, Math.trunc((atMs - nowMs) / 1000))
}
