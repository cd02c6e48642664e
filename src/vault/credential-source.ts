/** A database login the proxy uses upstream. Never log `password`. */
export interface DbCredential {
  readonly username: string
  readonly password: string
  /** What issued it, for logs and error messages (a file path, a Vault lease id); never secret. */
  readonly origin: string
  /** The Vault lease it came with, for sources that hold leases (for audit lines and /status). */
  readonly leaseId?: string
}

/** Whether a source has a credential at hand now; read by /readyz, /status and the TTL gauge. */
export interface CredentialStatus {
  /** A credential believed valid is at hand, so a session can log in without waiting on Vault. */
  ready: boolean
  /** The login user of that credential (never the password). */
  user?: string
  /** When it stops being valid (epoch ms), for credentials that expire. */
  expiresAt?: number
  leaseId?: string
  /** One line for operators: what the source holds, or why it holds nothing. */
  detail: string
}

/**
 * A session's claim on the credential it logged in with. Through it the source tells the session
 * when to move to a fresh credential (see docs/rotation.md): once a newer one replaced it, and
 * before it stops working upstream.
 */
export interface CredentialHold {
  release(): void
  /** When the credential stops working upstream (epoch ms; a Vault lease's expiry), or undefined if never. */
  readonly endsAt: number | undefined
  /** A newer credential replaced this one: sessions on it should move at their next idle point. */
  readonly superseded: boolean
  /** Called whenever `superseded` or `endsAt` changes; no-op after release. */
  onChange(listener: () => void): void
}

/** For credentials that never end and are never superseded under a running session. */
export function permanentHold(): CredentialHold {
  return { release: () => undefined, endsAt: undefined, superseded: false, onChange: () => undefined }
}

/**
 * Where upstream credentials come from. The proxy asks for one per upstream login; a source is
 * expected to cache, so every session of a route shares one credential.
 */
export interface CredentialSource {
  /** A credential believed valid now. Rejects with a ProxyError the client can be shown. */
  get(): Promise<DbCredential>
  /**
   * The upstream refused `credential` at login: drop it, so the next get() fetches a fresh one.
   * Returns true when a retry may succeed (something was refreshed), false when it cannot.
   */
  invalidate(credential: DbCredential): Promise<boolean>
  /**
   * The server terminated sessions running on `credential` (FATAL 57P01). Revocation statements do
   * that before they drop the login user, in a transaction that may not have committed yet, so a
   * login made now could still succeed and leave a session whose user is then dropped. Sources
   * whose credentials can be revoked stop handing this one out.
   */
  distrust?(credential: DbCredential): void
  /**
   * A session logged in with `credential` and runs on it until it releases the hold; sources that
   * hold leases revoke the ones no session uses any more, and say when sessions should move on.
   */
  use(credential: DbCredential): CredentialHold
  /** Cheap and synchronous: called on every health probe and scrape. */
  status(): CredentialStatus
  /** Stops timers; sources that hold leases revoke them (unless configured not to). */
  close(): Promise<void>
}
