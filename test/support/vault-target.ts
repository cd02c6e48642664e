/**
 * The Vault a test talks to: a fresh in-process dev Vault (dev-vault/), or, when
 * PGVP_TEST_VAULT_ADDR and PGVP_TEST_VAULT_TOKEN are set, that real Vault (or OpenBao) instead.
 * Setup goes through dev-vault/setup-database.ts, i.e. through the HTTP API only, so it is the
 * same for both. On a shared real Vault, mounts and policies get names unique to this run and
 * are removed in teardown.
 *
 * A real Vault must reach the test cluster: it listens on 127.0.0.1 only, so run Vault on the
 * same host (or a container with host networking); PGVP_TEST_VAULT_PG_HOST overrides the host
 * Vault should connect to. See docs/dev-vault.md.
 */
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import type { Test } from 'tap'
import { DevVault } from '../../dev-vault/dev-vault-server.js'
import type { Faults } from '../../dev-vault/faults.js'
import type { FlavorName } from '../../dev-vault/flavor.js'
import {
  createAppRole,
  createDynamicRole,
  createStaticRole,
  enableDatabaseEngine,
  vaultCall,
  vaultRequest,
  writeConnection,
} from '../../dev-vault/setup-database.js'
import type { AppRoleCredentials, DynamicRoleOptions, VaultAccess, VaultReply } from '../../dev-vault/setup-database.js'
import type { Login, PgCluster } from './pg-cluster.js'

const REAL_VAULT: VaultAccess | undefined =
  process.env.PGVP_TEST_VAULT_ADDR && process.env.PGVP_TEST_VAULT_TOKEN
    ? { address: process.env.PGVP_TEST_VAULT_ADDR, token: process.env.PGVP_TEST_VAULT_TOKEN }
    : undefined
const REAL_PG_HOST = process.env.PGVP_TEST_VAULT_PG_HOST ?? '127.0.0.1'

/** Whether tests run against a real Vault (PGVP_TEST_VAULT_ADDR and PGVP_TEST_VAULT_TOKEN set). */
export const isRealVault = REAL_VAULT !== undefined

/**
 * For `t.test(name, { skip: devOnly('…') }, …)`: skips, with the reason shown in the report, a
 * test that needs a switch only the dev Vault has. Against the dev Vault it skips nothing.
 */
export function devOnly(what: string): string | false {
  return isRealVault ? `needs the dev Vault (${what}); PGVP_TEST_VAULT_ADDR points at a real Vault` : false
}

export interface DatabaseEngine {
  /** The engine's mount path, e.g. "database" (unique per run on a real Vault). */
  mount: string
  /** The connection config name roles use as db_name. */
  dbName: string
  /** The management login Vault connects as. */
  admin: Login
  /** The templated TCP connection_url written to the config. */
  connectionUrl: string
  /** A dynamic role with the docs/vault.md statements (owner role grant, terminate-and-drop revocation). */
  createDynamicRole(options: Omit<DynamicRoleOptions, 'mount' | 'dbName' | 'ownerRole'>): Promise<void>
  createStaticRole(name: string, username: string, rotationPeriod: number | string): Promise<void>
}

