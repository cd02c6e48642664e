import { unwatchFile, watchFile } from 'node:fs'
import { stat } from 'node:fs/promises'
import { readSecretFile as readSecretFileChecked } from '../config/secret-file.js'
import type { Logger } from 'pino'
import { setLongTimeout, type LongTimer } from './long-timer.js'
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

/** Renew the token at this fraction of its TTL (Vault Agent's rule); log in again then if it cannot be renewed. */
const RENEW_AT = 2 / 3
/** How often a token file (a Vault Agent sink) is looked at for a new token. */
const TOKEN_FILE_POLL_MS = 1_000

/**
 * Keeps the proxy's own Vault token valid. Login methods (AppRole, Kubernetes, JWT) log in on first
 * use, renew the token at about 2/3 of its TTL, and log in again when renewal fails or is capped by
 * the token's max TTL — because Vault revokes every lease a token created when the token expires.
 * A token that cannot be renewed (a batch token, or `renewable: false`) is not renewed: the method
 * logs in again at 2/3 of its TTL instead, and the credential sources move to leases of the new
 * token while the old one still lives. A token given directly is renewed if renewable; a token file
 * (a Vault Agent sink) is watched, and a new token in it is announced like a new login.
 */
export class VaultAuthenticator {
  private expiresAt = 0
  private loggingIn: Promise<void> | undefined
  private checking: Promise<boolean> | undefined
  private timer: LongTimer | undefined
  private tokenFileStamp = ''
  private fileToken = ''
  private watchedFile: string | undefined
  private stopped = false
  private hasLoggedIn = false
  private readonly tokenListeners: Array<() => void> = []
  /** When a login is planned because the token cannot be renewed (epoch ms), else undefined. */
  plannedLoginAt: number | undefined
  /**
   * When the current token ends for good (epoch ms), if it cannot be renewed: every lease it creates
   * is revoked with it, whatever lease_duration Vault's reply shows (a batch token's leases are
   * "constrained to the remaining TTL of the batch token": https://developer.hashicorp.com/vault/docs/concepts/tokens#batch-tokens).
   */
  leasesEndBy: number | undefined

  constructor(
    private readonly client: VaultClient,
    private readonly settings: VaultAuthSettings,
    private readonly log: Logger,
    private readonly tokenFilePollMs = TOKEN_FILE_POLL_MS,
  ) {}

  get method(): string {
    return this.settings.method
  }

  /** Makes sure a usable token is set on the client; call before each Vault request. */
  async ensureToken(): Promise<void> {
    const { settings } = this
    if (settings.method === 'token') {
      if (settings.tokenFile) {
        this.watchTokenFile(settings.tokenFile)
        await this.readTokenFile(settings.tokenFile)
      } else if (!this.client.hasToken) {
        this.client.token = settings.token ?? ''
        await this.scheduleStaticTokenRenewal()
      }
      return
    }
    if (this.client.hasToken && Date.now() < this.expiresAt) return
    await this.login()
  }

  /**
   * Whether Vault still knows the current token (lookup-self), after a bare 403: Vault <= 1.16 and
   * OpenBao give a dead token no other sign. Anything but a 403 counts as alive (Vault being down is
   * not the token's fault). Concurrent callers share one lookup.
   */
  tokenIsValid(): Promise<boolean> {
    this.checking ??= this.client
      .lookupSelf()
      .then(
        () => true,
        (err: unknown) =>
          !(err instanceof VaultError && (err.failure === 'permission_denied' || err.failure === 'invalid_token')),
      )
      .finally(() => (this.checking = undefined))
    return this.checking
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
    this.timer?.clear()
    // Only this authenticator's listener: routes may share a token file.
    if (this.watchedFile) unwatchFile(this.watchedFile, this.onTokenFileChange)
    this.watchedFile = undefined
  }

  /**
   * Called after a login replaced an earlier token, or a token file got a new one. Vault revokes a
   * token's leases when the token ends, so credentials issued under the old token must be replaced.
   */
  onNewToken(listener: () => void): void {
    this.tokenListeners.push(listener)
  }

  private announceNewToken(): void {
    for (const listener of this.tokenListeners) listener()
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
    if (this.hasLoggedIn) this.announceNewToken()
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
    this.timer?.clear()
    this.plannedLoginAt = undefined
    this.leasesEndBy = ttlMs > 0 && !auth.renewable ? this.expiresAt : undefined
    if (ttlMs <= 0 || this.stopped) return
    const due = Math.max(1000, ttlMs * RENEW_AT)
    if (auth.renewable) this.timer = setLongTimeout(() => void this.renew(auth.leaseDurationSeconds), due)
    else if (this.settings.method !== 'token') {
      this.plannedLoginAt = Date.now() + due
      this.timer = setLongTimeout(() => void this.loginAhead(), due)
    }
  }

  /** A token that cannot be renewed (a batch token): a new login while the old token still lives. */
  private async loginAhead(): Promise<void> {
    this.log.info('the Vault token cannot be renewed; logging in again before it expires')
    await this.recover().catch((e: Error) => this.log.error({ err: e.message }, 'Vault login failed'))
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
      else if (self.ttlSeconds > 0) {
        this.leasesEndBy = Date.now() + self.ttlSeconds * 1000
        this.log.warn(
          { ttlSeconds: self.ttlSeconds, type: self.type },
          'the configured Vault token cannot be renewed: it and every lease made under it end in ttlSeconds; use a login method (vault.auth.method) or a token file a Vault Agent keeps fresh',
        )
      } else this.log.info({ type: self.type }, 'using the configured Vault token (without expiry)')
    } catch (err) {
      if (err instanceof VaultError && (err.failure === 'permission_denied' || err.failure === 'invalid_token')) {
        this.client.token = '' // looked up again at the next call
        throw new VaultError('invalid_token', err.path, `Vault refused the configured token (${err.message})`, 403, {
          hint: 'Give the proxy a valid Vault token (vault.auth.token); it needs the default policy, which allows lookup-self.',
        })
      }
      this.log.warn({ err: (err as Error).message }, 'could not look up the Vault token')
    }
  }

  private readonly onTokenFileChange = (): void => {
    const path = this.watchedFile
    if (path === undefined) return
    this.readTokenFile(path).catch((err: Error) =>
      this.log.warn({ path, err: err.message }, 'could not read the Vault token file'),
    )
  }

  /** Polls the token file (stat only), so a token the agent writes is used before the old one dies. */
  private watchTokenFile(path: string): void {
    if (this.watchedFile !== undefined || this.stopped) return
    this.watchedFile = path
    // watchFile polls stat: it sees a file replaced by rename, as agents write sinks, where fs.watch may not.
    watchFile(path, { interval: this.tokenFilePollMs, persistent: false }, this.onTokenFileChange)
  }

  private async readTokenFile(path: string): Promise<void> {
    const info = await stat(path).catch(() => undefined)
    const stamp = info ? `${info.mtimeMs}:${info.size}:${info.ino}` : 'missing'
    if (stamp === this.tokenFileStamp) return
    const token = await readSecretFile(path, 'vault.auth.token_file', this.log)
    this.tokenFileStamp = stamp
    if (token === this.fileToken) return
    const previous = this.fileToken
    this.fileToken = token
    this.client.token = token
    this.log.info({ path }, 'read the Vault token file')
    // Leases of the old token die with it: the sources fetch fresh credentials under the new one.
    if (previous !== '' && token !== '') this.announceNewToken()
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
