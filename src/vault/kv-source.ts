import { RereadCredentialSource, type CredentialRead } from './reread-source.js'
import type { VaultSession } from './vault-session.js'

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
export class KvCredentialSource extends RereadCredentialSource {
  private readonly dataPath: string

  constructor(
    vault: VaultSession,
    private readonly options: KvSourceOptions,
  ) {
    const dataPath = `${options.mount}/data/${options.path}`
    super(vault, dataPath, 'vault_kv')
    this.dataPath = dataPath
  }

  protected async readCredential(): Promise<CredentialRead> {
    const { data } = await this.vault.call(this.dataPath, (client) => client.read(this.dataPath))
    const secret = (data.data ?? {}) as Record<string, unknown>
    const version = Number((data.metadata as { version?: number } | undefined)?.version ?? 0)
    const { username, password } = secret
    if (typeof username !== 'string' || typeof password !== 'string') {
      throw new Error(`the KV secret ${this.dataPath} must hold the keys "username" and "password"`)
    }
    this.log.info({ user: username, version }, 'read credentials from KV')
    return {
      credential: { username, password, origin: `Vault KV ${this.dataPath} v${version}` },
      reuseUntil: Date.now() + this.options.refreshSeconds * 1000,
    }
  }
}
