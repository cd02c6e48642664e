/**
 * The PostgreSQL database plugin (plugins/database/postgresql): the SQL Vault runs to create,
 * renew, rotate and drop database users, over a small pool of connections opened with the
 * configured connection_url. Error texts follow the plugin's, with PostgreSQL errors written as
 * pgx writes them ("ERROR: … (SQLSTATE 42704)") and the root password masked as "[password]".
 */
import pg from 'pg'
import { multierrorText } from '../envelope.js'
import { Fields } from '../fields.js'
import { pgExpiration } from '../time-format.js'
import { renderConnectionUrl, withVaultSessionSettings } from './connection-url.js'
import { scramSha256Verifier } from './scram-verifier.js'
import { parseArbitraryStringSlice, queriesOf, substitute } from './statements.js'
import { DEFAULT_USERNAME_TEMPLATE, UsernameTemplate } from './username-template.js'
import type { UsernameMetadata } from './username-template.js'

const DEFAULT_RENEW_STATEMENT = `
ALTER ROLE "{{name}}" VALID UNTIL '{{expiration}}';
`
const DEFAULT_CHANGE_PASSWORD_STATEMENT = `
ALTER ROLE "{{username}}" WITH PASSWORD '{{password}}';
`
/** connutil: a config without max_open_connections gets 4. */
const DEFAULT_MAX_OPEN_CONNECTIONS = 4

/** pgx's PgError.Error(), which is what Vault's messages carry. */
export function formatPgError(err: unknown): string {
  const e = err as { severity?: string; code?: string; message?: string }
  if (typeof e.severity === 'string' && typeof e.code === 'string')
    return `${e.severity}: ${e.message} (SQLSTATE ${e.code})`
  return e.message ?? String(err)
}

/** dbutil.QuoteIdentifier. */
function quoteIdentifier(name: string): string {
  return `"${name.replaceAll('\u0000', '').replaceAll('"', '""')}"`
}

export interface UserChange {
  password?: { value: string; statements: readonly string[] }
  expiration?: { atMs: number; statements: readonly string[] }
}

export class PostgresPlugin {
  private constructor(
    private readonly pool: pg.Pool,
    private readonly usernames: UsernameTemplate,
    private readonly usesScram: boolean,
    /** The configured root password, masked out of every error. */
    private readonly rootPassword: string,
  ) {}

  /** Initialize: checks the connection details and, with verifyConnection, that the database answers. */
  static async initialize(
    details: Readonly<Record<string, unknown>>,
    verifyConnection: boolean,
  ): Promise<PostgresPlugin> {
    const f = new Fields(details)
    const connectionUrl = f.string('connection_url')
    if (connectionUrl === '') throw new Error('connection_url cannot be empty')
    const url = renderConnectionUrl(connectionUrl, {
      username: f.string('username'),
      password: f.string('password'),
      disableEscaping: f.bool('disable_escaping', false),
    })

    let usernames: UsernameTemplate
    try {
      usernames = new UsernameTemplate(f.string('username_template') || DEFAULT_USERNAME_TEMPLATE)
    } catch (err) {
      throw new Error(`unable to initialize username template: ${(err as Error).message}`, { cause: err })
    }
    try {
      usernames.generate({ DisplayName: '', RoleName: '' })
    } catch (err) {
      throw new Error(`invalid username template: ${(err as Error).message}`, { cause: err })
    }

    const passwordAuthentication = f.string('password_authentication') || 'password'
    if (passwordAuthentication !== 'password' && passwordAuthentication !== 'scram-sha-256') {
      throw new Error(`'${passwordAuthentication}' is not a valid password authentication type`)
    }

    const lifetimeSeconds = f.durationSeconds('max_connection_lifetime')
    const pool = new pg.Pool({
      connectionString: withVaultSessionSettings(url),
      max: f.int('max_open_connections') || DEFAULT_MAX_OPEN_CONNECTIONS,
      ...(lifetimeSeconds > 0 ? { maxLifetimeSeconds: lifetimeSeconds } : {}),
      // pg ignores the timezone=UTC Vault appends to the URL; this applies it.
      options: '-c TimeZone=UTC',
    })
    // An idle connection dropped by the server must not crash the dev Vault; the next query reconnects.
    pool.on('error', () => undefined)
    const plugin = new PostgresPlugin(pool, usernames, passwordAuthentication === 'scram-sha-256', f.string('password'))
    if (verifyConnection) {
      try {
        await pool.query('SELECT 1')
      } catch (err) {
        await pool.end()
        throw new Error(plugin.sanitize(`error verifying connection: ${formatPgError(err)}`), { cause: err })
      }
    }
    return plugin
  }

