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
   * A session logged in with `credential` and runs on it until the returned function is called;
   * sources that hold leases revoke the ones no session uses any more.
   */
  use(credential: DbCredential): () => void
  /** Cheap and synchronous: called on every health probe and scrape. */
  status(): CredentialStatus
  /** Stops timers; sources that hold leases revoke them (unless configured not to). */
  close(): Promise<void>
}
