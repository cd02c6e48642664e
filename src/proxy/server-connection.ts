import type { CredentialHold, DbCredential } from '../vault/credential-source.js'
import type { UpstreamSession } from './upstream-connector.js'

/**
 * What a server connection is doing. One state per connection, changed only through `enter`, as
 * pgbouncer keeps one state per server socket (`SocketState`, SV_IDLE, SV_ACTIVE..., in
 * include/bouncer.h):
 *
 * - `opened`: logged in by the pool ahead of any client (pre-warming), not placed yet;
 * - `linked`: serving one client session (the relay reads and writes it);
 * - `resetting`: its client ended cleanly; the pool's reset query runs;
 * - `idle`: reset and kept in the pool for the next client of its key;
 * - `closing`: Terminate sent or the socket gone; never used again.
 */
export type ServerState = 'opened' | 'linked' | 'resetting' | 'idle' | 'closing'

const NEXT: Readonly<Record<ServerState, readonly ServerState[]>> = {
  opened: ['idle', 'closing'],
  linked: ['resetting', 'closing'],
  resetting: ['idle', 'closing'],
  idle: ['linked', 'closing'],
  closing: [],
}

/** A state change the table above does not allow: a bug in the proxy, never the peer's doing. */
export class ImpossibleServerTransition extends Error {
  constructor(from: ServerState, to: ServerState, pid: number) {
    super(`server connection (pid ${pid}): no transition from ${from} to ${to}`)
    this.name = 'ImpossibleServerTransition'
  }
}

/**
 * One logged-in upstream connection: its socket and what the server told it at login (backend pid
 * and cancel key, ParameterStatus set), the credential it logged in with and the hold that keeps
 * that credential's lease from being revoked under it, the pool key of its startup parameters, and
 * its state. A client session links to one, a move relinks it to another, and the pool keeps it
 * between clients (src/proxy/server-pool.ts).
 */
export class ServerConnection {
  private current: ServerState
  /**
   * When the server last showed that the login role exists: at a client's login, and by the check
   * after each reset. Never for a pre-warmed connection: logged in for nobody, it may have logged
   * in between a revocation's pg_terminate_backend and its DROP ROLE, so its first link checks.
   */
  checkedAt: number
  /** When it first went idle in the pool (or was pre-warmed), for pool.server_lifetime_ms. */
  firstPooledAt: number | undefined
  /** When it last went idle in the pool, for pool.idle_timeout_ms. */
  idleSince = 0

  constructor(
    readonly session: UpstreamSession,
    readonly credential: DbCredential,
    /** Replaced when the pool takes the connection back: the pool then holds the credential, not the client. */
    public hold: CredentialHold,
    /** Which clients it may serve (ServerPool.key): the database and startup parameters it logged in with. */
    readonly key: string,
    /** `linked` for a client's own login, `opened` for the pool's pre-warming. */
    initial: 'linked' | 'opened',
  ) {
    this.current = initial
    this.checkedAt = initial === 'linked' ? Date.now() : 0
    // However it ends (Terminate, the server, a hostile peer), a closed socket is never used again.
    session.socket.once('close', () => {
      this.current = 'closing'
    })
  }

  get state(): ServerState {
    return this.current
  }

  get processId(): number {
    return this.session.processId
  }

  /** Moves to `to`; closing is final, and entering it again is a no-op (a close may be noticed twice). */
  enter(to: ServerState): void {
    if (to === 'closing' && this.current === 'closing') return
    if (!NEXT[this.current].includes(to)) throw new ImpossibleServerTransition(this.current, to, this.processId)
    this.current = to
  }
}
