import type { Logger } from 'pino'
import type { CredentialHold, CredentialSource, CredentialStatus, DbCredential } from './credential-source.js'
import { setLongTimeout, type LongTimer } from './long-timer.js'
import { RefusalBackoff } from './refusal-backoff.js'
import { VaultError } from './vault-error.js'
import { credentialUnavailable, type VaultSession } from './vault-session.js'
import type { VaultSecret } from './vault-client.js'

export interface DynamicSourceOptions {
  mount: string
  role: string
  /** Revoke every lease at shutdown (default true): no login user outlives the proxy. */
  revokeOnShutdown: boolean
  /**
   * rotation.swap_before_end_ms: sessions move off a credential this long before it ends, so the
   * next one is fetched by then (but not before half of a lease: short leases would thrash).
   */
  swapBeforeEndMs?: number
}

/** One Vault lease and the sessions running on it. */
interface Lease {
  credential: DbCredential
  leaseId: string
  /** Requested TTL for renewals: the lease's original duration. */
  ttlSeconds: number
  issuedAt: number
  expiresAt: number
  /** The end of the token it was made under, if that token cannot be renewed: the lease dies with it. */
  tokenEnd: number | undefined
  /** expiresAt is tokenEnd: renewing cannot extend it. */
  tokenBound: boolean
  renewable: boolean
  sessions: number
  retired: boolean
  timer?: LongTimer | undefined
  /** Sessions' onChange listeners: told when the lease is renewed or replaced. */
  listeners: Set<() => void>
}

/** How long close() waits for a credential being issued, so it can revoke that lease too. */
const CLOSE_WAITS_FOR_ISSUE_MS = 5_000
/**
 * How long close() waits for the connections still on a lease to close before revoking it: a
 * revocation that terminates the role's backends (pg_terminate_backend) would otherwise reach
 * backends still reading their Terminate, a lease revoked under a live connection.
 */
const CLOSE_WAITS_FOR_HOLDS_MS = 3_000
const RENEW_AT = 2 / 3 // renew renewable leases at 2/3 of their TTL (Vault Agent's rule)
const REFETCH_AT = 0.85 // fetch the next credential at 85% of a lease that cannot be renewed further
/**
 * A credential this close to its end is not handed to a new session: 2 s, or a quarter of the
 * lease for very short leases (which are renewed long before).
 */
function minRemainingMs(lease: Lease): number {
  return Math.min(2_000, lease.ttlSeconds * 250)
}

/**
 * When a lease of `ttlSeconds` issued or renewed now ends: no later than the token it was made
 * under, when that token cannot be renewed (Vault revokes a token's leases with it).
 */
function endOf(ttlSeconds: number, tokenEnd: number | undefined): { expiresAt: number; tokenBound: boolean } {
  const asked = Date.now() + ttlSeconds * 1000
  // `<=`: a lease issued in the same millisecond as its token's login, with the token's TTL, ends
  // with the token all the same (renewing it cannot extend it).
  return tokenEnd !== undefined && tokenEnd <= asked
    ? { expiresAt: tokenEnd, tokenBound: true }
    : { expiresAt: asked, tokenBound: false }
}

/**
 * Credentials from Vault's database secrets engine (`<mount>/creds/<role>`). One lease serves every
 * session; concurrent demands for a new one make exactly one Vault call. Leases are renewed at 2/3
 * of their TTL; once renewal is capped by max_ttl or refused, the next credential is fetched early
 * enough that no new session meets an expired one. Retired leases are revoked as soon as no session
 * uses them, and all leases at shutdown.
 */
export class DynamicCredentialSource implements CredentialSource {
  private current: Lease | undefined
  private fetching: Promise<Lease> | undefined
  private readonly leases = new Map<string, Lease>()
  private readonly backoff = new RefusalBackoff()
  /** Any session can make the server terminate its siblings (pg_terminate_backend): bounded churn. */
  private readonly distrustBackoff = new RefusalBackoff()
  private readonly log: Logger
  private closed = false
  /** close() waiting for the last hold to go. */
  private unheld: (() => void) | undefined

