/**
 * The dev Vault's core (vault/request_handling.go in miniature): one HTTP request in, one Vault
 * reply out. It checks the seal, parses the body, authenticates the token, checks the ACL, routes
 * to the mount's backend, then registers leases, issues login tokens and builds the envelope.
 * It also owns the stores (tokens, policies, leases, mounts) and the reaper that expires them.
 */
import type {
  Backend,
  BackendRequest,
  BackendResponse,
  LoginSpec,
  Mount,
  MountConfig,
  TokenTypeSetting,
} from './backend.js'
import {
  encodeJson,
  envelope,
  errorBody,
  goError,
  goStruct,
  marshalJson,
  multierrorText,
  notFound,
  respondError,
  VaultError,
} from './envelope.js'
import type { EnvelopeFields, HttpAuth } from './envelope.js'
import { approleBackend } from './engines/approle.js'
import { certBackend } from './engines/cert.js'
import { databaseBackend } from './engines/database.js'
import { jwtBackend } from './engines/jwt.js'
import { kubernetesBackend } from './engines/kubernetes.js'
import { kvBackend } from './engines/kv.js'
import { ExpirationManager } from './engines/leases.js'
import { healthReply, sealStatusReply, sysBackend } from './engines/sys.js'
import { sanitizePolicies, TokenStore, tokenBackend } from './engines/token.js'
import type { TokenEntry, TokenType } from './engines/token.js'
import { Fields } from './fields.js'
import type { Flavor } from './flavor.js'
import { newUuid } from './ids.js'
import type { MountSpec } from './mounts.js'
import { MountTable, normalizeMountPath } from './mounts.js'
import { PolicyStore } from './policies.js'
import { RateLimitQuotas } from './rate-limit-quotas.js'
import type { Operation, RouteHandlers } from './router.js'
import { calculateTtl } from './ttl.js'

export interface IncomingRequest {
  method: string
  /** Path and query, e.g. /v1/database/creds/app-rw?x=1. */
  url: string
  headers: Readonly<Record<string, string | string[] | undefined>>
  body: string
  /** The client's IP address: rate-limit quotas count per address. */
  remoteAddress?: string
  /** undefined without TLS; over TLS the client's certificate (DER), or null without one. */
  clientCertificate?: Buffer | null
}

export interface Reply {
  status: number
  headers: Record<string, string>
  body: string
}

export interface CoreOptions {
  rootToken: string
  /** Which server's texts and fields to answer with (flavor.ts). */
  flavor: Flavor
  /** The server's default_lease_ttl and max_lease_ttl: what mounts without their own use. */
  systemTtls: MountConfig
  /** How often the reaper looks for expired tokens and leases. */
  reaperIntervalMs: number
  /** Base of the backoff between failed revocation attempts (Vault: 10 s). */
  revokeRetryBaseMs: number
  /** How often database static roles are checked for rotation (Vault: 5 s). */
  rotationTickMs: number
  log(message: string): void
}

type EngineFactory = (core: VaultCore, mount: Mount) => Backend

const SECRET_ENGINES: Record<string, EngineFactory> = {
  kv: kvBackend,
  database: (core, mount) => databaseBackend(core, mount, { rotationTickMs: core.options.rotationTickMs }),
}

const AUTH_METHODS: Record<string, EngineFactory> = {
  approle: approleBackend,
  cert: certBackend,
  kubernetes: kubernetesBackend,
  jwt: jwtBackend,
  // The same plugin serves both names in Vault.
  oidc: jwtBackend,
}

/** sys/ paths whose data Vault also copies to the top level of the body (http/handler.go). */
const INJECT_DATA_INTO_TOP = [/^sys\/(mounts|auth|policy)(\/.*)?$/]

