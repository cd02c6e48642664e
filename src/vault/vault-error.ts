/** Why a Vault call failed, in terms an operator can act on. Never carries a token or a secret. */
export type VaultFailure = 'unreachable' | 'sealed' | 'permission_denied' | 'not_found' | 'bad_request' | 'server_error'

export class VaultError extends Error {
  override name = 'VaultError'
  constructor(
    readonly failure: VaultFailure,
    /** The Vault path, e.g. database/creds/app (no secrets in Vault paths). */
    readonly path: string,
    message: string,
    readonly statusCode?: number,
    options?: ErrorOptions,
  ) {
    super(message, options)
  }

  /** Worth retrying: the same call may succeed later. */
  get isTransient(): boolean {
    return this.failure === 'unreachable' || this.failure === 'sealed' || this.failure === 'server_error'
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
  CERT_HAS_EXPIRED: 'TLS certificate expired',
  DEPTH_ZERO_SELF_SIGNED_CERT: 'TLS certificate not trusted (set vault.ca_cert)',
  SELF_SIGNED_CERT_IN_CHAIN: 'TLS certificate not trusted (set vault.ca_cert)',
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'TLS certificate not trusted (set vault.ca_cert)',
  ERR_TLS_CERT_ALTNAME_INVALID: 'TLS certificate does not name the Vault host',
}

/**
 * node-vault rejects with an ApiResponseError ({response: {statusCode, body}}) for HTTP errors and
 * with a raw axios error for network failures; its classes are not exported, so both are recognised
 * by shape (shared/vault-api.md §7.2).
 */
export function toVaultError(err: unknown, path: string, address: string): VaultError {
  if (err instanceof VaultError) return err
  const e = err as { message?: string; code?: string; response?: { statusCode?: unknown; body?: unknown } }
  const status = typeof e?.response?.statusCode === 'number' ? e.response.statusCode : undefined
  if (status === undefined) {
    const why = (e?.code && NETWORK_CODES[e.code]) ?? e?.code ?? e?.message ?? 'unknown error'
    return new VaultError('unreachable', path, `Vault is unreachable at ${address}: ${why}`, undefined, { cause: err })
  }
  const text = vaultMessage(e.response?.body) ?? `HTTP ${status}`
  if (status === 503 && /sealed/i.test(text))
    return new VaultError('sealed', path, `Vault at ${address} is sealed`, status)
  if (status === 403) {
    return new VaultError(
      'permission_denied',
      path,
      `Vault denied permission on ${path} (${text}); check the token's policy`,
      status,
    )
  }
  if (status === 404) return new VaultError('not_found', path, `Vault has nothing at ${path}`, status)
  if (status >= 500) return new VaultError('server_error', path, `Vault failed on ${path}: ${text}`, status)
  return new VaultError('bad_request', path, `Vault refused ${path}: ${text}`, status)
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
