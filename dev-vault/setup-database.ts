/**
 * Sets up Vault for pg-vault-proxy over Vault's HTTP API, so the same steps work on the dev Vault
 * and on a real Vault or OpenBao: the database secrets engine, a connection to PostgreSQL, a
 * dynamic role (users created with VALID UNTIL and granted the owner role), a static role, and an
 * AppRole with a policy limited to what the proxy needs (docs/vault.md).
 *
 * PostgreSQL must be prepared first (as a superuser): the owner role, a management login for
 * Vault with CREATEROLE (granted the owner role WITH ADMIN OPTION and pg_signal_backend), and the
 * static role's login user. See docs/dev-vault.md.
 *
 * As a script:
 *   VAULT_ADDR=http://127.0.0.1:8200 VAULT_TOKEN=root \
 *   npx tsx dev-vault/setup-database.ts \
 *     --connection-url 'postgresql://{{username}}:{{password}}@127.0.0.1:5432/appdb' \
 *     --username vault_admin --password vault_admin_pw --owner-role app_owner --static-username app_static
 * prints {"role_id":…,"secret_id":…} for the proxy's AppRole login.
 */
import { realpathSync } from 'node:fs'
import https from 'node:https'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

export interface VaultAccess {
  address: string
  token: string
  /**
   * For an https:// address: the CA to trust (PEM) and, optionally, a client certificate and key
   * to present (for the cert auth method). Without it, https uses the system's trust store.
   */
  tls?: { ca: string; cert?: string; key?: string }
}

export interface VaultReply {
  status: number
  headers: Headers
  text: string
  /** The parsed body; undefined when empty (204). */
  json: unknown
}

/** An answer Vault gave that the setup did not expect. */
export class VaultRequestError extends Error {
  override name = 'VaultRequestError'
  constructor(
    readonly method: string,
    readonly path: string,
    readonly reply: VaultReply,
  ) {
    super(`${method} /v1/${path} answered ${reply.status}: ${reply.text.trim()}`)
  }
}

/** One Vault API call. `token: null` sends none; LIST is sent as the LIST method. */
export async function vaultRequest(
  vault: VaultAccess,
  method: string,
  path: string,
  options: { body?: unknown; token?: string | null; headers?: Record<string, string> } = {},
): Promise<VaultReply> {
  // As Vault's own Go client does on every request (api/client.go), so that a listener with
  // require_request_header answers too; a caller's headers win.
  const headers: Record<string, string> = { 'X-Vault-Request': 'true', ...options.headers }
  const token = options.token === undefined ? vault.token : options.token
  if (token !== null) headers['X-Vault-Token'] = token
  if (options.body !== undefined) headers['Content-Type'] = 'application/json'
  const url = `${vault.address.replace(/\/$/, '')}/v1/${path}`
  const body = options.body === undefined ? undefined : JSON.stringify(options.body)
  if (vault.tls !== undefined) return httpsRequest(url, method, headers, body, vault.tls)
  const response = await fetch(url, { method, headers, body })
  const text = await response.text()
  return {
    status: response.status,
    headers: response.headers,
    text,
    json: text === '' ? undefined : (JSON.parse(text) as unknown),
  }
}

/** fetch cannot be given a CA or a client certificate without undici's Agent; node:https can. */
function httpsRequest(
  url: string,
  method: string,
  headers: Record<string, string>,
  body: string | undefined,
  tls: NonNullable<VaultAccess['tls']>,
): Promise<VaultReply> {
  return new Promise((resolve, reject) => {
    const request = https.request(url, { method, headers, ca: tls.ca, cert: tls.cert, key: tls.key }, (response) => {
      const chunks: Buffer[] = []
      response.on('data', (chunk: Buffer) => chunks.push(chunk))
      response.on('error', reject)
      response.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8')
        const replyHeaders = new Headers()
        for (const [name, value] of Object.entries(response.headers)) {
          for (const v of Array.isArray(value) ? value : [value ?? '']) replyHeaders.append(name, v)
        }
        resolve({
          status: response.statusCode ?? 0,
          headers: replyHeaders,
          text,
          json: text === '' ? undefined : (JSON.parse(text) as unknown),
        })
      })
    })
    request.on('error', reject)
    request.end(body)
  })
}

/** vaultRequest that insists on a 2xx answer. */
export async function vaultCall(vault: VaultAccess, method: string, path: string, body?: unknown): Promise<VaultReply> {
  const reply = await vaultRequest(vault, method, path, { body })
  if (reply.status < 200 || reply.status > 299) throw new VaultRequestError(method, path, reply)
  return reply
}

/** Enables a secrets engine or auth method; a mount of the same type already there is fine. */
async function enable(vault: VaultAccess, kind: 'mounts' | 'auth', path: string, type: string): Promise<void> {
  const reply = await vaultRequest(vault, 'POST', `sys/${kind}/${path}`, { body: { type } })
  if (reply.status === 204 || reply.status === 200) return
  const existing = await vaultRequest(vault, 'GET', `sys/${kind}`)
  const mounts = (existing.json as { data?: Record<string, { type?: string }> } | undefined)?.data ?? {}
  if (mounts[`${path}/`]?.type === type) return
  throw new VaultRequestError('POST', `sys/${kind}/${path}`, reply)
}

