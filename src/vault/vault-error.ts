import { VaultHttpError } from './vault-http.js'

/** Why a Vault call failed, in terms an operator can act on. Never carries a token or a secret. */
export type VaultFailure =
  | 'unreachable'
  | 'sealed'
  | 'permission_denied'
  | 'invalid_token'
  | 'not_found'
  | 'bad_request'
  | 'rate_limited'
  | 'redirected'
  | 'server_error'

/** A 429's Retry-After is honoured up to this; a longer wait is left to the next scheduled attempt. */
export const MAX_RETRY_AFTER_MS = 30_000

export interface VaultErrorOptions extends ErrorOptions {
  /** What the operator can do, when it is more precise than the failure kind's usual advice. */
  hint?: string | undefined
  /** From a 429's Retry-After header. */
  retryAfterMs?: number | undefined
}

export class VaultError extends Error {
  override name = 'VaultError'
  readonly retryAfterMs: number | undefined
  private readonly specificHint: string | undefined

  constructor(
    readonly failure: VaultFailure,
    /** The Vault path, e.g. database/creds/app (no secrets in Vault paths). */
    readonly path: string,
    message: string,
    readonly statusCode?: number,
    options?: VaultErrorOptions,
  ) {
    super(message, options)
    this.specificHint = options?.hint
    this.retryAfterMs = options?.retryAfterMs
  }

  /** Worth retrying: the same call may succeed later. */
  get isTransient(): boolean {
    return ['unreachable', 'sealed', 'server_error', 'rate_limited', 'redirected'].includes(this.failure)
  }

  /** What to do about it; `address` is vault.address. */
  hint(address: string): string {
    if (this.specificHint) return this.specificHint
    switch (this.failure) {
      case 'unreachable':
        return `Check vault.address (${address}) and that Vault is running and reachable from the proxy.`
      case 'sealed':
        return 'Unseal Vault; cached credentials are used until they expire.'
      case 'permission_denied':
        return `Grant the proxy's Vault policy access to ${this.path} (the token itself is valid).`
      case 'invalid_token':
        return 'Give the proxy a valid Vault token (vault.auth), or a login method that can get a new one.'
      case 'not_found':
        return `Check the role or path configured under credentials (Vault path ${this.path}).`
      case 'bad_request':
        return 'Check the credentials and vault.auth settings of the proxy.'
      case 'rate_limited':
        return "Vault's rate-limit quota refused the proxy; the proxy waits as Vault asks. Raise the quota for the proxy's path if it persists."
      case 'redirected':
        return 'Point vault.address at the active Vault node or a load balancer in front of the cluster (or enable request forwarding on standbys).'
      case 'server_error':
        return 'Check the Vault server log; the proxy retries with backoff.'
    }
  }
}

const NETWORK_CODES: Record<string, string> = {
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'connection reset',
  ETIMEDOUT: 'timed out',
  ECONNABORTED: 'timed out',
  ENOTFOUND: 'host name not found',
  EAI_AGAIN: 'host name not found',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
  EPROTO: 'TLS handshake failed (is vault.address https on an http listener, or the other way round?)',
  CERT_HAS_EXPIRED: 'TLS certificate expired',
  DEPTH_ZERO_SELF_SIGNED_CERT: 'TLS certificate not trusted (set vault.ca_cert)',
  SELF_SIGNED_CERT_IN_CHAIN: 'TLS certificate not trusted (set vault.ca_cert)',
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'TLS certificate not trusted (set vault.ca_cert)',
  ERR_TLS_CERT_ALTNAME_INVALID: 'TLS certificate does not name the Vault host',
}

/** An HTTP answer that is not a success, as VaultHttp hands it over. */
export interface VaultErrorResponse {
  statusCode: number
  body?: unknown
  headers?: Record<string, string | string[] | undefined>
}

/**
 * Classifies a failed exchange: a network error (anything with a Node `code`) or a non-2xx answer
 * ({response}). Status codes and texts as Vault's http/logical.go and sdk/logical/response_util.go
 * (RespondErrorCommon, AdjustErrorStatusCode) produce them.
 */