export class VaultCore {
  readonly policies = new PolicyStore()
  readonly mounts: MountTable
  readonly tokens: TokenStore
  readonly leases: ExpirationManager
  readonly rateLimits = new RateLimitQuotas(() => this.now())
  sealed = false
  standby = false
  /** A standby forwards requests (and so serves them here); false: it redirects them. */
  standbyForwarding = true
  /** The active node's API address a standby redirects to; "" = no active node known. */
  activeAddress = ''
  readonly clusterName = `vault-cluster-${newUuid().slice(0, 8)}`
  readonly clusterId = newUuid()
  /** entity_id per (auth mount accessor, alias name), as the identity store would keep them. */
  private readonly entities = new Map<string, string>()
  private readonly reaper: NodeJS.Timeout
  private reaping: Promise<void> | undefined

  constructor(readonly options: CoreOptions) {
    this.mounts = new MountTable(options.systemTtls)
    this.leases = new ExpirationManager({
      now: () => this.now(),
      backendFor: (path) => this.mounts.get(path),
      revokeRetryBaseMs: options.revokeRetryBaseMs,
      leaseLookupHasPath: () => options.flavor.leaseLookupHasPath,
      onRevokeError: (lease, err) => options.log(`revoking ${lease.id} failed: ${err.message}`),
    })
    this.tokens = new TokenStore(
      () => this.now(),
      (token) => this.leases.expireByToken(token.id),
    )
    this.mounts.enable({ path: 'sys', type: 'system', kind: 'secret', description: 'system endpoints' }, () =>
      sysBackend(this),
    )
    this.mounts.enable(
      { path: 'auth/token', type: 'token', kind: 'auth', description: 'token based credentials' },
      (m) => tokenBackend(this, m),
    )
    // Dev mode mounts a KV version 2 engine at secret/.
    this.mounts.enable(
      {
        path: 'secret',
        type: 'kv',
        kind: 'secret',
        description: 'key/value secret storage',
        options: { version: '2' },
      },
      (m) => kvBackend(this, m),
    )
    this.tokens.create({
      id: options.rootToken,
      policies: ['root'],
      path: 'auth/token/root',
      displayName: 'root',
      meta: null,
      parent: '',
      creationTimeMs: this.now(),
      creationTtlSeconds: 0,
      explicitMaxTtlSeconds: 0,
      periodSeconds: 0,
      numUses: 0,
      entityId: '',
      mountPath: 'auth/token/',
      internal: {},
      lease: undefined,
    })
    this.reaper = setInterval(() => void this.reap(), options.reaperIntervalMs)
    this.reaper.unref()
  }

  now(): number {
    return Date.now()
  }

  get flavor(): Flavor {
    return this.options.flavor
  }

  /** Reports a background problem (a failed revocation or rotation): nobody else would see it. */
  log(message: string): void {
    this.options.log(message)
  }

  /** Stops the reaper and closes every backend (database connection pools). */
  async close(): Promise<void> {
    clearInterval(this.reaper)
    await this.reaping
    for (const mount of [...this.mounts.list('secret'), ...this.mounts.list('auth')]) await mount.backend.close?.()
  }

  // -------------------------------------------------------------------------
  // Mounts

  enableMount(spec: MountSpec): void {
    let type = spec.type
    let options = spec.options ?? null
    if (spec.kind === 'secret' && type === 'kv-v2') {
      type = 'kv'
      options = { ...options, version: '2' }
    }
    if (spec.kind === 'auth' && type === 'token') throw respondError('token credential backend cannot be instantiated')
    const registry = spec.kind === 'auth' ? AUTH_METHODS : SECRET_ENGINES
    const factory = registry[type]
    if (factory === undefined) throw respondError(`plugin not found in the catalog: ${type}`)
    const path = spec.kind === 'auth' ? `auth/${normalizeMountPath(spec.path)}` : normalizeMountPath(spec.path)
    const reserved = ['sys/', 'auth/', 'cubbyhole/', 'identity/']
    if (spec.kind === 'secret' && reserved.some((r) => path.startsWith(r))) {
      throw new VaultError(409, [`existing mount at ${reserved.find((r) => path.startsWith(r))}`])
    }
    this.mounts.enable({ ...spec, type, options, path }, (mount) => factory(this, mount))
  }

