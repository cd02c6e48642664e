import { stat } from 'node:fs/promises'
import { readSecretFile as readSecretFileChecked } from '../config/secret-file.js'
import type { Logger } from 'pino'
import type { VaultAuth, VaultClient } from './vault-client.js'
import { VaultError } from './vault-error.js'

export type VaultAuthSettings =
  | { method: 'token'; token?: string | undefined; tokenFile?: string | undefined }
  | {
      method: 'approle'
      mount: string
      roleId: string
      secretIdFile?: string | undefined
      secretId?: string | undefined
    }
  | { method: 'kubernetes' | 'jwt'; mount: string; role: string; jwtFile: string }

/** Renew the token at this fraction of its TTL (Vault Agent's rule). */
const RENEW_AT = 2 / 3

/**
 * Keeps the proxy's own Vault token valid. Login methods (AppRole, Kubernetes, JWT) log in on first
 * use, renew the token at about 2/3 of its TTL, and log in again when renewal fails or is capped by
 * the token's max TTL — because Vault revokes every lease a token created when the token expires.
 * A token given directly is renewed if renewable; a token file (a Vault Agent sink) is re-read
 * whenever it changes and left to the agent to renew.
 */
export class VaultAuthenticator {
  private expiresAt = 0
  private loggingIn: Promise<void> | undefined
  private timer: NodeJS.Timeout | undefined
  private tokenFileStamp = ''
  private stopped = false
  private hasLoggedIn = false
  private readonly tokenListeners: Array<() => void> = []

  constructor(
    private readonly client: VaultClient,
    private readonly settings: VaultAuthSettings,
    private readonly log: Logger,
  ) {}

  get method(): string {
    return this.settings.method
  }

  /** Makes sure a usable token is set on the client; call before each Vault request. */
  async ensureToken(): Promise<void> {
    const { settings } = this
    if (settings.method === 'token') {
      if (settings.tokenFile) await this.readTokenFile(settings.tokenFile)
      else if (!this.client.hasToken) {
        this.client.token = settings.token ?? ''
        await this.scheduleStaticTokenRenewal()
      }
      return
    }
    if (this.client.hasToken && Date.now() < this.expiresAt) return
    await this.login()
  }

  /** The token was refused (expired or revoked under us): log in again if the method can. */
  async recover(): Promise<boolean> {
    if (this.settings.method === 'token') {
      if (!this.settings.tokenFile) return false
      this.tokenFileStamp = '' // force a re-read
      await this.readTokenFile(this.settings.tokenFile)
      return true
    }
    this.expiresAt = 0
    await this.login()
    return true
  }

  stop(): void {
    this.stopped = true
    clearTimeout(this.timer)
  }

  /**
   * Called after a login replaced an earlier token. Vault revokes a token's leases when the token
   * expires, so credentials issued under the old token must be replaced before then.
   */
  onNewToken(listener: () => void): void {
    this.tokenListeners.push(listener)
  }

  private async login(): Promise<void> {
    this.loggingIn ??= this.doLogin().finally(() => (this.loggingIn = undefined))
    return this.loggingIn
  }

  private async doLogin(): Promise<void> {
    const { settings } = this
    if (settings.method === 'token') return
    let auth: VaultAuth
    if (settings.method === 'approle') {
      const secretId = settings.secretIdFile
        ? await readSecretFile(settings.secretIdFile, 'vault.auth.secret_id_file', this.log)
        : settings.secretId
      auth = await this.client.login(settings.mount, {
        role_id: settings.roleId,
        ...(secretId ? { secret_id: secretId } : {}),
      })
    } else {
      // The service-account token file is re-read at each login: kubelet rotates it.
      const jwt = await readSecretFile(settings.jwtFile, 'vault.auth.jwt_file', this.log)
      auth = await this.client.login(settings.mount, { role: settings.role, jwt })
    }
    this.client.token = auth.clientToken
    this.accept(auth, 'logged in to Vault')
    if (this.hasLoggedIn) for (const listener of this.tokenListeners) listener()
    this.hasLoggedIn = true
  }

  private accept(auth: VaultAuth, message: string): void {
    const ttlMs = auth.leaseDurationSeconds * 1000
    this.expiresAt = ttlMs > 0 ? Date.now() + ttlMs : Number.POSITIVE_INFINITY
    this.log.info(
      {
        method: this.settings.method,
        ttlSeconds: auth.leaseDurationSeconds,
        renewable: auth.renewable,
        policies: auth.policies,
      },
      message,
    )
    clearTimeout(this.timer)
    if (ttlMs > 0 && !this.stopped) {
      this.timer = setTimeout(() => void this.renew(auth.leaseDurationSeconds), Math.max(1000, ttlMs * RENEW_AT))
      this.timer.unref()
    }
  }

  private async renew(previousTtlSeconds: number): Promise<void> {
    try {
      const auth = await this.client.renewSelf(previousTtlSeconds)
      // A renewal shorter than asked means the token's max TTL is near: a fresh login is needed.
      if (auth.leaseDurationSeconds < previousTtlSeconds && this.settings.method !== 'token') {
        this.log.info(
          { ttlSeconds: auth.leaseDurationSeconds },
          'Vault token renewal capped by its max TTL; logging in again',
        )
        await this.recover()
        return
      }
      this.accept(auth, 'renewed the Vault token')
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'could not renew the Vault token')
      if (this.settings.method !== 'token')
        await this.recover().catch((e: Error) => this.log.error({ err: e.message }, 'Vault login failed'))
    }
  }

  private async scheduleStaticTokenRenewal(): Promise<void> {
    try {
      const self = await this.client.lookupSelf()
      if (self.ttlSeconds > 0 && self.renewable)
        this.accept(
          { clientToken: '', leaseDurationSeconds: self.ttlSeconds, renewable: true, policies: [] },
          'using the configured Vault token',
        )
      else
        this.log.info(
          { ttlSeconds: self.ttlSeconds },
          'using the configured Vault token (not renewable or without expiry)',
        )
    } catch (err) {
      if (err instanceof VaultError && err.failure === 'permission_denied') throw err
      this.log.warn({ err: (err as Error).message }, 'could not look up the Vault token')
    }
  }

  private async readTokenFile(path: string): Promise<void> {
    const info = await stat(path).catch(() => undefined)
    const stamp = info ? `${info.mtimeMs}:${info.size}` : 'missing'
    if (stamp === this.tokenFileStamp) return
    this.client.token = await readSecretFile(path, 'vault.auth.token_file', this.log)
    this.tokenFileStamp = stamp
    this.log.info({ path }, 'read the Vault token file')
  }
}

async function readSecretFile(path: string, key: string, log: Logger): Promise<string> {
  try {
    return (await readSecretFileChecked(path, key, log)).trim()
  } catch (err) {
    throw new VaultError(
      'bad_request',
      path,
      `cannot read ${key} ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
    )
  }
}
