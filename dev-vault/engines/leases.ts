/**
 * Leases (vault/expiration.go) and the sys/leases/* endpoints: registering a secret's lease,
 * renewing it within its max TTL, revoking it through its secrets engine, looking it up, and the
 * reaper that revokes expired leases, retrying failed revocations with exponential backoff.
 */
import type { Backend, BackendRequest, BackendResult, BackendRouter, MountConfig, SecretSpec } from '../backend.js'
import type { VaultCore } from '../core.js'
import { respondError } from '../envelope.js'
import { randomBase62 } from '../ids.js'
import { rfc3339Nano } from '../time-format.js'
import { calculateTtl, PastMaxTtlError } from '../ttl.js'

/** expiration.go maxRevokeAttempts: after this many failures the lease is left irrevocable. */
const MAX_REVOKE_ATTEMPTS = 6

export interface Lease {
  /** "<request path>/<24 base62>", e.g. database/creds/app-rw/9QpVbLr1cXn2aT0yUe7kWm3Z. */
  readonly id: string
  /** The request path that created it. */
  readonly path: string
  /** The mount whose backend renews and revokes it. */
  readonly mountPath: string
  /** The token that created it. */
  readonly clientToken: string
  /** The token whose revocation revokes it: the creator, or a batch token's parent ("" = none). */
  readonly indexToken: string
  /** A lease created with a batch token cannot outlive the token: its end, in epoch ms. */
  readonly capAtMs: number | undefined
  readonly issueTimeMs: number
  expireTimeMs: number
  lastRenewalMs: number | undefined
  /** The TTL and max TTL the backend asked for, and the internal data it wants back. */
  secret: SecretSpec
  revokeAttempts: number
  nextRevokeAttemptMs: number
  /** The last revocation error; set once revocation has failed. */
  revokeError: string | undefined
  isRevoking: boolean
}

interface ExpirationDeps {
  now(): number
  backendFor(mountPath: string): { backend: Backend; config: MountConfig } | undefined
  /** Base of the revocation retry backoff (Vault: 10 s). */
  revokeRetryBaseMs: number
  /** Whether lookups show the lease's path (OpenBao does). */
  leaseLookupHasPath(): boolean
  /** Reports background revocation failures (the reaper has no caller to tell). */
  onRevokeError(lease: Lease, err: Error): void
}

export class ExpirationManager {
  private readonly leases = new Map<string, Lease>()

  constructor(private readonly deps: ExpirationDeps) {}

  /**
   * Registers a lease for a response's secret; the TTL was already capped by the core. `batch`
   * binds it to a batch token: it ends no later than `capAtMs` and goes with `indexToken`.
   */
  register(
    path: string,
    mountPath: string,
    clientToken: string,
    secret: SecretSpec,
    batch?: { indexToken: string; capAtMs: number | undefined },
  ): Lease {
    const now = this.deps.now()
    const capAtMs = batch?.capAtMs
    const lease: Lease = {
      id: `${path.replace(/\/+$/, '')}/${randomBase62(24)}`,
      path,
      mountPath,
      clientToken,
      indexToken: batch ? batch.indexToken : clientToken,
      capAtMs,
      issueTimeMs: now,
      expireTimeMs: Math.min(now + secret.ttlSeconds * 1000, capAtMs ?? Infinity),
      lastRenewalMs: undefined,
      secret,
      revokeAttempts: 0,
      nextRevokeAttemptMs: 0,
      revokeError: undefined,
      isRevoking: false,
    }
    this.leases.set(lease.id, lease)
    return lease
  }

  get(id: string): Lease | undefined {
    return this.leases.get(id)
  }

  /** leaseEntry.renewable(): why a lease cannot be renewed, or undefined when it can. */
  private whyNotRenewable(lease: Lease): string | undefined {
    if (this.isIrrevocable(lease)) return 'lease is expired and has failed previous revocation attempts'
    if (lease.expireTimeMs <= this.deps.now()) return 'lease expired'
    if (!lease.secret.renewable) return 'lease is not renewable'
    return undefined
  }

