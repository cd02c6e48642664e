import type {
  CredentialHold,
  CredentialSource,
  CredentialStatus,
  DbCredential,
} from '../../src/vault/credential-source.js'

// A credential source a test drives by hand: it counts the holds sessions and the pool take and
// give back, and `rotate()` supersedes the credential in use, as a Vault source does when a newer
// lease replaces the one sessions run on (src/vault/dynamic-source.ts; docs/rotation.md).

class CountedHold implements CredentialHold {
  endsAt: number | undefined
  superseded = false
  released = false
  private readonly listeners: Array<() => void> = []

  constructor(
    readonly credential: DbCredential,
    private readonly onRelease: (hold: CountedHold) => void,
  ) {}

  release(): void {
    // Idempotent, as the real sources' holds are.
    if (this.released) return
    this.released = true
    this.onRelease(this)
  }

  onChange(listener: () => void): void {
    if (!this.released) this.listeners.push(listener)
  }

  change(superseded: boolean, endsAt: number | undefined): void {
    if (this.released) return
    this.superseded = superseded
    this.endsAt = endsAt
    for (const listener of [...this.listeners]) listener()
  }
}

export class CountingCredentialSource implements CredentialSource {
  private version = 1
  private current: DbCredential = CountingCredentialSource.credential(1)
  private readonly live = new Set<CountedHold>()
  /** Credentials the proxy said were terminated upstream (FATAL 57P01), in order. */
  readonly distrusted: DbCredential[] = []
  /** Holds ever taken. */
  taken = 0

  private static credential(version: number): DbCredential {
    return { username: `app_v${version}`, password: `secret-${version}`, origin: `counting source v${version}` }
  }

  /** Holds not yet released. */
  get liveHolds(): number {
    return this.live.size
  }

  /** Live holds on the credential whose user is `username`. */
  holdsOn(username: string): number {
    return [...this.live].filter((h) => h.credential.username === username).length
  }

  get currentUser(): string {
    return this.current.username
  }

  /**
   * A new credential replaces the current one; sessions on older ones are told to move. With
   * `oldEndsInMs`, the old credential also ends that soon, which makes them move at once (the
   * mover spreads moves over at most a quarter of the time left).
   */
  rotate(oldEndsInMs?: number): DbCredential {
    this.current = CountingCredentialSource.credential(++this.version)
    const endsAt = oldEndsInMs === undefined ? undefined : Date.now() + oldEndsInMs
    for (const hold of this.live) if (hold.credential !== this.current) hold.change(true, endsAt)
    return this.current
  }

  /**
   * The current credential ends in `inMs` with no newer one yet, as a lease at its max_ttl does
   * before the source's next lease is issued: its live holds are told so, and not superseded.
   */
  endsIn(inMs: number): void {
    const endsAt = Date.now() + inMs
    for (const hold of this.live) if (hold.credential === this.current) hold.change(false, endsAt)
  }

  get(): Promise<DbCredential> {
    return Promise.resolve(this.current)
  }

  invalidate(): Promise<boolean> {
    return Promise.resolve(false)
  }

  distrust(credential: DbCredential): void {
    this.distrusted.push(credential)
  }

  use(credential: DbCredential): CredentialHold {
    this.taken++
    const hold = new CountedHold(credential, (h) => this.live.delete(h))
    if (credential !== this.current) hold.superseded = true
    this.live.add(hold)
    return hold
  }

  status(): CredentialStatus {
    return { ready: true, user: this.current.username, detail: `${this.live.size} holds` }
  }

  close(): Promise<void> {
    return Promise.resolve()
  }
}
