/**
 * The database secrets engine (builtin/logical/database) with its PostgreSQL plugin: connection
 * configs, dynamic roles whose creds are leased database users, and static roles whose password
 * the engine rotates on a 5-second queue tick. All SQL runs against the real PostgreSQL named by
 * the config's connection_url.
 */
import type { Backend, BackendRequest, BackendResult, Mount } from '../backend.js'
import type { VaultCore } from '../core.js'
import { goError, respondError } from '../envelope.js'
import { generatePassword } from '../ids.js'
import type { Lease } from './leases.js'
import { hasLiteralPassword, redactConnectionUrl } from '../postgres/connection-url.js'
import { PostgresPlugin } from '../postgres/postgres-plugin.js'
import { addCollection } from '../collection-routes.js'
import { Router } from '../router.js'
import { rfc3339Nano } from '../time-format.js'
import { calculateTtl } from '../ttl.js'
import { matchesGlobList } from '../glob.js'

const PLUGIN_NAME = 'postgresql-database-plugin'
/** rotation.go defaultQueueTickSeconds: also the shortest rotation_period. */
const QUEUE_TICK_SECONDS = 5
/** A failed background rotation is retried this much later. */
const ROTATION_RETRY_MS = 10_000
/** The creds' VALID UNTIL outlives the lease by this much, so the lease always ends first. */
const EXPIRATION_BUFFER_MS = 5_000
const CREDENTIAL_TYPES = ['password', 'rsa_private_key', 'client_certificate']
/** Config fields that are not connection details; everything else in the body is. */
const NON_DETAIL_FIELDS = [
  'name',
  'plugin_name',
  'plugin_version',
  'allowed_roles',
  'verify_connection',
  'root_rotation_statements',
  'password_policy',
]

interface ConnectionConfig {
  pluginName: string
  connectionDetails: Record<string, unknown>
  allowedRoles: string[]
  rootRotationStatements: string[]
  passwordPolicy: string
}

interface DynamicRole {
  dbName: string
  creationStatements: string[]
  revocationStatements: string[]
  rollbackStatements: string[]
  renewStatements: string[]
  defaultTtlSeconds: number
  maxTtlSeconds: number
  credentialType: string
  credentialConfig: Record<string, string>
}

interface StaticRole {
  dbName: string
  username: string
  rotationPeriodSeconds: number
  rotationStatements: string[]
  credentialType: string
  credentialConfig: Record<string, string>
  password: string
  lastVaultRotationMs: number
  /** When the queue should try next: the rotation time, or a retry after a failure. */
  nextAttemptMs: number
}

export interface DatabaseBackendOptions {
  /** How often the static-role rotation queue is checked (Vault: 5 s). */
  rotationTickMs: number
}

export function databaseBackend(core: VaultCore, mount: Mount, options: DatabaseBackendOptions): Backend {
  return new DatabaseEngine(core, mount, options).backend()
}

class DatabaseEngine {
  private readonly configs = new Map<string, ConnectionConfig>()
  /** Open connection pools by config name; created on config write, or lazily after reset. */
  private readonly plugins = new Map<string, PostgresPlugin>()
  private readonly roles = new Map<string, DynamicRole>()
  private readonly staticRoles = new Map<string, StaticRole>()
  private readonly queueTimer: NodeJS.Timeout
  private rotating: Promise<void> | undefined

  constructor(
    private readonly core: VaultCore,
    private readonly mount: Mount,
    options: DatabaseBackendOptions,
  ) {
    this.queueTimer = setInterval(() => void this.rotateDue(), options.rotationTickMs)
    this.queueTimer.unref()
  }

  backend(): Backend {
    const router = new Router<BackendRequest, BackendResult>()
      .add('reset/:name', { write: (req) => this.reset(req) })
      .add('rotate-root/:name', { write: (req) => this.rotateRoot(req) })
      .add('creds/:name', { read: (req) => this.creds(req) })
      .add('static-creds/:name', { read: (req) => this.staticCreds(req) })
      .add('rotate-role/:name', { write: (req) => this.rotateRole(req) })
    addCollection(router, 'config', this.configs, {
      read: (req) => this.readConfig(req),
      write: (req) => this.writeConfig(req),
      delete: (req) => this.deleteConfig(req),
    })
    // Deleting a role leaves its leases: their revocation falls back to what each lease remembers.
    addCollection(router, 'roles', this.roles, {
      read: (req) => this.readRole(req),
      write: (req) => this.writeRole(req),
    })
    addCollection(router, 'static-roles', this.staticRoles, {
      read: (req) => this.readStaticRole(req),
      write: (req) => this.writeStaticRole(req),
    })

    return {
      router,
      renewSecret: (lease, increment) => this.renewCreds(lease, increment),
      revokeSecret: (lease) => this.revokeCreds(lease),
      close: () => this.close(),
    }
  }