export async function enableDatabaseEngine(vault: VaultAccess, mount = 'database'): Promise<void> {
  await enable(vault, 'mounts', mount, 'database')
}

export interface ConnectionOptions {
  mount?: string
  /** The config name, which roles name as db_name. */
  name: string
  /** postgresql://{{username}}:{{password}}@host:port/db, or postgresql://user@/db?host=/socket/dir&port=N. */
  connectionUrl: string
  username?: string
  password?: string
  allowedRoles: string[]
  verifyConnection?: boolean
  passwordAuthentication?: 'password' | 'scram-sha-256'
}

export async function writeConnection(vault: VaultAccess, options: ConnectionOptions): Promise<VaultReply> {
  return vaultCall(vault, 'POST', `${options.mount ?? 'database'}/config/${options.name}`, {
    plugin_name: 'postgresql-database-plugin',
    connection_url: options.connectionUrl,
    ...(options.username !== undefined ? { username: options.username } : {}),
    ...(options.password !== undefined ? { password: options.password } : {}),
    allowed_roles: options.allowedRoles,
    verify_connection: options.verifyConnection ?? true,
    ...(options.passwordAuthentication ? { password_authentication: options.passwordAuthentication } : {}),
  })
}

/** docs/vault.md §2: a login user that expires with its lease and inherits the owner role. */
export function ownerCreationStatements(ownerRole: string): string[] {
  return [
    `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' INHERIT;`,
    `GRANT ${quoteIdent(ownerRole)} TO "{{name}}";`,
  ]
}

/** docs/vault.md §2: end the user's sessions, then drop it, in one transaction. */
export const TERMINATE_AND_DROP_STATEMENTS = [
  `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';`,
  `DROP ROLE IF EXISTS "{{name}}";`,
]

export interface DynamicRoleOptions {
  mount?: string
  name: string
  dbName: string
  ownerRole: string
  /** Seconds or a duration string; 0 = the mount default. */
  defaultTtl: number | string
  maxTtl: number | string
  creationStatements?: string[]
  /** Default: terminate sessions and drop the role. [] = Vault's default revocation. */
  revocationStatements?: string[]
  renewStatements?: string[]
}

export async function createDynamicRole(vault: VaultAccess, options: DynamicRoleOptions): Promise<void> {
  await vaultCall(vault, 'POST', `${options.mount ?? 'database'}/roles/${options.name}`, {
    db_name: options.dbName,
    creation_statements: options.creationStatements ?? ownerCreationStatements(options.ownerRole),
    revocation_statements: options.revocationStatements ?? TERMINATE_AND_DROP_STATEMENTS,
    ...(options.renewStatements ? { renew_statements: options.renewStatements } : {}),
    default_ttl: options.defaultTtl,
    max_ttl: options.maxTtl,
  })
}

export interface StaticRoleOptions {
  mount?: string
  name: string
  dbName: string
  /** An existing PostgreSQL login whose password Vault takes over. */
  username: string
  rotationPeriod: number | string
}

export async function createStaticRole(vault: VaultAccess, options: StaticRoleOptions): Promise<void> {
  await vaultCall(vault, 'POST', `${options.mount ?? 'database'}/static-roles/${options.name}`, {
    db_name: options.dbName,
    username: options.username,
    rotation_period: options.rotationPeriod,
  })
}

/** docs/vault.md §3: what the proxy may do, and nothing else. */
export function proxyPolicy(mount: string, dynamicRole: string, staticRole: string): string {
  return [
    `path "${mount}/creds/${dynamicRole}" { capabilities = ["read"] }`,
    `path "${mount}/static-creds/${staticRole}" { capabilities = ["read"] }`,
    `path "sys/leases/renew" { capabilities = ["update"] }`,
    `path "sys/leases/revoke" { capabilities = ["update"] }`,
    `path "sys/leases/lookup" { capabilities = ["update"] }`,
    '',
  ].join('\n')
}

export interface AppRoleOptions {
  mount?: string
  roleName: string
  policyName: string
  policy: string
  tokenTtl: number | string
  tokenMaxTtl: number | string
}

export interface AppRoleCredentials {
  roleId: string
  secretId: string
}