export interface VaultTarget extends VaultAccess {
  /** The in-process dev Vault; undefined against a real Vault. */
  dev: DevVault | undefined
  /** `base` on the dev Vault; `base-<run id>` on a real Vault, which other runs may share. */
  name(base: string): string
  /** Any API call; `token: null` sends none. */
  request(
    method: string,
    path: string,
    options?: { body?: unknown; token?: string | null; headers?: Record<string, string> },
  ): Promise<VaultReply>
  /** An API call that must succeed (2xx). */
  call(method: string, path: string, body?: unknown): Promise<VaultReply>
  /** Dev Vault only (guard the test with devOnly): flips fault switches. */
  setFaults(changes: Partial<Faults>): Promise<void>
  /** Enables a database engine whose config `appdb` reaches the cluster as a CREATEROLE login. */
  database(options?: { allowedRoles?: string[] }): Promise<DatabaseEngine>
  /** Enables a secrets engine at name(base) (removed in teardown on a real Vault); returns the path. */
  enableSecrets(base: string, body: Record<string, unknown>): Promise<string>
  /** Enables an auth method at name(base) (removed in teardown on a real Vault); returns the path. */
  enableAuth(base: string, type: string): Promise<string>
  /** Writes a policy (unique name on a real Vault) and returns its name. */
  policy(base: string, text: string): Promise<string>
  /** Enables AppRole and creates a role with a policy; returns a role_id and secret_id. */
  approle(
    base: string,
    policyText: string,
    ttls: { tokenTtl: number | string; tokenMaxTtl: number | string },
  ): Promise<AppRoleCredentials & { mount: string }>
}

/** The response envelope's fields, in the order Vault serialises them (sdk/logical/translate_response.go HTTPResponse). */
export const ENVELOPE_KEYS = [
  'request_id',
  'lease_id',
  'renewable',
  'lease_duration',
  'data',
  'wrap_info',
  'warnings',
  'auth',
  'mount_type',
]

const runId = randomBytes(3).toString('hex')

export interface VaultForOptions {
  /** The dev Vault's flavor (default vault-1.17); against a real Vault, whatever that Vault is. */
  flavor?: FlavorName
  /** Dev Vault only: the server's default_lease_ttl and max_lease_ttl in seconds (default 768h each). */
  defaultLeaseTtlSeconds?: number
  maxLeaseTtlSeconds?: number
  /** Dev Vault only: answer 412 without X-Vault-Request, as a Vault Agent listener can (the helpers send it). */
  requireRequestHeader?: boolean
  /**
   * Dev Vault only: serve over TLS with this server certificate and key (test-ca.ts makes them);
   * `ca` is what the helpers trust, and `client` a certificate they present (for cert logins).
   */
  tls?: { cert: string; key: string; ca: string; client?: { cert: string; key: string } }
}