  private async close(): Promise<void> {
    clearInterval(this.queueTimer)
    await this.rotating
    const plugins = [...this.plugins.values()]
    this.plugins.clear()
    await Promise.all(plugins.map((p) => p.close()))
  }

  // -------------------------------------------------------------------------
  // Connection configs

  /** DatabaseConfig: the named config, or the Go error creds and renewals report. */
  private configOf(name: string): ConnectionConfig {
    const config = this.configs.get(name)
    if (config === undefined) throw new Error(`failed to find entry for connection with name: ${JSON.stringify(name)}`)
    return config
  }

  /** GetConnection: the config's plugin, reopened after a reset. */
  private async pluginOf(name: string): Promise<PostgresPlugin> {
    const config = this.configOf(name)
    let plugin = this.plugins.get(name)
    if (plugin === undefined) {
      plugin = await PostgresPlugin.initialize(config.connectionDetails, false)
      this.plugins.set(name, plugin)
    }
    return plugin
  }

  private isAllowed(config: ConnectionConfig, roleName: string): boolean {
    return config.allowedRoles.includes('*') || matchesGlobList(config.allowedRoles, roleName)
  }

  private async writeConfig(req: BackendRequest): Promise<BackendResult> {
    const name = req.params.name ?? ''
    const f = req.fields
    const existing = this.configs.get(name)
    const isCreate = existing === undefined
    const config: ConnectionConfig = existing
      ? { ...existing, connectionDetails: { ...existing.connectionDetails } }
      : { pluginName: '', connectionDetails: {}, allowedRoles: [], rootRotationStatements: [], passwordPolicy: '' }
    if (f.has('plugin_name')) config.pluginName = f.string('plugin_name')
    if (config.pluginName === '') throw respondError('empty plugin name')
    if (f.has('allowed_roles')) config.allowedRoles = f.commaList('allowed_roles')
    if (f.has('root_rotation_statements')) config.rootRotationStatements = f.stringList('root_rotation_statements')
    if (f.has('password_policy')) config.passwordPolicy = f.string('password_policy')
    const details = Object.fromEntries(Object.entries(f.raw).filter(([key]) => !NON_DETAIL_FIELDS.includes(key)))
    config.connectionDetails = isCreate ? details : { ...config.connectionDetails, ...details }

    if (config.pluginName !== PLUGIN_NAME) {
      throw respondError(
        `error creating database object: the dev Vault has only the ${PLUGIN_NAME}, not ${JSON.stringify(config.pluginName)}`,
      )
    }
    let plugin: PostgresPlugin
    try {
      plugin = await PostgresPlugin.initialize(config.connectionDetails, f.bool('verify_connection', true))
    } catch (err) {
      throw respondError(`error creating database object: ${(err as Error).message}`)
    }
    const previous = this.plugins.get(name)
    this.plugins.set(name, plugin)
    this.configs.set(name, config)
    await previous?.close()

    const url = config.connectionDetails.connection_url
    if (typeof url === 'string' && hasLiteralPassword(url)) {
      return {
        warnings: [
          'Password found in connection_url, use a templated url to enable root rotation and prevent read access to password information.',
        ],
      }
    }
    return undefined
  }

  private readConfig(req: BackendRequest): BackendResult {
    const config = this.configs.get(req.params.name ?? '')
    if (config === undefined) return undefined
    const details = { ...config.connectionDetails }
    delete details.password
    delete details.private_key
    if (typeof details.connection_url === 'string') details.connection_url = redactConnectionUrl(details.connection_url)
    return {
      data: {
        allowed_roles: config.allowedRoles,
        connection_details: details,
        password_policy: config.passwordPolicy,
        plugin_name: config.pluginName,
        plugin_version: '',
        root_credentials_rotate_statements: config.rootRotationStatements,
      },
    }
  }

  private async deleteConfig(req: BackendRequest): Promise<BackendResult> {
    const name = req.params.name ?? ''
    this.configs.delete(name)
    const plugin = this.plugins.get(name)
    this.plugins.delete(name)
    await plugin?.close()
    return undefined
  }

  /** reset/<name>: closes the connections; the next use reopens them. */
  private async reset(req: BackendRequest): Promise<BackendResult> {
    const name = req.params.name ?? ''
    if (name === '') throw respondError('empty name attribute given')
    const plugin = this.plugins.get(name)
    this.plugins.delete(name)
    await plugin?.close()
    return undefined
  }

