import type { Logger } from 'pino'
import type { CredentialSource, DbCredential } from './credential-source.js'
import { RefusalBackoff } from './refusal-backoff.js'
import { credentialUnavailable, type VaultSession } from './vault-session.js'

/** When a rotation is due (ttl 0), look again this soon. */
const ROTATION_POLL_MS = 1_000

/**
 * Credentials of a Vault static role (`<mount>/static-creds/<role>`): a fixed user whose password
 * Vault rotates. There is no lease to renew; the credential is re-read when its `ttl` (time to the
 * next rotation) runs out, and at once when the upstream refuses it.
 */
export class StaticRoleCredentialSource implements CredentialSource {
  private current: { credential: DbCredential; rereadAt: number } | undefined
  private reading: Promise<DbCredential> | undefined
  private readonly backoff = new RefusalBackoff()
  private readonly log: Logger

  constructor(
    private readonly vault: VaultSession,
    private readonly mount: string,
    private readonly role: string,
  ) {
    this.log = vault.log.child({ source: this.path })
  }

  private get path(): string {
    return `${this.mount}/static-creds/${this.role}`
  }

  async get(): Promise<DbCredential> {
    const current = this.current
    if (current && Date.now() < current.rereadAt) return current.credential
    try {
      return await this.read()
    } catch (err) {
      // The password stays valid until Vault rotates it, which needs Vault up: keep serving it.
      if (current) return current.credential
      throw credentialUnavailable(err, this.vault.client.address)
    }
  }

  async invalidate(credential: DbCredential): Promise<boolean> {
    if (!this.backoff.allow()) return false
    this.current = undefined
    const fresh = await this.read().catch(() => undefined)
    return fresh !== undefined && fresh.password !== credential.password
  }

  use(): () => void {
    return () => undefined
  }

  async close(): Promise<void> {
    this.current = undefined
    this.vault.stop()
    return Promise.resolve()
  }

  private read(): Promise<DbCredential> {
    this.reading ??= this.doRead().finally(() => (this.reading = undefined))
    return this.reading
  }

  private async doRead(): Promise<DbCredential> {
    const { data } = await this.vault.call(this.path, (client) => client.read(this.path))
    const { username, password } = data
    if (typeof username !== 'string' || typeof password !== 'string')
      throw new Error(`Vault's answer for ${this.path} has no username and password`)
    const ttlSeconds = Number(data.ttl ?? 0)
    const credential = { username, password, origin: `Vault ${this.path}` }
    // ttl is the time to the next rotation; after it, read again (plus a second for Vault to finish).
    this.current = {
      credential,
      rereadAt: Date.now() + (ttlSeconds > 0 ? ttlSeconds * 1000 + 1_000 : ROTATION_POLL_MS),
    }
    const changed = this.lastPassword !== undefined && this.lastPassword !== password
    this.lastPassword = password
    this.log.info(
      { user: username, ttlSeconds, rotated: changed, lastRotation: data.last_vault_rotation },
      'read static role credentials',
    )
    return credential
  }

  private lastPassword: string | undefined
}
