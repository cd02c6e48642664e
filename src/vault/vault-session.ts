import type { Logger } from 'pino'
import { noMetrics, type CredentialMetrics } from '../ops/metrics.js'
import { ProxyError } from '../proxy/proxy-error.js'
import { DEFAULT_RETRY, withRetry, type RetryPolicy } from './retry.js'
import type { VaultAuthenticator } from './vault-authenticator.js'
import type { VaultClient } from './vault-client.js'
import { VaultError } from './vault-error.js'

/**
 * What every credential source needs from Vault: a call made with a valid token, retried with
 * backoff and jitter while Vault is unreachable, sealed or failing, with one fresh login when the
 * token was refused, and any failure turned into a ProxyError the client can act on.
 */
export class VaultSession {
  constructor(
    readonly client: VaultClient,
    readonly auth: VaultAuthenticator,
    readonly log: Logger,
    /** Where the credential sources built on this session record what they do. */
    readonly metrics: CredentialMetrics = noMetrics,
    private readonly retry: RetryPolicy = DEFAULT_RETRY,
  ) {}

  /** Stops background token renewal; call after the last Vault request (e.g. shutdown revocations). */
  stop(): void {
    this.auth.stop()
  }

  async call<T>(what: string, request: (client: VaultClient) => Promise<T>): Promise<T> {
    let recovered = false
    const attempt = async (): Promise<T> => {
      await this.auth.ensureToken()
      try {
        return await request(this.client)
      } catch (err) {
        // A token that expired or was revoked under us: one fresh login, then the same call again.
        if (
          !recovered &&
          err instanceof VaultError &&
          err.failure === 'permission_denied' &&
          /invalid token/.test(err.message)
        ) {
          recovered = true
          if (await this.auth.recover()) return request(this.client)
        }
        throw err
      }
    }
    return withRetry(
      attempt,
      (err) => err instanceof VaultError && err.isTransient,
      this.retry,
      (err, n, delayMs) =>
        this.log.warn({ what, attempt: n, delayMs, err: (err as Error).message }, 'Vault call failed; retrying'),
    )
  }
}

/** The client-facing error for a credential that could not be had from Vault. */
export function credentialUnavailable(err: unknown, address: string): ProxyError {
  const why = err instanceof Error ? err.message : String(err)
  const hint =
    err instanceof VaultError
      ? {
          unreachable: `Check vault.address (${address}) and that Vault is running and reachable from the proxy.`,
          sealed: 'Unseal Vault; cached credentials are used until they expire.',
          permission_denied: `Grant the proxy's Vault policy access to ${err.path}.`,
          not_found: `Check the role or path configured under credentials (Vault path ${err.path}).`,
          bad_request: 'Check the credentials and vault.auth settings of the proxy.',
          server_error: 'Check the Vault server log; the proxy retries with backoff.',
        }[err.failure]
      : 'See the proxy log.'
  return new ProxyError(
    'vault_unavailable',
    { sqlState: '08001', message: `pg-vault-proxy could not obtain database credentials from Vault: ${why}`, hint },
    { cause: err },
  )
}