/** A Vault for one test: started now, stopped (or cleaned up) in t's teardown. The cluster is needed for database(). */
export async function vaultFor(t: Test, cluster?: PgCluster, options: VaultForOptions = {}): Promise<VaultTarget> {
  let dev: DevVault | undefined
  let access: VaultAccess
  if (REAL_VAULT) {
    access = REAL_VAULT
  } else {
    dev = new DevVault({
      flavor: options.flavor,
      defaultLeaseTtlSeconds: options.defaultLeaseTtlSeconds,
      maxLeaseTtlSeconds: options.maxLeaseTtlSeconds,
      requireRequestHeader: options.requireRequestHeader,
      tls: options.tls ? { cert: options.tls.cert, key: options.tls.key } : undefined,
      reaperIntervalMs: 100,
      // Vault retries a failed revocation after 10 s and more; tests need not wait that long.
      revokeRetryBaseMs: 2000,
      log: process.env.PGVP_DEV_VAULT_LOG ? (line) => process.stderr.write(`dev-vault: ${line}\n`) : undefined,
    })
    // Port 0: the kernel picks a free port at bind time, so there is no window for a collision.
    await dev.start(0)
    access = { address: dev.address, token: dev.rootToken }
    if (options.tls) access.tls = { ca: options.tls.ca, ...options.tls.client }
  }
  const cleanups: (() => Promise<unknown>)[] = []
  t.teardown(async () => {
    if (dev) return dev.stop()
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined)
  })
  const name = (base: string) => (isRealVault ? `${base}-${runId}` : base)

  const target: VaultTarget = {
    ...access,
    dev,
    name,
    request: (method, path, options) => vaultRequest(access, method, path, options),
    call: (method, path, body) => vaultCall(access, method, path, body),
    setFaults: async (changes) => {
      if (!dev) throw new Error('fault switches exist on the dev Vault only; guard the test with devOnly()')
      await dev.setFaults(changes)
    },
    database: async (options = {}) => {
      if (cluster === undefined) throw new Error('vaultFor(t) was called without a cluster; pass one to use database()')
      const mount = name('database')
      const admin = await vaultAdminFor(cluster)
      await enableDatabaseEngine(access, mount)
      if (isRealVault) cleanups.push(() => vaultRequest(access, 'DELETE', `sys/mounts/${mount}`))
      const connectionUrl = `postgresql://{{username}}:{{password}}@${REAL_PG_HOST}:${cluster.port}/${cluster.database}`
      await writeConnection(access, {
        mount,
        name: 'appdb',
        connectionUrl,
        username: admin.user,
        password: admin.password,
        allowedRoles: options.allowedRoles ?? ['*'],
      })
      return {
        mount,
        dbName: 'appdb',
        admin,
        connectionUrl,
        createDynamicRole: (role) =>
          createDynamicRole(access, { ...role, mount, dbName: 'appdb', ownerRole: cluster.ownerRole }),
        createStaticRole: (roleName, username, rotationPeriod) =>
          createStaticRole(access, { mount, name: roleName, dbName: 'appdb', username, rotationPeriod }),
      }
    },
    enableSecrets: async (base, body) => {
      const path = name(base)
      await vaultCall(access, 'POST', `sys/mounts/${path}`, body)
      if (isRealVault) cleanups.push(() => vaultRequest(access, 'DELETE', `sys/mounts/${path}`))
      return path
    },
    enableAuth: async (base, type) => {
      const path = name(base)
      await vaultCall(access, 'POST', `sys/auth/${path}`, { type })
      if (isRealVault) cleanups.push(() => vaultRequest(access, 'DELETE', `sys/auth/${path}`))
      return path
    },
    policy: async (base, text) => {
      const policyName = name(base)
      await vaultCall(access, 'PUT', `sys/policies/acl/${policyName}`, { policy: text })
      if (isRealVault) cleanups.push(() => vaultRequest(access, 'DELETE', `sys/policies/acl/${policyName}`))
      return policyName
    },
    approle: async (base, policyText, ttls) => {
      const mount = name('approle')
      const credentials = await createAppRole(access, {
        mount,
        roleName: base,
        policyName: name(`${base}-policy`),
        policy: policyText,
        ...ttls,
      })
      if (isRealVault) {
        cleanups.push(() => vaultRequest(access, 'DELETE', `sys/auth/${mount}`))
        cleanups.push(() => vaultRequest(access, 'DELETE', `sys/policies/acl/${name(`${base}-policy`)}`))
      }
      return { ...credentials, mount }
    },
  }
  return target
}

const vaultAdmins = new WeakMap<PgCluster, Promise<Login>>()

/**
 * The management login Vault uses (docs/vault.md §1): CREATEROLE, admin of the owner role, and
 * allowed to end other sessions. Created once per cluster.
 */
export function vaultAdminFor(cluster: PgCluster): Promise<Login> {
  let admin = vaultAdmins.get(cluster)
  if (admin === undefined) {
    const login = { user: 'vault_admin', password: randomBytes(16).toString('hex') }
    const owner = pg.escapeIdentifier(cluster.ownerRole)
    admin = (async () => {
      await cluster.query(`CREATE ROLE vault_admin LOGIN CREATEROLE PASSWORD ${pg.escapeLiteral(login.password)}`)
      await cluster.query(`GRANT ${owner} TO vault_admin WITH ADMIN OPTION`)
      await cluster.query('GRANT pg_signal_backend TO vault_admin')
      return login
    })()
    vaultAdmins.set(cluster, admin)
  }
  return admin
}

/** Polls `check` until it returns true, for at most `seconds`; false if it never did. */
export async function eventually(seconds: number, check: () => Promise<boolean>): Promise<boolean> {
  const deadline = Date.now() + seconds * 1000
  for (;;) {
    if (await check()) return true
    if (Date.now() > deadline) return false
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
}
