import { accessSync, constants } from 'node:fs'
import { stat } from 'node:fs/promises'
import { readSecretFile, type SecretFileLog } from '../config/secret-file.js'
import { noMetrics, type CredentialMetrics } from '../ops/metrics.js'
import { ProxyError } from '../proxy/proxy-error.js'
import {
  permanentHold,
  type CredentialHold,
  type CredentialSource,
  type CredentialStatus,
  type DbCredential,
} from './credential-source.js'

export interface StaticSourceOptions {
  username: string
  /** Inline password (discouraged: it sits in the config file). */
  password?: string | undefined
  /** A file holding the password, re-read when it changes (so external rotation just works). */
  passwordFile?: string | undefined
  /** Told when the password file is readable by others. */
  log?: SecretFileLog | undefined
}

/**
 * Credentials from the configuration: a fixed username and a password given inline or in a file.
 * The file's trailing newline is dropped, as with .pgpass-style secret files written by tools.
 */
export class StaticCredentialSource implements CredentialSource {
  private cached: { credential: DbCredential; mtimeMs: number; size: number } | undefined
  /** Survives invalidate(), so a re-read of an unchanged file is not counted as a new credential. */
  private lastPassword: string | undefined

  constructor(
    private readonly options: StaticSourceOptions,
    private readonly metrics: CredentialMetrics = noMetrics,
  ) {}

  async get(): Promise<DbCredential> {
    const { username, password, passwordFile } = this.options
    if (passwordFile === undefined) return { username, password: password ?? '', origin: 'credentials.static' }
    return this.readPasswordFile(passwordFile)
  }

  async invalidate(): Promise<boolean> {
    if (this.options.passwordFile === undefined) return false
    const before = this.cached?.credential.password
    this.cached = undefined
    const after = await this.get().then(
      (c) => c.password,
      () => undefined,
    )
    return after !== undefined && after !== before
  }

  use(): CredentialHold {
    // Sessions outlive a password change (PostgreSQL checks passwords only at login): nothing to move.
    return permanentHold()
  }

  status(): CredentialStatus {
    const { username, passwordFile } = this.options
    if (passwordFile === undefined) return { ready: true, user: username, detail: 'password given inline' }
    try {
      // A readable file is as good as a credential: it is read at each login that needs it.
      accessSync(passwordFile, constants.R_OK)
      return { ready: true, user: username, detail: `password file ${passwordFile} is readable` }
    } catch (err) {
      const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message
      return { ready: false, user: username, detail: `cannot read the password file ${passwordFile} (${why})` }
    }
  }

  async close(): Promise<void> {
    this.cached = undefined
    return Promise.resolve()
  }

  private async readPasswordFile(path: string): Promise<DbCredential> {
    try {
      const info = await stat(path)
      const cached = this.cached
      if (cached && cached.mtimeMs === info.mtimeMs && cached.size === info.size) return cached.credential
      const text = await readSecretFile(path, 'credentials.static.password_file', this.options.log)
      const credential = { username: this.options.username, password: text.replace(/\r?\n$/, ''), origin: path }
      const previous = this.lastPassword
      if (previous !== credential.password) {
        this.metrics.credentialIssued('static_file')
        if (previous !== undefined) this.metrics.credentialSwapped('static_file')
      }
      this.lastPassword = credential.password
      this.cached = { credential, mtimeMs: info.mtimeMs, size: info.size }
      return credential
    } catch (err) {
      const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message
      throw new ProxyError(
        'credentials_unavailable',
        {
          sqlState: '08001',
          message: `pg-vault-proxy cannot read the upstream password file ${path} (${why})`,
          hint: 'Check credentials.static.password_file: the file must exist and be readable by the proxy.',
        },
        { cause: err },
      )
    }
  }
}