  constructor(
    private readonly vault: VaultSession,
    private readonly options: DynamicSourceOptions,
  ) {
    this.log = vault.log.child({ source: `${options.mount}/creds/${options.role}` })
    // Leases die with the token that created them: after a new login, move to a lease of the new token.
    vault.auth.onNewToken(() => {
      if (this.current) void this.replace(this.current, true)
    })
  }

  private get path(): string {
    return `${this.options.mount}/creds/${this.options.role}`
  }

  async get(): Promise<DbCredential> {
    // A lease issued now would outlive close()'s revocations.
    if (this.closed)
      throw credentialUnavailable(new Error('the credential source is closed'), this.vault.client.address)
    const current = this.current
    if (current && current.expiresAt - Date.now() > minRemainingMs(current)) return current.credential
    try {
      return (await this.fetch()).credential
    } catch (err) {
      // Vault is down: a credential that has not yet expired keeps serving.
      if (current && current.expiresAt > Date.now()) return current.credential
      throw credentialUnavailable(err, this.vault.client.address)
    }
  }

  invalidate(credential: DbCredential): Promise<boolean> {
    const lease = this.current
    if (!lease || lease.credential !== credential) return Promise.resolve(true) // already replaced: retry with the new one
    if (!this.backoff.allow()) {
      this.log.warn(
        { leaseId: lease.leaseId, retryInMs: this.backoff.remainingMs },
        'upstream keeps refusing fresh credentials; backing off',
      )
      return Promise.resolve(false)
    }
    this.log.warn(
      { leaseId: lease.leaseId, user: credential.username },
      'upstream refused the credential; fetching a new one',
    )
    this.retire(lease)
    return Promise.resolve(true)
  }

  distrust(credential: DbCredential): void {
    const lease = this.current
    if (!lease || lease.credential !== credential) return
    if (!this.distrustBackoff.allow()) {
      // A credential really being revoked is refused at the next login, and invalidate() acts then.
      this.log.warn(
        { leaseId: lease.leaseId, retryInMs: this.distrustBackoff.remainingMs },
        'the server keeps terminating sessions of fresh credentials; keeping this one for now',
      )
      return
    }
    this.log.info(
      { leaseId: lease.leaseId, user: credential.username },
      'the server terminated sessions of this credential (it may be being revoked); fetching a new one',
    )
    this.retire(lease)
  }

  use(credential: DbCredential): CredentialHold {
    const lease = [...this.leases.values()].find((l) => l.credential === credential)
    if (!lease) {
      // Already revoked (a race with shutdown or a refusal): the session should move as soon as it can.
      return { release: () => undefined, endsAt: Date.now(), superseded: true, onChange: () => undefined }
    }
    lease.sessions++
    const mine = new Set<() => void>()
    let released = false
    return {
      release: () => {
        if (released) return
        released = true
        for (const listener of mine) lease.listeners.delete(listener)
        lease.sessions--
        if (lease.retired && lease.sessions === 0) void this.revoke(lease)
        if (this.unheld && !this.held) this.unheld()
      },
      get endsAt() {
        return lease.expiresAt
      },
      get superseded() {
        return lease.retired
      },
      onChange: (listener) => {
        if (released) return
        mine.add(listener)
        lease.listeners.add(listener)
      },
    }
  }

  status(): CredentialStatus {
    const lease = this.current
    if (!lease) return { ready: false, detail: `no lease from Vault ${this.path} yet` }
    const { leaseId, expiresAt, credential } = lease
    const ready = expiresAt > Date.now()
    return {
      ready,
      user: credential.username,
      expiresAt,
      leaseId,
      detail: ready ? `Vault lease ${leaseId}` : `Vault lease ${leaseId} expired and could not be replaced`,
    }
  }

