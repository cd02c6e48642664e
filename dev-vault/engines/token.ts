/**
 * The token store and its auth method at auth/token/ (vault/token_store.go): the dev root token,
 * tokens from logins and from auth/token/create, lookup, renewal with TTL capping, and revocation
 * of a token together with its child tokens and, through the expiration manager, its leases.
 */
import type { Backend, BackendRequest, BackendResult, Mount } from '../backend.js'
import type { VaultCore } from '../core.js'
import { goError, respondError } from '../envelope.js'
import { newAccessor, newBatchToken, newServiceToken } from '../ids.js'
import { Router } from '../router.js'
import { rfc3339Nano, unixSeconds } from '../time-format.js'
import { calculateTtl, PastMaxTtlError } from '../ttl.js'

export interface TokenLease {
  issueTimeMs: number
  expireTimeMs: number
  lastRenewalMs: number | undefined
  renewable: boolean
  /** The TTL the issuing backend asked for; a renewal without increment asks for it again. */
  backendTtlSeconds: number
  backendMaxTtlSeconds: number
}

/** logical.TokenType of an issued token. Batch tokens have no accessor, cannot be renewed or revoked. */
export type TokenType = 'service' | 'batch'

export interface TokenEntry {
  readonly id: string
  /** "" for batch tokens. */
  readonly accessor: string
  readonly type: TokenType
  readonly policies: readonly string[]
  /** The path that created it: "auth/token/create", "auth/approle/login", "auth/token/root". */
  readonly path: string
  readonly displayName: string
  readonly meta: Readonly<Record<string, string>> | null
  /** The parent token's id; "" for orphans. Revoking a parent revokes its children. */
  readonly parent: string
  readonly creationTimeMs: number
  readonly creationTtlSeconds: number
  readonly explicitMaxTtlSeconds: number
  readonly periodSeconds: number
  /** 0 = unlimited; otherwise the token is revoked when its last use is spent. */
  numUses: number
  readonly entityId: string
  /** The auth mount that issued it, whose backend is asked about renewals. */
  readonly mountPath: string
  readonly internal: Readonly<Record<string, unknown>>
  /** Only tokens with a TTL have lease times; the root token has none and never expires. */
  lease: TokenLease | undefined
}

export type NewToken = Omit<TokenEntry, 'id' | 'accessor' | 'lease' | 'type'> & {
  id?: string
  /** Default service. */
  type?: TokenType
  lease: TokenLease | undefined
}

export class TokenStore {
  private readonly tokens = new Map<string, TokenEntry>()

  constructor(
    private readonly now: () => number,
    /** Called for every revoked token, so its leases get revoked too. */
    private readonly onRevoke: (token: TokenEntry) => void,
  ) {}

  create(spec: NewToken): TokenEntry {
    const type = spec.type ?? 'service'
    const entry: TokenEntry = {
      ...spec,
      type,
      id: spec.id ?? (type === 'batch' ? newBatchToken() : newServiceToken()),
      accessor: type === 'batch' ? '' : newAccessor(),
    }
    if (this.tokens.has(entry.id)) throw respondError('cannot create a token with a duplicate ID')
    this.tokens.set(entry.id, entry)
    return entry
  }

  /** The token if it exists and has not expired (an expired one only waits for the reaper). */
  lookup(id: string): TokenEntry | undefined {
    const entry = this.tokens.get(id)
    if (entry === undefined) return undefined
    if (entry.lease !== undefined && entry.lease.expireTimeMs <= this.now()) return undefined
    return entry
  }

  /** Spends one use of a limited-use token; true when that was its last (the caller then revokes it). */
  spendUse(entry: TokenEntry): boolean {
    if (entry.numUses === 0) return false
    entry.numUses -= 1
    return entry.numUses === 0
  }

  /** Revokes the token and, first, every token it created. Unknown ids are ignored. */
  revoke(id: string): void {
    const entry = this.tokens.get(id)
    if (entry === undefined) return
    for (const child of [...this.tokens.values()].filter((t) => t.parent === id)) this.revoke(child.id)
    this.tokens.delete(id)
    this.onRevoke(entry)
  }

