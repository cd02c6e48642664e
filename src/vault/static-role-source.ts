import { RereadCredentialSource, type CredentialRead } from './reread-source.js'
import { VaultError } from './vault-error.js'
import type { VaultSession } from './vault-session.js'

/** When a rotation is due (ttl 0), look again this soon. */
const ROTATION_POLL_MS = 1_000

/**
 * Credentials of a Vault static role (`<mount>/static-creds/<role>`): a fixed user whose password
 * Vault rotates. There is no lease to renew; the credential is read again when its `ttl` (time to
 * the next rotation) runs out, and at once when the upstream refuses it.
 */
export class StaticRoleCredentialSource extends RereadCredentialSource {
  private lastPassword: string | undefined

  constructor(
    vault: VaultSession,
    private readonly path: string,
  ) {
    super(vault, path, 'vault_static_role')
  }

  static forRole(vault: VaultSession, mount: string, role: string): StaticRoleCredentialSource {
    return new StaticRoleCredentialSource(vault, `${mount}/static-creds/${role}`)
  }

  protected async readCredential(): Promise<CredentialRead> {
    const { data } = await this.vault.call(this.path, (client) => client.read(this.path))
    const { username, password } = data
    if (typeof username !== 'string' || typeof password !== 'string') {
      throw new Error(`Vault's answer for ${this.path} has no username and password`)
    }
    // A static role made with skip_import_rotation keeps the password the database already had
    // until its first rotation, and Vault answers with an empty one and no last_vault_rotation.
    if (password === '') {
      throw new VaultError(
        'bad_request',
        this.path,
        `Vault's static role ${this.path} has no password yet (never rotated by Vault: skip_import_rotation)`,
        undefined,
        { hint: `Have Vault rotate it once: vault write ${this.path.replace('/static-creds/', '/rotate-role/')} -f` },
      )
    }
    const ttlSeconds = Number(data.ttl ?? 0)
    const rotated = this.lastPassword !== undefined && this.lastPassword !== password
    this.lastPassword = password
    this.log.info(
      { user: username, ttlSeconds, rotated, lastRotation: data.last_vault_rotation },
      'read static role credentials',
    )
    return {
      credential: { username, password, origin: `Vault ${this.path}` },
      // After the rotation time, read again (plus a second for Vault to finish rotating).
      reuseUntil: Date.now() + (ttlSeconds > 0 ? ttlSeconds * 1000 + 1_000 : ROTATION_POLL_MS),
    }
  }
}
