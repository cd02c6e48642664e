import type { Logger } from 'pino'
import type { CredentialSource, DbCredential } from './credential-source.js'
import { RefusalBackoff } from './refusal-backoff.js'
import { credentialUnavailable, type VaultSession } from './vault-session.js'

export interface KvSourceOptions {
  mount: string
  path: string
  /** How often the secret is read again, so a rotated password is picked up without a refusal. */
  refreshSeconds: number
}

/**
 * A username and password kept in a KV version 2 secret (`<mount>/data/<path>`, keys `username`
 * and `password`), a common setup where another process rotates the password.
 */
export class KvCredentialSource implements CredentialSource {
  private current: { credential: DbCredential; version: number; readAt: number } | undefined
  private reading: Promise<DbCredential> | undefined
  private readonly backoff = new RefusalBackoff()
  private readonly log: Logger

  constructor(
    private readonly vault: VaultSession,
    private readonly options: KvSourceOptions,
  ) {
    this.log = vault.log.child({ source: this.dataPath })
  }

  private get dataPath(): string {
    return `${this.options.mount}/data/${this.options.path}`
  }

  async get(): Promise<DbCredential> {
    const current = this.current
    if (current && Date.now() - current.readAt < this.options.refreshSeconds * 1000) return current.credential
    try {
      return await this.read()
    } catch (err) {
      if (current) return current.credential
      throw credentialUnavailable(err, this.vault.client.address)
    }
  }

  async invalidate(credential: DbCredential): Promise<boolean> {
    if (!this.backoff.allow()) return false
    const before = this.current?.version
    this.current = undefined
    const fresh = await this.read().catch(() => undefined)
    const version = (this.current as { version: number } | undefined)?.version
    return fresh !== undefined && (version !== before || fresh.password !== credential.password)
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
    const { data } = await this.vault.call(this.dataPath, (client) => client.read(this.dataPath))
    const secret = (data.data ?? {}) as Record<string, unknown>
    const version = Number((data.metadata as { version?: number } | undefined)?.version ?? 0)
    const { username, password } = secret
    if (typeof username !== 'string' || typeof password !== 'string') {
      throw new Error(`the KV secret ${this.dataPath} must hold the keys "username" and "password"`)
    }
    const credential = { username, password, origin: `Vault KV ${this.dataPath} v${version}` }
    this.current = { credential, version, readAt: Date.now() }
    this.log.info({ user: username, version }, 'read credentials from KV')
    return credential
  }
}