  /** Revokes tokens whose TTL has run out. */
  revokeExpired(): void {
    const now = this.now()
    for (const entry of [...this.tokens.values()]) {
      if (entry.lease !== undefined && entry.lease.expireTimeMs <= now) this.revoke(entry.id)
    }
  }

  /** Revokes every token issued through an auth mount (when the mount is disabled). */
  revokeByMount(mountPath: string): void {
    for (const entry of [...this.tokens.values()]) if (entry.mountPath === mountPath) this.revoke(entry.id)
  }
}

// ---------------------------------------------------------------------------
// auth/token/

/** display names: token_store.go's displayNameSanitize. */
function sanitizeDisplayName(name: string): string {
  return name.replace(/[^a-zA-Z0-9-]/g, '-').replace(/-$/, '')
}

/** policyutil.SanitizePolicies: trimmed, lowercased, deduplicated, sorted; root absorbs the rest. */
export function sanitizePolicies(policies: readonly string[], addDefault: boolean): string[] {
  const cleaned = policies.map((p) => p.trim().toLowerCase()).filter((p) => p !== '')
  if (cleaned.includes('root')) return ['root']
  if (addDefault && !cleaned.includes('default')) cleaned.push('default')
  return [...new Set(cleaned)].sort()
}

/** The renewal flow of ExpirationManager.RenewToken, for renew and renew-self. */
async function renewToken(core: VaultCore, entry: TokenEntry, incrementSeconds: number): Promise<BackendResult> {
  // token_store.go handleRenew, before the expiration manager is asked.
  if (entry.type === 'batch') throw respondError('batch tokens cannot be renewed')
  const lease = entry.lease
  if (lease === undefined) throw respondError('invalid lease ID')
  const now = core.now()
  if (lease.expireTimeMs <= now) throw respondError('lease expired')
  if (!lease.renewable) throw respondError('lease is not renewable')

  const mount = core.mounts.get(entry.mountPath)
  let renewal = {
    ttlSeconds: lease.backendTtlSeconds,
    maxTtlSeconds: lease.backendMaxTtlSeconds,
    periodSeconds: entry.periodSeconds,
  }
  if (mount?.backend.renewLogin) {
    try {
      renewal = await mount.backend.renewLogin(entry)
    } catch (err) {
      throw goError(`failed to renew entry: resp: (*logical.Response)(nil) err: ${(err as Error).message}`)
    }
  }
  let result
  try {
    result = calculateTtl({
      incrementSeconds,
      backendTtlSeconds: renewal.ttlSeconds,
      periodSeconds: renewal.periodSeconds,
      backendMaxTtlSeconds: renewal.maxTtlSeconds,
      explicitMaxTtlSeconds: entry.explicitMaxTtlSeconds,
      mountDefaultTtlSeconds: mount?.config.defaultLeaseTtlSeconds ?? 0,
      mountMaxTtlSeconds: mount?.config.maxLeaseTtlSeconds ?? 0,
      issueTimeMs: lease.issueTimeMs,
      nowMs: now,
    })
  } catch (err) {
    if (err instanceof PastMaxTtlError) throw goError(err.message)
    throw err
  }
  lease.backendTtlSeconds = result.ttlSeconds
  lease.expireTimeMs = now + result.ttlSeconds * 1000
  lease.lastRenewalMs = now
  return { token: { entry, leaseDurationSeconds: result.ttlSeconds }, warnings: result.warnings }
}

function lookupData(core: VaultCore, entry: TokenEntry): Record<string, unknown> {
  const data: Record<string, unknown> = {
    id: entry.id,
    accessor: entry.accessor,
    policies: entry.policies,
    path: entry.path,
    meta: entry.meta,
    display_name: entry.displayName,
    num_uses: entry.numUses,
    orphan: entry.parent === '',
    creation_time: unixSeconds(entry.creationTimeMs),
    creation_ttl: entry.creationTtlSeconds,
    expire_time: null,
    ttl: 0,
    explicit_max_ttl: entry.explicitMaxTtlSeconds,
    entity_id: entry.entityId,
    type: entry.type,
  }
  if (entry.periodSeconds !== 0) data.period = entry.periodSeconds
  const lease = entry.lease
  if (lease !== undefined) {
    const now = core.now()
    if (lease.lastRenewalMs !== undefined) {
      data.last_renewal_time = unixSeconds(lease.lastRenewalMs)
      data.last_renewal = rfc3339Nano(lease.lastRenewalMs)
    }
    data.expire_time = rfc3339Nano(lease.expireTimeMs)
    data.ttl = Math.trunc((lease.expireTimeMs - now) / 1000)
    // leaseEntry.renewable(): a batch token's lease times are never renewable.
    data.renewable = entry.type === 'service' && lease.renewable && lease.expireTimeMs > now
    data.issue_time = rfc3339Nano(lease.issueTimeMs)
  }
  return data
}