  private async rotateRoot(req: BackendRequest): Promise<BackendResult> {
    const name = req.params.name ?? ''
    const config = this.configs.get(name)
    if (config === undefined) throw goError(`failed to find entry for connection with name: ${JSON.stringify(name)}`)
    const username = typeof config.connectionDetails.username === 'string' ? config.connectionDetails.username : ''
    const oldPassword = typeof config.connectionDetails.password === 'string' ? config.connectionDetails.password : ''
    if (username === '') throw goError('unable to rotate root credentials: no username in configuration')
    if (oldPassword === '') throw goError('unable to rotate root credentials: no password in configuration')
    const password = generatePassword()
    try {
      const plugin = await this.pluginOf(name)
      await plugin.updateUser(username, { password: { value: password, statements: config.rootRotationStatements } })
    } catch (err) {
      throw goError(`failed to update user: ${(err as Error).message}`)
    }
    config.connectionDetails = { ...config.connectionDetails, password }
    const plugin = this.plugins.get(name)
    this.plugins.delete(name)
    await plugin?.close()
    return undefined
  }

  // -------------------------------------------------------------------------
  // Dynamic roles and creds

  private readRole(req: BackendRequest): BackendResult {
    const role = this.roles.get(req.params.name ?? '')
    if (role === undefined) return undefined
    return {
      data: {
        creation_statements: role.creationStatements,
        credential_type: role.credentialType,
        db_name: role.dbName,
        default_ttl: role.defaultTtlSeconds,
        max_ttl: role.maxTtlSeconds,
        renew_statements: role.renewStatements,
        revocation_statements: role.revocationStatements,
        rollback_statements: role.rollbackStatements,
        ...(Object.keys(role.credentialConfig).length > 0 ? { credential_config: role.credentialConfig } : {}),
      },
    }
  }

  private writeRole(req: BackendRequest): BackendResult {
    const name = req.params.name ?? ''
    const f = req.fields
    if (this.staticRoles.has(name)) throw respondError('Role and Static Role names must be unique')
    const role: DynamicRole = { ...(this.roles.get(name) ?? newDynamicRole()) }
    if (f.has('db_name')) role.dbName = f.string('db_name')
    if (role.dbName === '') throw respondError('database name is required')
    if (f.has('credential_type')) role.credentialType = checkedCredentialType(f.string('credential_type'))
    if (f.has('credential_config')) role.credentialConfig = f.stringMap('credential_config')
    if (f.has('creation_statements')) role.creationStatements = f.stringList('creation_statements')
    if (f.has('revocation_statements')) role.revocationStatements = f.stringList('revocation_statements')
    if (f.has('rollback_statements')) role.rollbackStatements = f.stringList('rollback_statements')
    if (f.has('renew_statements')) role.renewStatements = f.stringList('renew_statements')
    role.revocationStatements = role.revocationStatements.filter((s) => s !== '')
    role.defaultTtlSeconds = f.durationSeconds('default_ttl', role.defaultTtlSeconds)
    role.maxTtlSeconds = f.durationSeconds('max_ttl', role.maxTtlSeconds)
    this.roles.set(name, role)
    return undefined
  }

  /** creds/<role>: the checks in Vault's order, then a new database user and its lease. */
  private async creds(req: BackendRequest): Promise<BackendResult> {
    const name = req.params.name ?? ''
    const role = this.roles.get(name)
    if (role === undefined) throw respondError(`unknown role: ${name}`)
    try {
      const config = this.configOf(role.dbName)
      if (!this.isAllowed(config, name)) throw new Error(`${JSON.stringify(name)} is not an allowed role`)
      const plugin = await this.pluginOf(role.dbName)
      if (role.credentialType !== 'password') {
        throw new Error(`unsupported credential_type: ${JSON.stringify(role.credentialType)}`)
      }
      const { ttlSeconds } = calculateTtl({
        incrementSeconds: 0,
        backendTtlSeconds: role.defaultTtlSeconds,
        backendMaxTtlSeconds: role.maxTtlSeconds,
        mountDefaultTtlSeconds: this.mount.config.defaultLeaseTtlSeconds,
        mountMaxTtlSeconds: this.mount.config.maxLeaseTtlSeconds,
        nowMs: this.core.now(),
      })
      const expirationMs = this.core.now() + ttlSeconds * 1000 + EXPIRATION_BUFFER_MS
      const password = this.newPassword(role.credentialConfig.password_policy || config.passwordPolicy)
      const username = plugin.generateUsername({ DisplayName: req.caller?.displayName ?? '', RoleName: name })
      await plugin.newUser(username, password, expirationMs, role.creationStatements)
      return {
        data: { password, username },
        secret: {
          ttlSeconds: role.defaultTtlSeconds,
          maxTtlSeconds: role.maxTtlSeconds,
          renewable: true,
          internal: { username, role: name, db_name: role.dbName, revocation_statements: role.revocationStatements },
        },
      }
    } catch (err) {
      throw goError((err as Error).message)
    }
  }