  /** Unmount: revokes the mount's leases (or the tokens of an auth mount), then drops it. */
  async disableMount(path: string): Promise<void> {
    const mount = this.mounts.get(path)
    if (mount === undefined) return
    if (mount.type === 'system') throw respondError(`cannot unmount "${mount.path}"`)
    if (mount.type === 'token') throw respondError('token credential backend cannot be disabled')
    if (mount.kind === 'auth') this.tokens.revokeByMount(mount.path)
    await this.leases.revokePrefix(mount.path)
    this.mounts.remove(mount.path)
    await mount.backend.close?.()
  }

  // -------------------------------------------------------------------------
  // Tokens and identity

  entityIdFor(mount: Mount, aliasName: string): string {
    const key = `${mount.accessor}\u0000${aliasName}`
    let id = this.entities.get(key)
    if (id === undefined) {
      id = newUuid()
      this.entities.set(key, id)
    }
    return id
  }

  /** request_handling.go handleLoginRequest: a login becomes an orphan token, service or batch. */
  private issueLoginToken(req: BackendRequest, login: LoginSpec): { entry: TokenEntry; warnings: string[] } {
    const type = loginTokenType(req.mount.tokenType, login.tokenType ?? 'default')
    const source = req.mount.path.replace(/^auth\//, '').replaceAll('/', '-')
    const now = this.now()
    const { ttlSeconds, warnings } = calculateTtl({
      incrementSeconds: 0,
      backendTtlSeconds: login.ttlSeconds,
      periodSeconds: login.periodSeconds,
      backendMaxTtlSeconds: login.maxTtlSeconds,
      explicitMaxTtlSeconds: login.explicitMaxTtlSeconds,
      mountDefaultTtlSeconds: req.mount.config.defaultLeaseTtlSeconds,
      mountMaxTtlSeconds: req.mount.config.maxLeaseTtlSeconds,
      nowMs: now,
    })
    const policies = sanitizePolicies(login.policies, !login.noDefaultPolicy)
    if (policies.includes('root')) throw respondError('auth methods cannot create root tokens')
    const entry = this.tokens.create({
      type,
      policies,
      path: req.fullPath,
      displayName: `${source}${login.displayName}`.replace(/-$/, ''),
      meta: login.metadata,
      parent: '',
      creationTimeMs: now,
      creationTtlSeconds: ttlSeconds,
      explicitMaxTtlSeconds: login.explicitMaxTtlSeconds,
      periodSeconds: login.periodSeconds,
      numUses: login.numUses,
      entityId: this.entityIdFor(req.mount, login.aliasName),
      mountPath: req.mount.path,
      internal: login.internal,
      lease: {
        issueTimeMs: now,
        expireTimeMs: now + ttlSeconds * 1000,
        lastRenewalMs: undefined,
        renewable: type === 'service',
        backendTtlSeconds: login.ttlSeconds,
        backendMaxTtlSeconds: login.maxTtlSeconds,
      },
    })
    return { entry, warnings }
  }

  private authBlock(entry: TokenEntry, leaseDurationSeconds: number): HttpAuth {
    return {
      client_token: entry.id,
      accessor: entry.accessor,
      policies: [...entry.policies],
      token_policies: entry.policies.length > 0 ? [...entry.policies] : undefined,
      metadata: entry.meta === null ? null : { ...entry.meta },
      lease_duration: leaseDurationSeconds,
      renewable: entry.lease?.renewable ?? false,
      entity_id: entry.entityId,
      token_type: entry.type,
      orphan: entry.parent === '',
      mfa_requirement: null,
      num_uses: entry.numUses,
    }
  }

  // -------------------------------------------------------------------------
  // Requests

  async handle(request: IncomingRequest): Promise<Reply> {
    const url = new URL(request.url, 'http://dev-vault.invalid')
    if (!url.pathname.startsWith('/v1/')) return errorReply(notFound())
    let path: string
    try {
      path = decodeURIComponent(url.pathname.slice('/v1/'.length))
    } catch {
      return errorReply(respondError(`invalid path escaping in ${url.pathname}`))
    }
    const method = request.method.toUpperCase()

    // http/util.go rateLimitQuotaWrapping: before anything else, on the path after /v1/.
    const quota = this.rateLimits.apply(path, request.remoteAddress ?? '')
    const reply = quota.allowed
      ? await this.handlePath(request, url, path, method)
      : errorReply(new VaultError(429, [`request path ${JSON.stringify(path)}: rate limit quota exceeded`]))
    Object.assign(reply.headers, quota.headers)
    return reply
  }

  private async handlePath(request: IncomingRequest, url: URL, path: string, method: string): Promise<Reply> {
    // Served by the HTTP layer, outside the logical request flow, and also while sealed.
    if (path === 'sys/health' && (method === 'GET' || method === 'HEAD')) {
      return plainReply(healthReply(this, url.searchParams, method === 'HEAD'))
    }
    if (path === 'sys/seal-status' && method === 'GET') return plainReply(sealStatusReply(this))
    if (this.sealed) return errorReply(respondError('Vault is sealed', 503))
    if (this.standby) {
      // http/handler.go forwardRequest: a client can ask not to be forwarded.
      const forwards = this.standbyForwarding && header(request, 'x-vault-no-request-forwarding') === undefined
      if (!forwards) return this.respondStandby(url)
    }

    const requestId = newUuid()
    try {
      return await this.handleLogical(request, url, path, method, requestId)
    } catch (err) {
      if (err instanceof VaultError) return errorReply(err)
      this.options.log(`internal error on ${method} ${path}: ${(err as Error).stack ?? String(err)}`)
      return errorReply(new VaultError(500, [multierrorText([(err as Error).message])]))
    }
  }

  /**
   * http/handler.go respondStandby: 307 to the same path and query on the active node, with no
   * body; 503 when no active node is known.
   */
  private respondStandby(url: URL): Reply {
    if (this.activeAddress === '') return errorReply(respondError('no active Vault instance found', 503))
    const active = new URL(this.activeAddress)
    const location = `${active.protocol}//${active.host}${url.pathname}${url.search}`
    return { status: 307, headers: { 'Cache-Control': 'no-store', Location: location }, body: '' }
  }

  private async handleLogical(
    request: IncomingRequest,
    url: URL,
    path: string,
    method: string,
    requestId: string,
  ): Promise<Reply> {
    const body = parseBody(request.body)
    if (header(request, 'x-vault-wrap-ttl') !== undefined) {
      throw respondError('response wrapping is not supported by the dev Vault')
    }
    let operation = operationOf(method, url.searchParams)
    const mount = this.mounts.match(path)
    const relative = mount ? path.slice(mount.path.length) : path
    const match = mount?.backend.router.match(relative)
    const isUnauthenticated = mount !== undefined && matchesAny(mount.backend.unauthenticatedPaths, relative)
    const caller = isUnauthenticated ? undefined : this.authenticate(request)
    const req: BackendRequest | undefined =
      mount && match
        ? {
            operation,
            path: relative,
            fullPath: path,
            params: match.params,
            fields: new Fields(body),
            query: url.searchParams,
            caller,
            mount,
            connection: {
              remoteAddress: request.remoteAddress ?? '',
              clientCertificate: request.clientCertificate,
            },
          }
        : undefined
    // A write is a create when the backend says its target does not exist yet (ExistenceCheck).
    if (req && operation === 'update' && match?.handlers.exists) {
      operation = match.handlers.exists(req) ? 'update' : 'create'
      req.operation = operation
    }

    // As in Vault, the ACL is checked before routing: a token that may not see a path learns
    // nothing about whether it exists.
    if (caller !== undefined) {
      // Vault checks list permissions against the path with a trailing slash.
      const aclPath = operation === 'list' && !path.endsWith('/') ? `${path}/` : path
      const needsSudo = mount !== undefined && matchesAny(mount.backend.sudoPaths, relative)
      if (!this.policies.acl(caller.policies).allows(aclPath, operation, needsSudo)) {
        throw goError('permission denied', 403)
      }
    }
    if (mount === undefined) throw respondError(`no handler for route "${path}". route entry not found.`, 404)
    if (match === undefined || req === undefined) throw goError('unsupported path', 404)
    const handler = handlerFor(match.handlers, operation)
    if (handler === undefined) throw goError('unsupported operation', 405)

    // Like Vault, a limited-use token spends a use on every request it is allowed to make, and
    // its last use revokes it once the request is done.
    const wasLastUse = caller !== undefined && this.tokens.spendUse(caller)
    try {
      return this.reply(req, requestId, await handler(req))
    } finally {
      if (wasLastUse) this.tokens.revoke(caller.id)
    }
  }

  /** X-Vault-Token, or Authorization: Bearer. 403 without one, or with one Vault does not know. */
  private authenticate(request: IncomingRequest): TokenEntry {
    const bearer = /^Bearer\s+(.+)$/i.exec(header(request, 'authorization') ?? '')?.[1]
    const id = header(request, 'x-vault-token') ?? bearer
    if (id === undefined || id === '') throw respondError('permission denied', 403)
    const entry = this.tokens.lookup(id)
    if (entry === undefined) {
      // One message goes out as it is (logical.ErrorResponse(ctErr.Error())); Vault ≥1.17 joins
      // ErrInvalidToken to ErrPermissionDenied, which go-multierror then formats.
      const messages = this.options.flavor.invalidTokenMessages
      throw new VaultError(403, [messages.length === 1 ? messages[0]! : multierrorText(messages)])
    }
    return entry
  }

  private reply(req: BackendRequest, requestId: string, result: BackendResponse | undefined): Reply {
    // OpenBao's envelope has no mount_type at all; Vault's is empty for RespondWithStatusCode.
    const hasMountType = this.options.flavor.hasMountType
    const mountType = hasMountType ? req.mount.type : undefined
    if (result === undefined) {
      if (req.operation === 'read' || req.operation === 'list') return errorReply(notFound())
      return { status: 204, headers: { 'Cache-Control': 'no-store' }, body: '' }
    }
    if (result.status !== undefined) {
      // logical.RespondWithStatusCode: the envelope (mount_type unset) or nothing, via json.Marshal.
      const hasBody = result.data !== undefined || result.warnings !== undefined
      const body = hasBody
        ? marshalJson(
            envelope({
              requestId,
              data: result.data,
              warnings: result.warnings,
              mountType: hasMountType ? '' : undefined,
            }),
          )
        : ''
      return jsonReply(result.status, body)
    }
    if (req.operation === 'list' && !hasKeys(result)) return errorReply(notFound())

    const warnings = [...(result.warnings ?? [])]
    const fields: EnvelopeFields = { requestId, data: result.data, warnings, mountType }
    if (result.secret !== undefined) {
      // The core applies the mount's TTLs to the backend's and registers the lease.
      const capped = calculateTtl({
        incrementSeconds: 0,
        backendTtlSeconds: result.secret.ttlSeconds,
        backendMaxTtlSeconds: result.secret.maxTtlSeconds,
        mountDefaultTtlSeconds: req.mount.config.defaultLeaseTtlSeconds,
        mountMaxTtlSeconds: req.mount.config.maxLeaseTtlSeconds,
        nowMs: this.now(),
      })
      warnings.push(...capped.warnings)
      const lease = this.leases.register(
        req.fullPath,
        req.mount.path,
        req.caller?.id ?? '',
        { ...result.secret, ttlSeconds: capped.ttlSeconds },
        req.caller?.type === 'batch' ? batchLeaseBinding(req.caller) : undefined,
      )
      fields.leaseId = lease.id
      fields.renewable = result.secret.renewable
      fields.leaseDurationSeconds = capped.ttlSeconds
    }
    if (result.lease !== undefined) {
      fields.leaseId = result.lease.id
      fields.renewable = result.lease.renewable
      fields.leaseDurationSeconds = result.lease.ttlSeconds
    }
    if (result.login !== undefined) {
      const issued = this.issueLoginToken(req, result.login)
      warnings.push(...issued.warnings)
      fields.auth = this.authBlock(issued.entry, issued.entry.creationTtlSeconds)
    }
    if (result.token !== undefined) fields.auth = this.authBlock(result.token.entry, result.token.leaseDurationSeconds)

    const body = envelope(fields)
    if (INJECT_DATA_INTO_TOP.some((re) => re.test(req.fullPath)) && result.data) {
      return jsonReply(200, encodeJson(goStruct({ ...result.data, ...body })))
    }
    return jsonReply(200, encodeJson(body))
  }

  // -------------------------------------------------------------------------
  // Expiry

  /** One reaper pass: expired tokens are revoked (their leases expire with them), then leases. */
  private async reap(): Promise<void> {
    if (this.reaping !== undefined || this.sealed) return
    this.reaping = (async () => {
      this.tokens.revokeExpired()
      await this.leases.revokeExpired()
    })()
    try {
      await this.reaping
    } finally {
      this.reaping = undefined
    }
  }
}

// ---------------------------------------------------------------------------

/**
 * routing/router.go: an auth mount's token_type of service or batch decides; default-service and
 * default-batch give what the role asked for, or their own type when the role left it "default".
 */
function loginTokenType(mountSetting: TokenTypeSetting, role: 'default' | 'service' | 'batch'): TokenType {
  switch (mountSetting) {
    case 'service':
    case 'batch':
      return mountSetting
    case 'default-service':
      return role === 'batch' ? 'batch' : 'service'
    case 'default-batch':
      return role === 'service' ? 'service' : 'batch'
  }
}

function operationOf(method: string, query: URLSearchParams): Operation {
  switch (method) {
    case 'GET': {
      const list = query.get('list')
      return list !== null && ['1', 't', 'T', 'TRUE', 'true', 'True'].includes(list) ? 'list' : 'read'
    }
    case 'LIST':
      return 'list'
    case 'POST':
    case 'PUT':
      return 'update'
    case 'DELETE':
      return 'delete'
    default:
      throw new VaultError(405, [])
  }
}

/**
 * expiration.go Register: a lease created with a batch token ends when the token does (the reply
 * still shows the TTL asked for), and is revoked with the batch token's parent, or with nothing
 * for an orphan batch token.
 */
function batchLeaseBinding(token: TokenEntry): { indexToken: string; capAtMs: number | undefined } {
  return { indexToken: token.parent, capAtMs: token.lease?.expireTimeMs }
}

function handlerFor<Req, Res>(handlers: RouteHandlers<Req, Res>, operation: Operation) {
  switch (operation) {
    case 'read':
      return handlers.read
    case 'list':
      return handlers.list
    case 'create':
    case 'update':
      return handlers.write
    case 'delete':
      return handlers.delete
  }
}

function matchesAny(patterns: readonly string[] | undefined, path: string): boolean {
  return (patterns ?? []).some((p) => (p.endsWith('*') ? path.startsWith(p.slice(0, -1)) : path === p))
}

function hasKeys(result: BackendResponse): boolean {
  const keys = result.data?.keys
  return (Array.isArray(keys) && keys.length > 0) || (result.warnings?.length ?? 0) > 0
}

function parseBody(text: string): Record<string, unknown> {
  if (text.trim() === '') return {}
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch (err) {
    throw respondError(`failed to parse JSON input: ${(err as Error).message}`)
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw respondError('failed to parse JSON input: body must be a JSON object')
  }
  return parsed as Record<string, unknown>
}

function header(request: IncomingRequest, name: string): string | undefined {
  const value = request.headers[name]
  return Array.isArray(value) ? value[0] : value
}

function jsonReply(status: number, body: string): Reply {
  const headers: Record<string, string> = { 'Cache-Control': 'no-store' }
  if (body !== '') headers['Content-Type'] = 'application/json'
  return { status, headers, body }
}

function errorReply(err: VaultError): Reply {
  return jsonReply(err.status, errorBody(err.errors))
}

function plainReply(reply: { status: number; body: string }): Reply {
  return {
    status: reply.status,
    headers: { 'Cache-Control': 'no-store', 'Content-Type': 'application/json' },
    body: reply.body,
  }
}
