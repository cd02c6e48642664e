import type { Logger } from 'pino'
import type { CredentialSource, DbCredential } from './credential-source.js'
import { RefusalBackoff } from './refusal-backoff.js'
import { credentialUnavailable, type VaultSession } from './vault-session.js'

/** One read of a Vault secret that holds a whole credential, and until when it may be reused. */
export interface CredentialRead {
  credential: DbCredential
  reuseUntil: number
}

/**
 * A credential kept in Vault without a lease the proxy manages (a static role, a KV secret): read,
 * reused until `reuseUntil`, read again when the upstream refuses it. While Vault is down, the last
 * credential read keeps serving: only Vault can change it, so it stays as valid as it was.
 */
export abstract class RereadCredentialSource implements CredentialSource {
  private current: CredentialRead | undefined
  private reading: Promise<DbCredential> | undefined
  private readonly backoff = new RefusalBackoff()
  protected readonly log: Logger

  constructor(
    protected readonly vault: VaultSession,
    source: string,
  ) {
    this.log = vault.log.child({ source })
  }

  /** Reads the secret from Vault. */
  protected abstract readCredential(): Promise<CredentialRead>

  async get(): Promise<DbCredential> {
    const current = this.current
    if (current && Date.now() < current.reuseUntil) return current.credential
    try {
      return await this.read()
    } catch (err) {
      if (current) return current.credential
      throw credentialUnavailable(err, this.vault.client.address)
    }
  }

  /** Reads again; a retry is worth it only if Vault now has a different password. */
  async invalidate(credential: DbCredential): Promise<boolean> {
    if (!this.backoff.allow()) return false
    this.current = undefined
    const fresh = await this.read().catch(() => undefined)
    return fresh !== undefined && (fresh.password !== credential.password || fresh.username !== credential.username)
  }

  use(): () => void {
    return () => undefined
  }

  close(): Promise<void> {
    this.current = undefined
    this.vault.stop()
    return Promise.resolve()
  }

  /** Single flight: concurrent readers share one Vault request. */
  private read(): Promise<DbCredential> {
    this.reading ??= this.readCredential()
      .then((read) => {
        this.current = read
        return read.credential
      })
      .finally(() => (this.reading = undefined))
    return this.reading
  }
}