  async close(): Promise<void> {
    this.closed = true
    // A lease being issued right now would outlive the proxy unseen: wait for it (a little: Vault
    // may be hanging), then revoke it with the others.
    if (this.fetching) {
      let timer: NodeJS.Timeout | undefined
      const waited = new Promise<void>((resolve) => (timer = setTimeout(resolve, CLOSE_WAITS_FOR_ISSUE_MS)))
      await Promise.race([this.fetching.catch(() => undefined), waited])
      clearTimeout(timer)
    }
    for (const lease of this.leases.values()) lease.timer?.clear()
    if (this.options.revokeOnShutdown) {
      await this.holdsGone(CLOSE_WAITS_FOR_HOLDS_MS)
      await Promise.all([...this.leases.values()].map((lease) => this.revoke(lease)))
    }
    this.vault.stop()
  }

  /** Whether any connection still holds one of the leases. */
  private get held(): boolean {
    for (const lease of this.leases.values()) if (lease.sessions > 0) return true
    return false
  }

  /** Resolves once no lease is held (connections give their hold back once closed), or after `timeoutMs`. */
  private async holdsGone(timeoutMs: number): Promise<void> {
    if (!this.held) return
    let timer: NodeJS.Timeout | undefined
    await new Promise<void>((resolve) => {
      this.unheld = resolve
      timer = setTimeout(resolve, timeoutMs)
    })
    clearTimeout(timer)
    this.unheld = undefined
  }

  /** Single flight: every caller waiting for a new credential shares one Vault request. */
  private fetch(): Promise<Lease> {
    this.fetching ??= this.issue().finally(() => (this.fetching = undefined))
    return this.fetching
  }

  private async issue(): Promise<Lease> {
    const secret = await this.vault.call(this.path, (client) => client.read(this.path))
    const lease = this.leaseOf(secret)
    if (this.closed) {
      // Issued while closing (a prefetch or a login in flight): close() revokes it with the others.
      this.leases.set(lease.leaseId, lease)
      throw new Error('the credential source is closed')
    }
    const previous = this.current
    this.current = lease
    this.leases.set(lease.leaseId, lease)
    this.log.info(
      {
        leaseId: lease.leaseId,
        user: lease.credential.username,
        ttlSeconds: secret.leaseDurationSeconds,
        renewable: lease.renewable,
      },
      'issued a database credential',
    )
    this.vault.metrics.credentialIssued('vault_dynamic')
    if (previous) {
      this.vault.metrics.credentialSwapped('vault_dynamic')
      this.retire(previous)
    }
    this.schedule(lease, secret.leaseDurationSeconds)
    return lease
  }

  private leaseOf(secret: VaultSecret): Lease {
    const { username, password } = secret.data
    if (typeof username !== 'string' || typeof password !== 'string' || secret.leaseId === '') {
      throw new Error(`Vault's answer for ${this.path} has no username, password and lease`)
    }
    const tokenEnd = this.vault.auth.leasesEndBy
    const { expiresAt, tokenBound } = endOf(secret.leaseDurationSeconds, tokenEnd)
    return {
      credential: { username, password, origin: `Vault lease ${secret.leaseId}`, leaseId: secret.leaseId },
      leaseId: secret.leaseId,
      ttlSeconds: secret.leaseDurationSeconds,
      issuedAt: Date.now(),
      expiresAt,
      tokenEnd,
      tokenBound,
      renewable: secret.renewable,
      sessions: 0,
      retired: false,
      listeners: new Set(),
    }
  }

  /** Plans the lease's next step: a renewal at 2/3 of the TTL, or the next credential at 85%. */
  private schedule(lease: Lease, ttlSeconds: number): void {
    if (this.closed || lease.retired) return
    lease.timer?.clear()
    const ttlMs = Math.min(ttlSeconds * 1000, lease.expiresAt - Date.now())
    const canRenew = lease.renewable && !lease.tokenBound && ttlSeconds >= lease.ttlSeconds
    const swapLeadMs = this.options.swapBeforeEndMs ?? 0
    // Not before half of the lease's first term has passed (short leases would thrash), but right
    // away after a capped renewal that leaves less than the swap lead.
    const firstTermMs = Math.min(lease.ttlSeconds * 1000, lease.expiresAt - lease.issuedAt)
    const earliest = lease.issuedAt + firstTermMs / 2 - Date.now()
    // Renewal at 2/3 of the TTL, but early enough that a renewal capped by max_ttl still leaves the
    // swap lead to fetch the next credential in (short leases: not before half of the term).
    const delay = canRenew
      ? Math.max(ttlMs / 2, Math.min(ttlMs * RENEW_AT, ttlMs - swapLeadMs))
      : Math.max(earliest, Math.min(ttlMs * REFETCH_AT, ttlMs - minRemainingMs(lease) * 1.5, ttlMs - swapLeadMs))
    lease.timer = setLongTimeout(() => void (canRenew ? this.renew(lease) : this.replace(lease)), delay)
  }

