/**
 * A client session's one explicit phase, and which events may move it where.
 *
 * Modelled on pgbouncer's SocketState (include/bouncer.h: one state per client or server object,
 * changed in one place) and its client_proto/server_proto dispatchers (src/client.c, src/server.c:
 * switch on the event, then on the state). ClientSession.dispatch is the one place a session's
 * phase changes; a pair this table does not list is a bug in the proxy, which ends that session
 * alone with XX000 (src/proxy/session-boundary.ts).
 */
export const SessionPhase = {
  /** Reading the startup packet (or a CancelRequest). */
  Handshake: 'handshake',
  /** Getting a server connection: route, pool, wait for a slot, login, link. */
  Linking: 'linking',
  /** Relaying between client and server connection. */
  Relaying: 'relaying',
  /** The relay is suspended at an idle point while the proxy probes the session's state. */
  Probing: 'probing',
  /** Switching to another server connection: a planned swap or a reconnect after a loss. */
  Moving: 'moving',
  /**
   * The server closed an idle session (its idle_session_timeout): no server connection until the
   * client next speaks, then a reconnect (Moving). As idle as a session gets.
   */
  Parked: 'parked',
  /** Shutdown began: the session ends at its next idle point (or is refused, before the relay). */
  Draining: 'draining',
  Closed: 'closed',
} as const
export type SessionPhase = (typeof SessionPhase)[keyof typeof SessionPhase]

/** What can happen to a session; ClientSession.dispatch switches on these, then on the phase. */
export const SESSION_EVENTS = [
  /** The startup packet was read and a login begins. */
  'startup_read',
  /** A server connection is ready and the client is greeted: the relay starts. */
  'linked',
  /** The client sent bytes. */
  'client_message',
  /** The client sent Terminate where the relay could hand the server connection back: keep it for the pool? */
  'client_terminate',
  /** The session is waiting for the client's next command outside a transaction. */
  'idle',
  /** The server connection is going away (a FATAL or WARNING of class 57, or its socket closed): reconnect? */
  'upstream_lost',
  /** idle_client_timeout_ms ran out. */
  'idle_timeout',
  /** The session's credential was superseded, or its end moved: plan a move. */
  'credential_changed',
  /** The session's credential ends within a second and the session is still on it. */
  'credential_ending',
  /** The move plan suspended the relay to probe the session's state. */
  'probe_started',
  /** The move plan switches the session to another server connection (swap, or reconnect). */
  'move_started',
  /** The server closed an idle session; the move plan waits for the client before reconnecting. */
  'parked',
  /** The probe or move is over (done, blocked or failed): the relay runs again, or the session ends. */
  'move_ended',
  /** Shutdown began. */
  'drain',
  /** Shutdown's grace period is over: end now. */
  'stop',
  /** The session is over (relay ended, refused, or a CancelRequest answered). */
  'ended',
] as const
export type SessionEventKind = (typeof SESSION_EVENTS)[number]

const { Handshake, Linking, Relaying, Probing, Moving, Parked, Draining, Closed } = SessionPhase

type Table = Readonly<Record<SessionPhase, Partial<Readonly<Record<SessionEventKind, readonly SessionPhase[]>>>>>

/**
 * For each phase, the events that may happen in it and the phases each may lead to (the
 * dispatcher picks one; the first is the usual one). Anything missing is impossible.
 */
export const TRANSITIONS: Table = {
  handshake: {
    startup_read: [Linking],
    drain: [Draining],
    stop: [Handshake],
    ended: [Closed],
  },
  linking: {
    linked: [Relaying],
    drain: [Draining],
    stop: [Linking],
    ended: [Closed],
  },
  relaying: {
    client_message: [Relaying],
    client_terminate: [Relaying],
    idle: [Relaying],
    // Reconnect or park: the move plan's move_started or parked does the transition.
    upstream_lost: [Relaying],
    idle_timeout: [Relaying],
    credential_changed: [Relaying],
    credential_ending: [Relaying],
    probe_started: [Probing],
    move_started: [Moving],
    parked: [Parked],
    drain: [Draining],
    stop: [Relaying],
    ended: [Closed],
  },
  probing: {
    // The relay is suspended, the client paused; stray events change nothing.
    client_message: [Probing],
    client_terminate: [Probing],
    idle: [Probing],
    upstream_lost: [Probing],
    idle_timeout: [Probing],
    // A move under way settles the credential's end: it re-arms the check afterwards.
    credential_changed: [Probing],
    credential_ending: [Probing],
    // A swap's probe found the session movable.
    move_started: [Moving],
    move_ended: [Relaying, Draining],
    // Shutdown waits for the probe to end (move_ended then leads to draining).
    drain: [Probing],
    stop: [Probing],
    ended: [Closed],
  },
  moving: {
    client_message: [Moving],
    client_terminate: [Moving],
    idle: [Moving],
    upstream_lost: [Moving],
    idle_timeout: [Moving],
    credential_changed: [Moving],
    credential_ending: [Moving],
    move_ended: [Relaying, Draining],
    drain: [Moving],
    stop: [Moving],
    ended: [Closed],
  },
  parked: {
    // The client spoke: reconnect now.
    move_started: [Moving],
    client_message: [Parked],
    upstream_lost: [Parked],
    idle_timeout: [Parked],
    credential_changed: [Parked],
    credential_ending: [Parked],
    drain: [Parked],
    stop: [Parked],
    ended: [Closed],
  },
  draining: {
    startup_read: [Draining],
    client_message: [Draining],
    client_terminate: [Draining],
    idle: [Draining],
    upstream_lost: [Draining],
    idle_timeout: [Draining],
    credential_changed: [Draining],
    credential_ending: [Draining],
    probe_started: [Probing],
    move_started: [Moving],
    parked: [Parked],
    drain: [Draining],
    stop: [Draining],
    ended: [Closed],
  },
  closed: {
    // Shutdown reaches every session it knows of, ended or not.
    drain: [Closed],
    // A connection handed to the pool keeps its credential, whose news may still reach the session.
    credential_changed: [Closed],
    stop: [Closed],
  },
}

/** The phases `event` may lead to from `phase`; empty when the pair is impossible. */
export function nextPhases(phase: SessionPhase, event: SessionEventKind): readonly SessionPhase[] {
  return TRANSITIONS[phase][event] ?? []
}

/** A probe or a move holds the session's server connection (or it has none, parked). */
export function isMoving(phase: SessionPhase): boolean {
  return phase === Probing || phase === Moving || phase === Parked
}

/** An (event, phase) pair the transition table does not allow: a bug in the proxy. */
export class ImpossibleTransition extends Error {
  constructor(
    readonly phase: SessionPhase,
    readonly event: SessionEventKind,
    readonly to?: SessionPhase,
  ) {
    super(
      to === undefined
        ? `session event ${event} cannot happen in phase ${phase}`
        : `session event ${event} cannot lead from phase ${phase} to ${to}`,
    )
    this.name = 'ImpossibleTransition'
  }
}

/** The phase `event` leads to from `phase`: `to` if the table allows it, else its first; throws on an impossible pair. */
export function transition(phase: SessionPhase, event: SessionEventKind, to?: SessionPhase): SessionPhase {
  const allowed = nextPhases(phase, event)
  if (allowed.length === 0) throw new ImpossibleTransition(phase, event)
  if (to === undefined) return allowed[0] as SessionPhase
  if (!allowed.includes(to)) throw new ImpossibleTransition(phase, event, to)
  return to
}