  async close(): Promise<void> {
    await this.pool.end()
  }

  generateUsername(metadata: UsernameMetadata): string {
    return this.usernames.generate(metadata)
  }

  /** NewUser: the creation statements in one transaction. */
  async newUser(
    username: string,
    password: string,
    expirationMs: number,
    statements: readonly string[],
  ): Promise<void> {
    if (statements.length === 0) throw new Error('empty creation statements')
    const values = {
      name: username,
      username,
      password: this.usesScram ? scramSha256Verifier(password) : password,
      expiration: pgExpiration(expirationMs),
    }
    await this.inTransaction(
      (err) => `unable to start transaction: ${err}`,
      async (client) => {
        for (const query of queriesOf(statements, true)) {
          await client.query(substitute(query, values)).catch((err: unknown) => {
            throw new Error(`failed to execute query: ${formatPgError(err)}`, { cause: err })
          })
        }
      },
    )
  }

  /** UpdateUser: a password change and/or a new expiration; failures come back as one multierror. */
  async updateUser(username: string, change: UserChange): Promise<void> {
    if (username === '') throw new Error('missing username')
    if (!change.password && !change.expiration) throw new Error('no changes requested')
    const errors: string[] = []
    if (change.password) {
      await this.changePassword(username, change.password.value, change.password.statements).catch((err: Error) =>
        errors.push(err.message),
      )
    }
    if (change.expiration) {
      await this.changeExpiration(username, change.expiration.atMs, change.expiration.statements).catch((err: Error) =>
        errors.push(err.message),
      )
    }
    if (errors.length > 0) throw new Error(multierrorText(errors))
  }

  private async changePassword(username: string, password: string, statements: readonly string[]): Promise<void> {
    if (password === '') throw new Error('missing password')
    // The plugin checks that the role exists but does not act on the answer: ALTER ROLE fails anyway.
    await this.pool
      .query('SELECT exists (SELECT rolname FROM pg_roles WHERE rolname=$1);', [username])
      .catch((err: unknown) => {
        throw new Error(this.sanitize(`user does not appear to exist: ${formatPgError(err)}`), { cause: err })
      })
    const values = {
      name: username,
      username,
      password: this.usesScram ? scramSha256Verifier(password) : password,
    }
    const stmts = statements.length > 0 ? statements : [DEFAULT_CHANGE_PASSWORD_STATEMENT]
    await this.inTransaction(
      (err) => `unable to start transaction: ${err}`,
      async (client) => {
        for (const query of stmts.flatMap((s) => parseArbitraryStringSlice(s, ';'))) {
          await client.query(substitute(query, values)).catch((err: unknown) => {
            throw new Error(`failed to execute query: ${formatPgError(err)}`, { cause: err })
          })
        }
      },
    )
  }

  private async changeExpiration(username: string, expirationMs: number, statements: readonly string[]): Promise<void> {
    const values = { name: username, username, expiration: pgExpiration(expirationMs) }
    const stmts = statements.length > 0 ? statements : [DEFAULT_RENEW_STATEMENT]
    await this.inTransaction(
      (err) => err,
      async (client) => {
        for (const query of stmts.flatMap((s) => parseArbitraryStringSlice(s, ';'))) {
          await client.query(substitute(query, values)).catch((err: unknown) => {
            throw new Error(formatPgError(err), { cause: err })
          })
        }
      },
    )
  }