/** Writes the policy, enables AppRole, creates the role and returns a role_id and a fresh secret_id. */
export async function createAppRole(vault: VaultAccess, options: AppRoleOptions): Promise<AppRoleCredentials> {
  const mount = options.mount ?? 'approle'
  await vaultCall(vault, 'PUT', `sys/policies/acl/${options.policyName}`, { policy: options.policy })
  await enable(vault, 'auth', mount, 'approle')
  await vaultCall(vault, 'POST', `auth/${mount}/role/${options.roleName}`, {
    token_policies: [options.policyName],
    token_ttl: options.tokenTtl,
    token_max_ttl: options.tokenMaxTtl,
    secret_id_ttl: 0,
  })
  const roleId = await vaultCall(vault, 'GET', `auth/${mount}/role/${options.roleName}/role-id`)
  const secretId = await vaultCall(vault, 'POST', `auth/${mount}/role/${options.roleName}/secret-id`, {})
  return {
    roleId: (roleId.json as { data: { role_id: string } }).data.role_id,
    secretId: (secretId.json as { data: { secret_id: string } }).data.secret_id,
  }
}

export interface SetupOptions {
  mount: string
  dbName: string
  connectionUrl: string
  username?: string
  password?: string
  ownerRole: string
  dynamicRole: string
  staticRole: string
  staticUsername: string
  defaultTtl: number | string
  maxTtl: number | string
  rotationPeriod: number | string
  approleMount: string
  approleName: string
  policyName: string
  tokenTtl: number | string
  tokenMaxTtl: number | string
}

/** Everything the proxy needs, in order; returns the AppRole login for the proxy. */
export async function setupDatabase(vault: VaultAccess, o: SetupOptions): Promise<AppRoleCredentials> {
  await enableDatabaseEngine(vault, o.mount)
  await writeConnection(vault, {
    mount: o.mount,
    name: o.dbName,
    connectionUrl: o.connectionUrl,
    username: o.username,
    password: o.password,
    allowedRoles: [o.dynamicRole, o.staticRole],
  })
  await createDynamicRole(vault, {
    mount: o.mount,
    name: o.dynamicRole,
    dbName: o.dbName,
    ownerRole: o.ownerRole,
    defaultTtl: o.defaultTtl,
    maxTtl: o.maxTtl,
  })
  await createStaticRole(vault, {
    mount: o.mount,
    name: o.staticRole,
    dbName: o.dbName,
    username: o.staticUsername,
    rotationPeriod: o.rotationPeriod,
  })
  return createAppRole(vault, {
    mount: o.approleMount,
    roleName: o.approleName,
    policyName: o.policyName,
    policy: proxyPolicy(o.mount, o.dynamicRole, o.staticRole),
    tokenTtl: o.tokenTtl,
    tokenMaxTtl: o.tokenMaxTtl,
  })
}

function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`
}

// ---------------------------------------------------------------------------
// As a script

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'connection-url': { type: 'string' },
      username: { type: 'string' },
      password: { type: 'string' },
      'owner-role': { type: 'string', default: 'app_owner' },
      'static-username': { type: 'string', default: 'app_static' },
      mount: { type: 'string', default: 'database' },
      'db-name': { type: 'string', default: 'appdb' },
      'dynamic-role': { type: 'string', default: 'app-rw' },
      'static-role': { type: 'string', default: 'app-static' },
      'default-ttl': { type: 'string', default: '1h' },
      'max-ttl': { type: 'string', default: '24h' },
      'rotation-period': { type: 'string', default: '24h' },
      'approle-mount': { type: 'string', default: 'approle' },
      'approle-name': { type: 'string', default: 'proxy' },
      policy: { type: 'string', default: 'proxy' },
      'token-ttl': { type: 'string', default: '1h' },
      'token-max-ttl': { type: 'string', default: '24h' },
    },
  })
  const address = process.env.VAULT_ADDR ?? process.env.BAO_ADDR
  const token = process.env.VAULT_TOKEN ?? process.env.BAO_TOKEN
  const connectionUrl = values['connection-url'] ?? process.env.PGVP_SETUP_CONNECTION_URL
  const missing = [
    address ? undefined : 'VAULT_ADDR',
    token ? undefined : 'VAULT_TOKEN',
    connectionUrl ? undefined : '--connection-url',
  ].filter((m) => m !== undefined)
  if (missing.length > 0) throw new Error(`setup-database: missing ${missing.join(', ')}`)
  const credentials = await setupDatabase(
    { address: address!, token: token! },
    {
      mount: values.mount,
      dbName: values['db-name'],
      connectionUrl: connectionUrl!,
      username: values.username,
      password: values.password,
      ownerRole: values['owner-role'],
      dynamicRole: values['dynamic-role'],
      staticRole: values['static-role'],
      staticUsername: values['static-username'],
      defaultTtl: values['default-ttl'],
      maxTtl: values['max-ttl'],
      rotationPeriod: values['rotation-period'],
      approleMount: values['approle-mount'],
      approleName: values['approle-name'],
      policyName: values.policy,
      tokenTtl: values['token-ttl'],
      tokenMaxTtl: values['token-max-ttl'],
    },
  )
  process.stdout.write(`${JSON.stringify({ role_id: credentials.roleId, secret_id: credentials.secretId })}\n`)
}

const isMain = process.argv[1] !== undefined && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)
if (isMain) {
  main().catch((err: unknown) => {
    process.stderr.write(`${(err as Error).message}\n`)
    process.exit(1)
  })
}