  /** Password policies (sys/policies/password) are not implemented; asking for one fails as a missing one would. */
  private newPassword(policy: string): string {
    if (policy !== '') throw new Error('failed to generate password: password policy not found')
    return generatePassword()
  }

  private async renewCreds(
    lease: Lease,
    incrementSeconds: number,
  ): Promise<{ ttlSeconds: number; maxTtlSeconds: number }> {
    const username = String(lease.secret.internal.username)
    const roleName = String(lease.secret.internal.role)
    const role = this.roles.get(roleName)
    if (role === undefined)
      throw new Error(`error during renew: could not find role with name ${JSON.stringify(roleName)}`)
    const plugin = await this.pluginOf(role.dbName)
    const { ttlSeconds } = calculateTtl({
      incrementSeconds,
      backendTtlSeconds: role.defaultTtlSeconds,
      backendMaxTtlSeconds: role.maxTtlSeconds,
      mountDefaultTtlSeconds: this.mount.config.defaultLeaseTtlSeconds,
      mountMaxTtlSeconds: this.mount.config.maxLeaseTtlSeconds,
      issueTimeMs: lease.issueTimeMs,
      nowMs: this.core.now(),
    })
    if (ttlSeconds > 0) {
      const atMs = this.core.now() + ttlSeconds * 1000 + EXPIRATION_BUFFER_MS
      await plugin.updateUser(username, { expiration: { atMs, statements: role.renewStatements } })
    }
    return { ttlSeconds: role.defaultTtlSeconds, maxTtlSeconds: role.maxTtlSeconds }
  }

  /** secretCredsRevoke: the role's statements, or, if the role is gone, those the lease remembers. */
  private async revokeCreds(lease: Lease): Promise<void> {
    const internal = lease.secret.internal
    const role = this.roles.get(String(internal.role))
    const dbName = role?.dbName ?? String(internal.db_name)
    const statements = role?.revocationStatements ?? (internal.revocation_statements as string[] | undefined) ?? []
    const plugin = await this.pluginOf(dbName)
    await plugin.deleteUser(String(internal.username), statements)
  }

  // -------------------------------------------------------------------------
  // Static roles

  private readStaticRole(req: BackendRequest): BackendResult {
    const role = this.staticRoles.get(req.params.name ?? '')
    if (role === undefined) return undefined
    return {
      data: {
        credential_type: role.credentialType,
        db_name: role.dbName,
        last_vault_rotation: rfc3339Nano(role.lastVaultRotationMs),
        rotation_period: role.rotationPeriodSeconds,
        rotation_statements: role.rotationStatements,
        username: role.username,
        ...(Object.keys(role.credentialConfig).length > 0 ? { credential_config: role.credentialConfig } : {}),
      },
    }
  }

  private async writeStaticRole(req: BackendRequest): Promise<BackendResult> {
    const name = req.params.name ?? ''
    const f = req.fields
    if (this.roles.has(name)) throw respondError('Role and Static Role names must be unique')
    const existing = this.staticRoles.get(name)
    const role: StaticRole = existing
      ? { ...existing }
      : {
          dbName: '',
          username: '',
          rotationPeriodSeconds: 0,
          rotationStatements: [],
          credentialType: 'password',
          credentialConfig: {},
          password: '',
          lastVaultRotationMs: 0,
          nextAttemptMs: 0,
        }
    if (f.has('db_name')) role.dbName = f.string('db_name')
    if (role.dbName === '') throw respondError('database name is a required field')
    const username = f.string('username')
    if (username === '' && existing === undefined) {
      throw respondError('username is a required field to create a static account')
    }
    if (existing !== undefined && username !== existing.username)
      throw respondError('cannot update static account username')
    role.username = username
    if (!f.has('rotation_period') && existing === undefined) {
      throw respondError('rotation_period is required to create static accounts')
    }
    if (f.has('rotation_period')) {
      const period = f.durationSeconds('rotation_period')
      if (period < QUEUE_TICK_SECONDS)
        throw respondError(`rotation_period must be ${QUEUE_TICK_SECONDS} seconds or more`)
      role.rotationPeriodSeconds = period
    }
    if (f.has('rotation_statements')) role.rotationStatements = f.stringList('rotation_statements')
    if (f.has('credential_type')) role.credentialType = checkedCredentialType(f.string('credential_type'))
    if (f.has('credential_config')) role.credentialConfig = f.stringMap('credential_config')

    if (existing === undefined) {
      // Vault must know the password, so it sets one right away; a missing user fails the create.
      await this.setStaticPassword(name, role).catch((err: Error) => {
        throw goError(err.message)
      })
    } else {
      role.nextAttemptMs = role.lastVaultRotationMs + role.rotationPeriodSeconds * 1000
    }
    this.staticRoles.set(name, role)
    return undefined
  }