function tokenFromBody(core: VaultCore, req: BackendRequest): TokenEntry | undefined {
  const id = req.fields.string('token') || req.caller?.id || ''
  if (id === '') throw respondError('missing token ID')
  return core.tokens.lookup(id)
}

/** auth/token/create and create-orphan (token_store.go handleCreateCommon, without token roles). */
function createToken(core: VaultCore, req: BackendRequest, orphanPath: boolean): BackendResult {
  const parent = req.caller
  if (parent === undefined) throw respondError('parent token lookup failed: no parent found')
  if (parent.type === 'batch') throw respondError('batch tokens cannot create more tokens')
  const f = req.fields
  const isSudo = core.policies.acl(parent.policies).allows(req.fullPath, 'update', true)
  const noDefaultPolicy = f.bool('no_default_policy', false)

  const type = createdTokenType(f)
  const numUses = f.int('num_uses')
  if (numUses < 0) throw respondError('number of uses cannot be negative')

  // Resolve policies as handleCreateCommon does without a role.
  let requested = f.commaList('policies')
  let addDefault = false
  if (requested.length === 0) {
    requested = sanitizePolicies(parent.policies, false)
  } else if (!isSudo) {
    const parentSet = sanitizePolicies(parent.policies, false)
    if (!sanitizePolicies(requested, false).every((p) => parentSet.includes(p))) {
      throw respondError('child policies must be subset of parent')
    }
    addDefault = !noDefaultPolicy && parent.policies.includes('default')
  } else {
    addDefault = !noDefaultPolicy
  }
  let policies = sanitizePolicies(requested, addDefault)
  if (noDefaultPolicy) policies = policies.filter((p) => p !== 'default')
  if (policies.includes('root') && !parent.policies.includes('root')) {
    throw respondError('root tokens may not be created without parent token being root')
  }

  const id = f.string('id')
  if (id !== '' && !isSudo) throw respondError('root or sudo privileges required to specify token id')
  let isOrphan = orphanPath
  if (f.bool('no_parent', false)) {
    if (!isSudo) throw respondError('root or sudo privileges required to create orphan token')
    isOrphan = true
  }

  const explicitMaxTtl = f.durationSeconds('explicit_max_ttl')
  if (explicitMaxTtl < 0) throw respondError('explicit_max_ttl must be positive')
  const period = f.durationSeconds('period')
  if (period < 0) throw respondError('period must be positive')
  if (period > 0 && !isSudo) throw respondError('root or sudo privileges required to create periodic token')
  const requestedTtl = f.has('ttl') ? f.durationSeconds('ttl') : f.durationSeconds('lease')
  if (requestedTtl < 0) throw respondError('ttl must be positive')

  const now = core.now()
  const warnings: string[] = []
  let ttl = requestedTtl
  // Only root tokens may live forever; everything else gets a TTL capped by the max.
  if (period > 0 || ttl > 0 || !policies.includes('root')) {
    const result = calculateTtl({
      incrementSeconds: 0,
      backendTtlSeconds: ttl,
      periodSeconds: period,
      backendMaxTtlSeconds: 0,
      explicitMaxTtlSeconds: explicitMaxTtl,
      mountDefaultTtlSeconds: req.mount.config.defaultLeaseTtlSeconds,
      mountMaxTtlSeconds: req.mount.config.maxLeaseTtlSeconds,
      issueTimeMs: now,
      nowMs: now,
    })
    ttl = result.ttlSeconds
    warnings.push(...result.warnings)
  }
  if (ttl === 0 && explicitMaxTtl > 0) ttl = explicitMaxTtl
  let renewable = type === 'service' && f.bool('renewable', true)
  if (type === 'batch' && policies.includes('root')) throw respondError('batch tokens cannot be root tokens')
  if (ttl === 0) {
    if (parent.lease !== undefined) throw respondError('expiring root tokens cannot create non-expiring root tokens')
    renewable = false
  }

  const displayName = f.string('display_name')
  const meta = f.has('meta') ? f.stringMap('meta') : null
  const entry = core.tokens.create({
    ...(id !== '' ? { id } : {}),
    type,
    policies,
    path: `auth/token/${req.path}`,
    displayName: displayName === '' ? 'token' : sanitizeDisplayName(`token-${displayName}`),
    meta,
    parent: isOrphan ? '' : parent.id,
    creationTimeMs: now,
    creationTtlSeconds: ttl,
    explicitMaxTtlSeconds: explicitMaxTtl,
    periodSeconds: period,
    numUses,
    entityId: isOrphan ? '' : parent.entityId,
    mountPath: req.mount.path,
    internal: {},
    lease:
      ttl > 0
        ? {
            issueTimeMs: now,
            expireTimeMs: now + ttl * 1000,
            lastRenewalMs: undefined,
            renewable,
            backendTtlSeconds: ttl,
            backendMaxTtlSeconds: 0,
          }
        : undefined,
  })
  if (id !== '') {
    warnings.push(
      'Supplying a custom ID for the token uses the weaker SHA1 hashing instead of the more secure SHA2-256 HMAC for token obfuscation. SHA1 hashed tokens on the wire leads to less secure lookups.',
    )
  }
  for (const name of policies) {
    if (core.policies.get(name) === undefined) warnings.push(`Policy "${name}" does not exist`)
  }
  return { token: { entry, leaseDurationSeconds: ttl }, warnings }
}

