import type { Logger } from 'pino'
import {
  permanentHold,
  type CredentialHold,
  type CredentialSource,
  type CredentialStatus,
  type DbCredential,
} from './credential-source.js'
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
  /** Survives invalidate(), so a swap to a different password can be told from a re-read of the same. */
  private lastRead: DbCredential | undefined
  private readonly backoff = new RefusalBackoff()
  protected readonly log: Logger

  constructor(
    protected readonly vault: VaultSession,
    private readonly source: string,
    /** The metrics label: vault_static_role or vault_kv. */
    private readonly kind: string,
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

  use(): CredentialHold {
    // Sessions outlive a password change (PostgreSQL checks passwords only at login): nothing to move.
    return permanentHold()
  }

  status(): CredentialStatus {
    const current = this.current
    // No expiry to report: only Vault changes this credential, so the last one read stays usable.
    if (current) return { ready: true, user: current.credential.username, detail: current.credential.origin }
    return { ready: false, detail: `no credential read yet from Vault ${this.source}` }
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
        const previous = this.current?.credential ?? this.lastRead
        const { metrics } = this.vault
        const changed =
          previous?.username !== read.credential.username || previous.password !== read.credential.password
        if (changed) metrics.credentialIssued(this.kind)
        if (previous && changed) metrics.credentialSwapped(this.kind)
        this.current = read
        this.lastRead = read.credential
        return read.credential
      })
      .finally(() => (this.reading = undefined))
    return this.reading
  }
}
