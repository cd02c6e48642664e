/**
 * Lease and token TTL arithmetic, as sdk/framework/lease.go CalculateTTL does it, and the
 * duration formats Vault reads (parseutil.ParseDurationSecond) and writes (humanDuration).
 * All durations here are whole seconds; times are epoch milliseconds.
 */

/** Vault's default system TTLs (server config default_lease_ttl and max_lease_ttl): 768h = 32 days. */
export const SYSTEM_DEFAULT_TTL_SECONDS = 768 * 3600
export const SYSTEM_MAX_TTL_SECONDS = 768 * 3600

export interface TtlInputs {
  /** Requested by the caller (renew increment); 0 = none. */
  incrementSeconds: number
  /** The backend's TTL (role default_ttl, token_ttl); 0 = use the mount default. */
  backendTtlSeconds: number
  /** Periodic tokens: the period replaces the TTL and max TTL; 0 = not periodic. */
  periodSeconds?: number
  /** The backend's max (role max_ttl, token_max_ttl); 0 = the mount max. */
  backendMaxTtlSeconds: number
  /** A token's explicit_max_ttl; 0 = none. */
  explicitMaxTtlSeconds?: number
  mountDefaultTtlSeconds: number
  mountMaxTtlSeconds: number
  /** When the lease was first issued (max TTL counts from here); undefined = now. */
  issueTimeMs?: number
  nowMs: number
}

export interface TtlResult {
  ttlSeconds: number
  warnings: string[]
}

export class PastMaxTtlError extends Error {
  override name = 'PastMaxTtlError'
  constructor() {
    super('past the max TTL, cannot renew')
  }
}

/** framework.CalculateTTL. Throws PastMaxTtlError once max TTL (from issue time) has passed. */
export function calculateTtl(inputs: TtlInputs): TtlResult {
  // Everything is truncated to the second, as Vault does.
  const now = Math.floor(inputs.nowMs / 1000)
  const start = inputs.issueTimeMs === undefined ? now : Math.floor(inputs.issueTimeMs / 1000)
  const warnings: string[] = []

  let maxTtl = inputs.mountMaxTtlSeconds
  if (inputs.backendMaxTtlSeconds > 0 && inputs.backendMaxTtlSeconds < maxTtl) maxTtl = inputs.backendMaxTtlSeconds
  const explicitMax = inputs.explicitMaxTtlSeconds ?? 0
  if (explicitMax > 0 && explicitMax < maxTtl) maxTtl = explicitMax

  let ttl: number
  let maxValidTime: number | undefined
  const period = inputs.periodSeconds ?? 0
  if (period > 0) {
    ttl = period
    if (period > maxTtl) {
      warnings.push(
        `period of ${goQuote(humanDuration(period))} exceeded the effective max_ttl of ${goQuote(humanDuration(maxTtl))}; period value is capped accordingly`,
      )
      ttl = maxTtl
    }
    if (explicitMax > 0) maxValidTime = start + explicitMax
  } else {
    if (inputs.incrementSeconds > 0) ttl = inputs.incrementSeconds
    else if (inputs.backendTtlSeconds > 0) ttl = inputs.backendTtlSeconds
    else ttl = inputs.mountDefaultTtlSeconds
    maxValidTime = start + maxTtl
  }

  if (maxValidTime !== undefined) {
    const maxValidTtl = maxValidTime - now
    if (maxValidTtl <= 0) throw new PastMaxTtlError()
    if (ttl > maxValidTtl) {
      warnings.push(
        `TTL of ${goQuote(humanDuration(ttl))} exceeded the effective max_ttl of ${goQuote(humanDuration(maxValidTtl))}; TTL value is capped accordingly`,
      )
      ttl = maxValidTtl
    }
  }
  return { ttlSeconds: ttl, warnings }
}

/** Go's time.Duration.String() for whole seconds, e.g. 5400 → "1h30m0s". */
export function goDurationString(seconds: number): string {
  if (seconds === 0) return '0s'
  const sign = seconds < 0 ? '-' : ''
  let rest = Math.abs(seconds)
  const h = Math.floor(rest / 3600)
  rest -= h * 3600
  const m = Math.floor(rest / 60)
  const s = rest - m * 60
  if (h > 0) return `${sign}${h}h${m}m${s}s`
  if (m > 0) return `${sign}${m}m${s}s`
  return `${sign}${s}s`
}

/** lease.go humanDuration: Duration.String() without the zero parts, "1h0m0s" → "1h", "1m0s" → "1m". */
export function humanDuration(seconds: number): string {
  let s = goDurationString(seconds)
  if (s.endsWith('m0s')) s = s.slice(0, -2)
  const idx = s.indexOf('h0m')
  if (idx > 0) s = s.slice(0, idx + 1) + s.slice(idx + 3)
  return s
}

/** Go's %q for the plain ASCII strings humanDuration returns. */
function goQuote(s: string): string {
  return JSON.stringify(s)
}

const UNIT_SECONDS: Record<string, number> = { ns: 1e-9, us: 1e-6, µs: 1e-6, ms: 1e-3, s: 1, m: 60, h: 3600, d: 86400 }

/**
 * parseutil.ParseDurationSecond: a number or a digit string is seconds; otherwise a Go duration
 * ("1h30m", "90s", "1.5h") or a whole number of days ("7d"). Returns undefined when malformed.
 */
export function parseDurationSeconds(input: unknown): number | undefined {
  if (typeof input === 'number') return Number.isFinite(input) ? Math.trunc(input) : undefined
  if (typeof input !== 'string') return undefined
  const text = input.trim()
  if (text === '') return 0
  if (/^-?\d+$/.test(text)) return Number(text)
  const days = /^(\d+)d$/.exec(text)
  if (days) return Number(days[1]) * 86400
  const sign = text.startsWith('-') ? -1 : 1
  let rest = text.replace(/^[-+]/, '')
  if (rest === '') return undefined
  let total = 0
  while (rest.length > 0) {
    const part = /^(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)/.exec(rest)
    if (!part) return undefined
    total += Number(part[1]) * (UNIT_SECONDS[part[2]!] ?? 0)
    rest = rest.slice(part[0].length)
  }
  return sign * Math.trunc(total)
}
