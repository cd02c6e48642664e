import type { Logger } from 'pino'
import { noMetrics, type CredentialMetrics } from '../ops/metrics.js'
import { ProxyError } from '../proxy/proxy-error.js'
import { RefusalBackoff } from './refusal-backoff.js'
import { DEFAULT_RETRY, withRetry, type RetryPolicy } from './retry.js'
import type { VaultAuthenticator } from './vault-authenticator.js'
import type { VaultClient } from './vault-client.js'
import { VaultError } from './vault-error.js'

/**
 * What every credential source needs from Vault: a call made with a valid token, retried with
 * backoff and jitter while Vault is unreachable, sealed, failing or rate-limiting (as long as its
 * Retry-After asks), with one fresh login when the token turns out dead, and any failure turned into
 * a ProxyError the client can act on.
 */
export class VaultSession {
  private readonly reloginBackoff = new RefusalBackoff()

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
    this.client.close()
  }

  async call<T>(what: string, request: (client: VaultClient) => Promise<T>): Promise<T> {
    let recovered = false
    const attempt = async (): Promise<T> => {
      await this.auth.ensureToken()
      try {
        return await request(this.client)
      } catch (err) {
        if (recovered || !(err instanceof VaultError)) throw err
        // Vault >= 1.17 says "invalid token"; Vault <= 1.16 and OpenBao answer a dead token (revoked,
        // num_uses spent, lost in a snapshot restore or a failover) with a bare "permission denied",
        // as they do a policy denial: lookup-self tells the two apart before the 403 is believed.
        if (err.failure === 'permission_denied') {
          if (await this.auth.tokenIsValid()) throw err // a real policy denial
          // lookup-self may be denied to a live token without the default policy: bounded logins.
          if (!this.reloginBackoff.allow()) throw err
        }
        if (err.failure !== 'permission_denied' && err.failure !== 'invalid_token') throw err
        recovered = true
        // One fresh login (or a re-read token file), then the same call again.
        if (await this.auth.recover()) return request(this.client)
        throw new VaultError(
          'invalid_token',
          err.path,
          `Vault refused the proxy's token on ${err.path}`,
          err.statusCode,
        )
      }
    }
    return withRetry(
      attempt,
      (err) => err instanceof VaultError && err.isTransient,
      this.retry,
      (err, n, delayMs) =>
        this.log.warn({ what, attempt: n, delayMs, err: (err as Error).message }, 'Vault call failed; retrying'),
      (err) => (err instanceof VaultError ? err.retryAfterMs : undefined),
    )
  }
}

/** The client-facing error for a credential that could not be had from Vault. */
export function credentialUnavailable(err: unknown, address: string): ProxyError {
  const why = err instanceof Error ? err.message : String(err)
  const hint = err instanceof VaultError ? err.hint(address) : 'See the proxy log.'
  return new ProxyError(
    'vault_unavailable',
    { sqlState: '08001', message: `pg-vault-proxy could not obtain database credentials from Vault: ${why}`, hint },
    { cause: err },
  )
}