  /** DeleteUser: the custom revocation statements in one transaction, or the default revocation. */
  async deleteUser(username: string, statements: readonly string[]): Promise<void> {
    if (statements.length === 0) return this.defaultDeleteUser(username)
    const values = { name: username, username }
    await this.inTransaction(
      (err) => err,
      async (client) => {
        for (const query of queriesOf(statements, true)) {
          await client.query(substitute(query, values)).catch((err: unknown) => {
            throw new Error(formatPgError(err), { cause: err })
          })
        }
      },
    )
  }

  /**
   * defaultDeleteUser: revoke what can be revoked (outside a transaction, so a failure keeps going),
   * then drop the role. It does not end the user's sessions and does not reassign owned objects.
   */
  private async defaultDeleteUser(username: string): Promise<void> {
    await this.run(async () => {
      const exists = await this.pool.query<{ exists: boolean }>(
        'SELECT exists (SELECT rolname FROM pg_roles WHERE rolname=$1);',
        [username],
      )
      if (exists.rows[0]?.exists !== true) return
      const user = quoteIdentifier(username)
      const schemas = await this.pool.query<{ table_schema: string }>(
        'SELECT DISTINCT table_schema FROM information_schema.role_column_grants WHERE grantee=$1;',
        [username],
      )
      const revocations = schemas.rows.flatMap(({ table_schema }) => [
        `REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA ${quoteIdentifier(table_schema)} FROM ${user};`,
        `REVOKE USAGE ON SCHEMA ${quoteIdentifier(table_schema)} FROM ${user};`,
      ])
      revocations.push(
        `REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA public FROM ${user};`,
        `REVOKE ALL PRIVILEGES ON ALL SEQUENCES IN SCHEMA public FROM ${user};`,
        `REVOKE USAGE ON SCHEMA public FROM ${user};`,
      )
      const database = await this.pool.query<{ current_database: string | null }>('SELECT current_database();')
      const dbname = database.rows[0]?.current_database
      if (dbname) revocations.push(`REVOKE CONNECT ON DATABASE ${quoteIdentifier(dbname)} FROM ${user};`)

      let lastError: unknown
      for (const query of revocations) await this.pool.query(query).catch((err: unknown) => (lastError = err))
      if (lastError !== undefined)
        throw new Error(`could not perform all revocation statements: ${formatPgError(lastError)}`)
      await this.pool.query(`DROP ROLE IF EXISTS ${user};`)
    })
  }

  /** Runs `work` on one connection inside BEGIN … COMMIT; any failure rolls back. */
  private async inTransaction(
    beginError: (err: string) => string,
    work: (client: pg.PoolClient) => Promise<void>,
  ): Promise<void> {
    let client: pg.PoolClient
    try {
      client = await this.pool.connect()
      await client.query('BEGIN').catch((err: unknown) => {
        client.release(err as Error)
        throw err
      })
    } catch (err) {
      throw new Error(this.sanitize(beginError(formatPgError(err))), { cause: err })
    }
    try {
      await work(client)
      await client.query('COMMIT')
      client.release()
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined)
      client.release()
      throw new Error(this.sanitize(formatPgError(err)), { cause: err })
    }
  }

  private async run(work: () => Promise<void>): Promise<void> {
    try {
      await work()
    } catch (err) {
      throw new Error(this.sanitize(formatPgError(err)), { cause: err })
    }
  }

  /** The error sanitizer middleware: the root password never appears in an error. */
  private sanitize(message: string): string {
    return this.rootPassword === '' ? message : message.replaceAll(this.rootPassword, '[password]')
  }
}