export function toVaultError(err: unknown, path: string, address: string): VaultError {
  if (err instanceof VaultError) return err
  const e = err as { message?: string; code?: string; response?: VaultErrorResponse }
  const status = typeof e?.response?.statusCode === 'number' ? e.response.statusCode : undefined
  if (status === undefined) {
    if (e?.code === 'EVAULTREDIRECT')
      return new VaultError('redirected', path, `Vault at ${address}: ${e.message}`, undefined, { cause: err })
    if (e?.code === 'EVAULTTOOBIG')
      return new VaultError('server_error', path, `Vault at ${address} sent an ${e.message}`, undefined, { cause: err })
    const why =
      (e?.code && NETWORK_CODES[e.code]) ?? (err instanceof VaultHttpError ? err.message : (e?.code ?? e?.message))
    return new VaultError('unreachable', path, `Vault is unreachable at ${address}: ${why}`, undefined, { cause: err })
  }
  const text = vaultMessage(e.response?.body) ?? `HTTP ${status}`
  if (status === 503 && /sealed/i.test(text))
    return new VaultError('sealed', path, `Vault at ${address} is sealed`, status)
  if (status === 403) {
    // Vault >= 1.17 adds "invalid token"; Vault <= 1.16 and OpenBao say only "permission denied"
    // for a dead token too, so VaultSession asks lookup-self before believing a policy denial.
    if (/invalid token/.test(text))
      return new VaultError('invalid_token', path, `Vault refused the proxy's token on ${path} (${text})`, status)
    return new VaultError('permission_denied', path, `Vault denied permission on ${path} (${text})`, status)
  }
  if (status === 404) return new VaultError('not_found', path, `Vault has nothing at ${path}`, status)
  if (status === 429) {
    // Vault truncates Retry-After to whole seconds (http/util.go, rateLimitQuotaWrapping), so the
    // window may close up to a second later than it says: waiting exactly that long can hit it again.
    const asked = retryAfterMs(e.response?.headers?.['retry-after'])
    return new VaultError('rate_limited', path, `Vault rate-limited ${path}: ${text}`, status, {
      retryAfterMs: asked === undefined ? undefined : asked + 1_000,
    })
  }
  if (status === 412 && /X-Vault-Request/i.test(text)) {
    return new VaultError('bad_request', path, `Vault refused ${path}: ${text}`, status, {
      hint: 'A Vault Agent listener wants the X-Vault-Request header; the proxy sends it, so something between the proxy and the agent removes it.',
    })
  }
  if (status >= 300 && status < 400) {
    return new VaultError(
      'redirected',
      path,
      `Vault at ${address} redirected ${path} more than once (HTTP ${status})`,
      status,
    )
  }
  if (status >= 500) return new VaultError('server_error', path, `Vault failed on ${path}: ${text}`, status)
  return new VaultError('bad_request', path, `Vault refused ${path}: ${text}`, status)
}

/** Retry-After as delta-seconds or an HTTP date (RFC 9110 §10.2.3); undefined when absent or unreadable. */
export function retryAfterMs(value: string | string[] | undefined, now = Date.now()): number | undefined {
  const text = Array.isArray(value) ? value[0] : value
  if (text === undefined || text.trim() === '') return undefined
  // An HTTP date names a weekday and a month; Date.parse alone would take "-1" for a year.
  const ms = /^\s*\d+\s*$/.test(text) ? Number(text) * 1000 : /GMT/.test(text) ? Date.parse(text) - now : NaN
  return Number.isFinite(ms) ? Math.max(0, ms) : undefined
}

/** The first error text of a Vault error body, multierror wrapping removed. */
function vaultMessage(body: unknown): string | undefined {
  const errors = (body as { errors?: unknown })?.errors
  if (!Array.isArray(errors) || errors.length === 0) return undefined
  const lines = errors
    .map(String)
    .join('\n')
    .split('\n')
    .map((l) => l.replace(/^\s*\*\s*/, '').trim())
    .filter((l) => l !== '' && !/^\d+ errors? occurred:$/.test(l))
  return lines.join('; ') || undefined
}