/** handleCreateCommon's `type`: service or batch, and what a batch token may not have. */
function createdTokenType(f: BackendRequest['fields']): TokenType {
  const type = f.string('type')
  if (type === '' || type === 'service') return 'service'
  if (type !== 'batch') throw respondError("invalid 'token_type' value")
  // Only the first offending field is named, as handleCreateCommon's switch does.
  let badReason = ''
  if (f.string('explicit_max_ttl') !== '') {
    if (f.durationSeconds('explicit_max_ttl') !== 0) badReason = 'explicit_max_ttl'
  } else if (f.int('num_uses') !== 0) badReason = 'num_uses'
  else if (f.string('period') !== '' && f.durationSeconds('period') !== 0) badReason = 'period'
  if (badReason !== '') throw respondError(`batch tokens cannot have "${badReason}" set`)
  return 'batch'
}

export function tokenBackend(core: VaultCore, _mount: Mount): Backend {
  const router = new Router<BackendRequest, BackendResult>()
    .add('create', { write: (req) => createToken(core, req, false) })
    .add('create-orphan', { write: (req) => createToken(core, req, true) })
    .add('lookup-self', {
      read: (req) => ({ data: lookupData(core, req.caller!) }),
    })
    .add('lookup', {
      read: (req) => ({ data: lookupData(core, req.caller!) }),
      write: (req) => {
        const entry = tokenFromBody(core, req)
        if (entry === undefined) throw respondError('bad token', 403)
        return { data: lookupData(core, entry) }
      },
    })
    .add('renew-self', {
      write: (req) => renewToken(core, req.caller!, req.fields.durationSeconds('increment')),
    })
    .add('renew', {
      write: (req) => {
        const entry = tokenFromBody(core, req)
        if (entry === undefined) throw respondError('token not found')
        return renewToken(core, entry, req.fields.durationSeconds('increment'))
      },
    })
    .add('revoke-self', {
      write: (req) => {
        if (req.caller!.type === 'batch') throw respondError('batch tokens cannot be revoked')
        core.tokens.revoke(req.caller!.id)
        return undefined
      },
    })
    .add('revoke', {
      write: (req) => {
        const entry = tokenFromBody(core, req)
        if (entry?.type === 'batch') throw respondError('batch tokens cannot be revoked')
        if (entry !== undefined) core.tokens.revoke(entry.id)
        return undefined
      },
    })
  return { router }
}