  private async renew(lease: Lease): Promise<void> {
    try {
      const secret = await this.vault.call('sys/leases/renew', (client) =>
        client.renewLease(lease.leaseId, lease.ttlSeconds),
      )
      Object.assign(lease, endOf(secret.leaseDurationSeconds, lease.tokenEnd))
      this.vault.metrics.leaseRenewal('renewed')
      const capped = secret.leaseDurationSeconds < lease.ttlSeconds
      this.log.info(
        { leaseId: lease.leaseId, ttlSeconds: secret.leaseDurationSeconds, capped, warnings: secret.warnings },
        'renewed a lease',
      )
      this.schedule(lease, secret.leaseDurationSeconds)
      this.changed(lease)
    } catch (err) {
      this.vault.metrics.leaseRenewal('failed')
      this.log.warn(
        { leaseId: lease.leaseId, err: (err as Error).message },
        'lease renewal refused; fetching the next credential',
      )
      await this.replace(lease)
    }
  }

  /**
   * Fetches the next credential before `lease` ends; retries while the old one still has time.
   * `newToken`: a new Vault token was just obtained, and `lease` dies with the old one.
   */
  private async replace(lease: Lease, newToken = false): Promise<void> {
    if (this.closed || lease !== this.current) return
    // A token that cannot be renewed (a batch token) caps its leases at its own end, and its next
    // login is planned before then: that login brings a lease of the new token (onNewToken).
    // Fetching now would make one more lease, under the old token, that ends just as soon.
    const loginAt = this.vault.auth.plannedLoginAt
    const loginInTime = lease.expiresAt - (lease.tokenBound ? 0 : minRemainingMs(lease))
    if (!newToken && loginAt !== undefined && loginAt > Date.now() && loginAt < loginInTime) {
      lease.timer = setLongTimeout(() => void this.replace(lease), loginAt - Date.now() + 1_000)
      return
    }
    try {
      await this.fetch()
    } catch (err) {
      const remaining = lease.expiresAt - Date.now()
      this.log.error(
        { leaseId: lease.leaseId, remainingMs: remaining, err: (err as Error).message },
        'could not fetch the next credential',
      )
      if (remaining > 0) {
        // A rate-limited Vault said when to come back (Retry-After): not sooner, if the lease allows.
        const asked = err instanceof VaultError ? (err.retryAfterMs ?? 0) : 0
        const delay = Math.max(Math.min(5_000, Math.max(250, remaining / 4)), Math.min(asked, remaining / 2))
        lease.timer = setLongTimeout(() => void this.replace(lease), delay)
      }
    }
  }

  private retire(lease: Lease): void {
    lease.retired = true
    lease.timer?.clear()
    if (this.current === lease) this.current = undefined
    if (lease.sessions === 0) void this.revoke(lease)
    else this.changed(lease)
  }

  /** Tells the sessions on `lease` that it was renewed or replaced. */
  private changed(lease: Lease): void {
    for (const listener of [...lease.listeners]) listener()
  }

  private async revoke(lease: Lease): Promise<void> {
    if (!this.leases.delete(lease.leaseId)) return
    lease.timer?.clear()
    try {
      await this.vault.call('sys/leases/revoke', (client) => client.revokeLease(lease.leaseId))
      this.vault.metrics.leaseRevocation('revoked')
      this.log.info({ leaseId: lease.leaseId }, 'revoked a lease')
    } catch (err) {
      this.vault.metrics.leaseRevocation('failed')
      this.log.warn(
        { leaseId: lease.leaseId, err: (err as Error).message },
        'could not revoke a lease; Vault revokes it at expiry',
      )
    }
  }
}