  private isIrrevocable(lease: Lease): boolean {
    return lease.revokeAttempts >= MAX_REVOKE_ATTEMPTS
  }

  /** ExpirationManager.Renew: the backend renews (ALTER ROLE … VALID UNTIL), the core caps. */
  async renew(id: string, incrementSeconds: number): Promise<{ lease: Lease; ttlSeconds: number; warnings: string[] }> {
    const lease = this.leases.get(id)
    if (lease === undefined) throw respondError('lease not found')
    const reason = this.whyNotRenewable(lease)
    if (reason !== undefined) throw respondError(reason)
    const owner = this.deps.backendFor(lease.mountPath)
    let backendTtls: { ttlSeconds: number; maxTtlSeconds: number }
    try {
      if (owner?.backend.renewSecret === undefined) throw new Error(`no handler for route "${lease.path}"`)
      backendTtls = await owner.backend.renewSecret(lease, incrementSeconds)
    } catch (err) {
      throw respondError(`failed to renew entry: resp: (*logical.Response)(nil) err: ${(err as Error).message}`)
    }
    const now = this.deps.now()
    let result
    try {
      result = calculateTtl({
        incrementSeconds,
        backendTtlSeconds: backendTtls.ttlSeconds,
        backendMaxTtlSeconds: backendTtls.maxTtlSeconds,
        mountDefaultTtlSeconds: owner.config.defaultLeaseTtlSeconds,
        mountMaxTtlSeconds: owner.config.maxLeaseTtlSeconds,
        issueTimeMs: lease.issueTimeMs,
        nowMs: now,
      })
    } catch (err) {
      if (err instanceof PastMaxTtlError) throw respondError(err.message)
      throw err
    }
    let ttlSeconds = result.ttlSeconds
    let expireTimeMs = now + ttlSeconds * 1000
    // expiration.go Renew: a batch token's lease is cut back to the token's end.
    if (lease.capAtMs !== undefined) {
      if (lease.capAtMs <= now) throw respondError('cannot renew lease, no valid associated token')
      if (expireTimeMs > lease.capAtMs) {
        expireTimeMs = lease.capAtMs
        ttlSeconds = Math.floor((lease.capAtMs - now) / 1000)
      }
    }
    lease.secret = { ...lease.secret, ttlSeconds }
    lease.expireTimeMs = expireTimeMs
    lease.lastRenewalMs = now
    return { lease, ttlSeconds, warnings: result.warnings }
  }

  /** Revokes now, through the backend. Unknown ids succeed (revocation is idempotent). */
  async revoke(id: string): Promise<void> {
    const lease = this.leases.get(id)
    if (lease === undefined) return
    await this.revokeLease(lease)
  }

