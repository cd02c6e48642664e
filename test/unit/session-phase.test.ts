import { once } from 'node:events'
import { createServer, connect, type Socket } from 'node:net'
import { Writable } from 'node:stream'
import pino from 'pino'
import t, { type Test } from 'tap'
import { CancelRegistry } from '../../src/proxy/cancel-registry.js'
import { ClientSession, type SessionContext } from '../../src/proxy/client-session.js'
import { ProxyError } from '../../src/proxy/proxy-error.js'
import {
  ImpossibleTransition,
  SESSION_EVENTS,
  SessionPhase,
  TRANSITIONS,
  isMoving,
  nextPhases,
  transition,
  type SessionEventKind,
} from '../../src/proxy/session-phase.js'

const PHASES = Object.values(SessionPhase)

void t.test('every (phase, event) pair the table does not list is reported as impossible', async (t) => {
  let impossible = 0
  for (const phase of PHASES) {
    for (const event of SESSION_EVENTS) {
      if (nextPhases(phase, event).length > 0) continue
      impossible++
      t.throws(() => transition(phase, event), new ImpossibleTransition(phase, event), `${event} in ${phase}`)
    }
  }
  // The table is not all-permissive: most pairs are bugs.
  t.ok(impossible > (PHASES.length * SESSION_EVENTS.length) / 3, `${impossible} impossible pairs`)
})

void t.test('the legal pairs lead where the table says, and nowhere else', async (t) => {
  for (const phase of PHASES) {
    for (const [event, targets] of Object.entries(TRANSITIONS[phase]) as Array<[SessionEventKind, SessionPhase[]]>) {
      t.ok(targets.length > 0, `${event} in ${phase} leads somewhere`)
      t.equal(transition(phase, event), targets[0], `${event} in ${phase}: the usual target`)
      for (const to of PHASES) {
        if (targets.includes(to)) t.equal(transition(phase, event, to), to, `${event}: ${phase} -> ${to}`)
        else t.throws(() => transition(phase, event, to), ImpossibleTransition, `${event}: not ${phase} -> ${to}`)
      }
    }
  }
})

void t.test('the lifecycle the sessions go through', async (t) => {
  const walk = (steps: Array<[SessionEventKind, SessionPhase?]>): SessionPhase =>
    steps.reduce<SessionPhase>((phase, [event, to]) => transition(phase, event, to), SessionPhase.Handshake)
  t.equal(walk([['startup_read'], ['linked'], ['idle'], ['ended']]), SessionPhase.Closed)
  // A planned swap: probe, move, back to relaying.
  t.equal(
    walk([['startup_read'], ['linked'], ['probe_started'], ['move_started'], ['move_ended', 'relaying']]),
    SessionPhase.Relaying,
  )
  // Parked by the server's idle_session_timeout, reconnected when the client speaks.
  t.equal(
    walk([['startup_read'], ['linked'], ['upstream_lost'], ['parked'], ['move_started'], ['move_ended', 'relaying']]),
    SessionPhase.Relaying,
  )
  // Shutdown during a probe: the probe ends first, then the session drains.
  t.equal(
    walk([['startup_read'], ['linked'], ['probe_started'], ['drain'], ['move_ended', 'draining']]),
    SessionPhase.Draining,
  )
  // Shutdown during the login: the client is refused, never greeted.
  t.equal(walk([['startup_read'], ['drain']]), SessionPhase.Draining)
  t.throws(() => transition(SessionPhase.Draining, 'linked'), ImpossibleTransition)
  t.throws(() => transition(SessionPhase.Closed, 'ended'), ImpossibleTransition)
  t.throws(() => transition(SessionPhase.Handshake, 'upstream_lost'), ImpossibleTransition)
  t.ok(isMoving(SessionPhase.Parked))
  t.notOk(isMoving(SessionPhase.Draining))
})

/** A session on a real socket pair, with its log lines and what its client received. */
async function sessionOnSocket(t: Test): Promise<{
  session: ClientSession
  client: Socket
  received: () => Buffer
  logs: Array<Record<string, unknown>>
}> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => server.close())
  const address = server.address()
  if (!address || typeof address === 'string') throw new Error('no address')
  const client = connect(address.port, '127.0.0.1')
  const [accepted] = (await once(server, 'connection')) as [Socket]
  t.teardown(() => {
    client.destroy()
    accepted.destroy()
  })
  const chunks: Buffer[] = []
  client.on('data', (chunk: Buffer) => chunks.push(chunk))
  const logs: Array<Record<string, unknown>> = []
  const logger = pino(
    { level: 'debug' },
    new Writable({
      write(chunk: Buffer, _e, done) {
        logs.push(JSON.parse(chunk.toString()) as Record<string, unknown>)
        done()
      },
    }),
  )
  const refused: string[] = []
  const context: SessionContext = {
    startupTimeoutMs: 10_000,
    route: () => new ProxyError('no_route', { sqlState: '28000', message: 'no route' }),
    cancels: new CancelRegistry(),
    metrics: {
      sessionStarted: () => undefined,
      sessionEnded: () => undefined,
      sessionRefused: (reason) => refused.push(reason),
      cancelRequest: () => undefined,
      sessionMoved: () => undefined,
    },
    logger,
  }
  return { session: new ClientSession(accepted, context, 7), client, received: () => Buffer.concat(chunks), logs }
}

void t.test('an impossible event ends that session alone with XX000 and an error in the log', async (t) => {
  const { session, client, received, logs } = await sessionOnSocket(t)
  t.equal(session.phase, SessionPhase.Handshake)
  // The dispatcher is private: reach it as a bug in the proxy would.
  const dispatch = (session as unknown as { dispatch(event: { kind: SessionEventKind }): unknown }).dispatch.bind(
    session,
  )
  t.doesNotThrow(() => dispatch({ kind: 'linked' }), 'reported, not thrown')
  await once(client, 'end')
  const reply = received()
  t.equal(String.fromCharCode(reply[0] ?? 0), 'E', 'an ErrorResponse')
  t.match(reply.toString('latin1'), /CXX000\0/, 'with SQLSTATE XX000')
  t.match(reply.toString('latin1'), /internal error \(session 7\)/)
  t.equal(session.phase, SessionPhase.Handshake, 'the impossible transition did not happen')
  const error = logs.find((line) => line.level === 50 && line.msg === 'internal error in session')
  t.ok(error, 'logged as an error')
  t.match(JSON.stringify(error?.err), /session event linked cannot happen in phase handshake/)
})

void t.test('drain and stop go through the dispatcher', async (t) => {
  const { session, client } = await sessionOnSocket(t)
  session.drain()
  t.equal(session.phase, SessionPhase.Draining)
  t.notOk(session.isRelaying)
  session.stop()
  await once(client, 'close')
  t.equal(session.phase, SessionPhase.Draining, 'stop ends the socket; the phase closes when the session ends')
})