  /** setStaticAccount: a new password in the database, then in the role. */
  private async setStaticPassword(name: string, role: StaticRole): Promise<void> {
    const config = this.configs.get(role.dbName)
    if (config === undefined)
      throw new Error(`failed to find entry for connection with name: ${JSON.stringify(role.dbName)}`)
    if (!this.isAllowed(config, name)) throw new Error(`${JSON.stringify(name)} is not an allowed role`)
    if (role.credentialType !== 'password')
      throw new Error(`unsupported credential_type: ${JSON.stringify(role.credentialType)}`)
    const password = this.newPassword(role.credentialConfig.password_policy || config.passwordPolicy)
    const plugin = await this.pluginOf(role.dbName)
    try {
      await plugin.updateUser(role.username, { password: { value: password, statements: role.rotationStatements } })
    } catch (err) {
      throw new Error(`error setting credentials: ${(err as Error).message}`, { cause: err })
    }
    const now = this.core.now()
    role.password = password
    role.lastVaultRotationMs = now
    role.nextAttemptMs = now + role.rotationPeriodSeconds * 1000
  }

  private staticCreds(req: BackendRequest): BackendResult {
    const name = req.params.name ?? ''
    const role = this.staticRoles.get(name)
    if (role === undefined) throw respondError(`unknown role: ${name}`)
    const config = this.configs.get(role.dbName)
    if (config === undefined)
      throw goError(`failed to find entry for connection with name: ${JSON.stringify(role.dbName)}`)
    if (!this.isAllowed(config, name)) throw goError(`${JSON.stringify(name)} is not an allowed role`)
    const nextRotationMs = role.lastVaultRotationMs + role.rotationPeriodSeconds * 1000
    return {
      data: {
        last_vault_rotation: rfc3339Nano(role.lastVaultRotationMs),
        password: role.password,
        rotation_period: role.rotationPeriodSeconds,
        // Seconds until the next rotation; 0 while one is due or running.
        ttl: Math.max(0, Math.round((nextRotationMs - this.core.now()) / 1000)),
        username: role.username,
      },
    }
  }

  private async rotateRole(req: BackendRequest): Promise<BackendResult> {
    const name = req.params.name ?? ''
    const role = this.staticRoles.get(name)
    if (role === undefined) throw respondError('no static role found for role name')
    try {
      await this.setStaticPassword(name, role)
    } catch (err) {
      role.nextAttemptMs = this.core.now() + ROTATION_RETRY_MS
      throw goError(
        `unable to finish rotating credentials; retries will continue in the background but it is also safe to retry manually: ${(err as Error).message}`,
      )
    }
    return undefined
  }

  /** The rotation queue tick: rotates every static role whose rotation_period has passed. */
  private async rotateDue(): Promise<void> {
    if (this.rotating !== undefined || this.core.sealed) return
    const now = this.core.now()
    const due = [...this.staticRoles].filter(([, role]) => role.nextAttemptMs <= now)
    this.rotating = Promise.all(
      due.map(([name, role]) =>
        this.setStaticPassword(name, role).catch((err: Error) => {
          role.nextAttemptMs = this.core.now() + ROTATION_RETRY_MS
          this.core.log(`rotating static role ${name} failed: ${err.message}`)
        }),
      ),
    ).then(() => undefined)
    try {
      await this.rotating
    } finally {
      this.rotating = undefined
    }
  }
}

function newDynamicRole(): DynamicRole {
  return {
    dbName: '',
    creationStatements: [],
    revocationStatements: [],
    rollbackStatements: [],
    renewStatements: [],
    defaultTtlSeconds: 0,
    maxTtlSeconds: 0,
    credentialType: 'password',
    credentialConfig: {},
  }
}

function checkedCredentialType(value: string): string {
  if (!CREDENTIAL_TYPES.includes(value)) throw respondError(`invalid credential_type ${JSON.stringify(value)}`)
  return value
}