  async revokePrefix(prefix: string): Promise<void> {
    const normalized = prefix.replace(/\/*$/, '/')
    for (const lease of [...this.leases.values()]) {
      if (lease.id.startsWith(normalized)) await this.revokeLease(lease)
    }
  }

  /** RevokeByToken: the leases indexed under the token expire now and the reaper revokes them. */
  expireByToken(tokenId: string): void {
    if (tokenId === '') return
    const now = this.deps.now()
    for (const lease of this.leases.values()) {
      if (lease.indexToken === tokenId && lease.expireTimeMs > now) lease.expireTimeMs = now
    }
  }

  /** Queues a lease for the reaper (revoke with sync=false). */
  expireNow(id: string): void {
    const lease = this.leases.get(id)
    if (lease !== undefined) lease.expireTimeMs = Math.min(lease.expireTimeMs, this.deps.now())
  }

  /** One pass of the reaper: revokes every expired lease that is due for an attempt. */
  async revokeExpired(): Promise<void> {
    const now = this.deps.now()
    const due = [...this.leases.values()].filter(
      (l) => l.expireTimeMs <= now && !l.isRevoking && !this.isIrrevocable(l) && l.nextRevokeAttemptMs <= now,
    )
    await Promise.all(
      due.map((lease) =>
        this.revokeLease(lease).catch((err: unknown) => {
          lease.revokeAttempts += 1
          // Vault backs off exponentially from a 10 s base; after the last attempt the lease stays,
          // irrevocable, with its error, until revoke-force.
          lease.nextRevokeAttemptMs = this.deps.now() + this.deps.revokeRetryBaseMs * 2 ** (lease.revokeAttempts - 1)
          this.deps.onRevokeError(lease, err as Error)
        }),
      ),
    )
  }

  /** Forgets every lease under a mount without revoking (revoke-force, or after an unmount's revocation). */
  forgetPrefix(prefix: string): void {
    for (const id of [...this.leases.keys()]) if (id.startsWith(prefix)) this.leases.delete(id)
  }

  private async revokeLease(lease: Lease): Promise<void> {
    lease.isRevoking = true
    try {
      const owner = this.deps.backendFor(lease.mountPath)
      if (owner?.backend.revokeSecret === undefined) throw new Error(`no handler for route "${lease.path}"`)
      await owner.backend.revokeSecret(lease)
      this.leases.delete(lease.id)
    } catch (err) {
      lease.revokeError = (err as Error).message
      throw respondError(`failed to revoke entry: resp: (*logical.Response)(nil) err: ${lease.revokeError}`)
    } finally {
      lease.isRevoking = false
    }
  }

  /** sys/leases/lookup data. */
  lookupData(lease: Lease): Record<string, unknown> {
    const data: Record<string, unknown> = {
      id: lease.id,
      issue_time: rfc3339Nano(lease.issueTimeMs),
      expire_time: rfc3339Nano(lease.expireTimeMs),
      last_renewal: lease.lastRenewalMs === undefined ? null : rfc3339Nano(lease.lastRenewalMs),
      renewable: this.whyNotRenewable(lease) === undefined,
      ttl: Math.trunc((lease.expireTimeMs - this.deps.now()) / 1000),
    }
    if (this.deps.leaseLookupHasPath()) data.path = lease.path
    if (lease.revokeError !== undefined && this.isIrrevocable(lease)) data.revoke_error = lease.revokeError
    return data
  }
}

// ---------------------------------------------------------------------------
// sys/leases/*

function leaseIdOf(req: BackendRequest): string {
  const id = req.fields.string('lease_id') || req.params.leaseId || ''
  if (id === '') throw respondError('lease_id must be specified')
  return id
}

async function renew(core: VaultCore, req: BackendRequest): Promise<BackendResult> {
  const id = leaseIdOf(req)
  const { lease, ttlSeconds, warnings } = await core.leases.renew(id, req.fields.durationSeconds('increment'))
  return { lease: { id: lease.id, ttlSeconds, renewable: lease.secret.renewable }, warnings }
}

async function revoke(core: VaultCore, req: BackendRequest): Promise<BackendResult> {
  const id = leaseIdOf(req)
  if (!req.fields.bool('sync', true)) {
    core.leases.expireNow(id)
    return { status: 202 }
  }
  await core.leases.revoke(id)
  return undefined
}

/** Adds the lease endpoints to the sys/ router (paths relative to sys/). */
export function addLeaseRoutes(router: BackendRouter, core: VaultCore): void {
  router
    .add('leases/renew', { write: (req) => renew(core, req) })
    .add('leases/renew/*leaseId', { write: (req) => renew(core, req) })
    .add('leases/revoke', { write: (req) => revoke(core, req) })
    .add('leases/revoke/*leaseId', { write: (req) => revoke(core, req) })
  if (core.flavor.hasLegacyLeasePaths) {
    router
      .add('renew', { write: (req) => renew(core, req) })
      .add('renew/*leaseId', { write: (req) => renew(core, req) })
      .add('revoke', { write: (req) => revoke(core, req) })
      .add('revoke/*leaseId', { write: (req) => revoke(core, req) })
  }
  router
    .add('leases/revoke-prefix/*prefix', {
      write: async (req) => {
        await core.leases.revokePrefix(req.params.prefix ?? '')
        return undefined
      },
    })
    .add('leases/lookup', {
      write: (req) => {
        const id = leaseIdOf(req)
        const lease = core.leases.get(id)
        if (lease === undefined) throw respondError('invalid lease')
        return { data: core.leases.lookupData(lease) }
      },
    })
}
