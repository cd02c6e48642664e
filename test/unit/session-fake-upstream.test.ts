import { once } from 'node:events'
import net from 'node:net'
import pg from 'pg'
import t, { type Test } from 'tap'
import type { ServerPool } from '../../src/proxy/server-pool.js'
import { encodeReadyForQuery } from '../../src/pgwire/backend-messages.js'
import {
  bindComplete,
  closeComplete,
  commandComplete,
  dataRow,
  errorResponse,
  parseComplete,
  rowDescription,
} from '../support/backend-replies.js'
import { CountingCredentialSource } from '../support/counting-credentials.js'
import {
  cstrings,
  isProbe,
  startFakeUpstream,
  type FakeConnection,
  type FakeUpstream,
} from '../support/fake-upstream.js'
import { sample } from '../support/ops-probe.js'
import { BufferList, startupMessage } from '../support/wire-builder.js'
import { startProxyWith, type RunningProxy } from '../support/proxy-harness.js'

// The session, relay, mover and pool against a scripted upstream (test/support/fake-upstream.ts):
// faults a real PostgreSQL cannot be made to produce on cue (a connection lost in the middle of
// the state probe, a malformed message, a server that talks while its connection is pooled),
// each in a fraction of a second. Clients are node-postgres; the proxy is built from a real
// configuration, on a credential source the test drives (test/support/counting-credentials.ts).

interface Setup {
  upstream: FakeUpstream
  source: CountingCredentialSource
  proxy: RunningProxy
  pool: ServerPool
}

async function setup(t: Test, overrides: Record<string, unknown> = {}): Promise<Setup> {
  const upstream = await startFakeUpstream(t)
  const source = new CountingCredentialSource()
  const proxy = await startProxyWith(
    t,
    {
      listen: '127.0.0.1:0',
      owner_role: 'app_owner',
      // Never built: `credentials` below replaces it.
      credentials: { static: { username: 'unused', password: 'unused' } },
      upstream: { host: '127.0.0.1', port: upstream.port, sslmode: 'disable' },
      ...overrides,
      // The fake scripts connections in order: no background logins ahead of clients (pool.min_idle).
      pool: { min_idle: 0, ...(overrides.pool as Record<string, unknown> | undefined) },
    },
    { credentials: source, database: 'app', prefetchCredentials: false },
  )
  const pool = proxy.server.currentRoutes[0]?.pool
  if (!pool) throw new Error('the route has no pool')
  return { upstream, source, proxy, pool }
}

/** The upstream backend pid serving `client` (the fake answers with its connection's pid). */
async function pid(client: pg.Client): Promise<number> {
  const result = await client.query<{ pg_backend_pid: string }>('select pg_backend_pid()')
  return Number(result.rows[0]?.pg_backend_pid)
}

async function sessionUser(client: pg.Client): Promise<string | undefined> {
  return (await client.query<{ session_user: string }>('select session_user')).rows[0]?.session_user
}

function connectionOf(upstream: FakeUpstream, processId: number): FakeConnection {
  const found = upstream.connections.find((c) => c.processId === processId)
  if (!found) throw new Error(`no fake connection with pid ${processId}`)
  return found
}

/** Waits (bounded) for something the proxy does after the client got its answer; fails the test if it never happens. */
async function until(t: Test, what: string, check: () => boolean): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (check()) return
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
  t.fail(`never happened: ${what}`)
}

/** One client queries and leaves cleanly; resolves with its upstream connection once the pool keeps it. */
async function pooledByOneClient(t: Test, { upstream, proxy, pool }: Setup): Promise<FakeConnection> {
  const a = await watchedClient(proxy)
  const connection = connectionOf(upstream, await pid(a.client))
  await a.client.end()
  await until(t, 'the connection pooled', () => pool.idleConnections === 1)
  return connection
}

/** What node-postgres reports of an ErrorResponse (pg's DatabaseError). */
type ServerError = Error & { code?: string; detail?: string; severity?: string }

interface WatchedClient {
  client: pg.Client
  errors: ServerError[]
  notices: Array<string | undefined>
  /** The connection ended (the proxy closed it, or the client did). */
  ended: boolean
}

/**
 * A client whose errors and notices are recorded instead of thrown. A proxy that never answers
 * fails the query after a few seconds instead of hanging the test (a bound, not a measurement).
 */
async function watchedClient(proxy: RunningProxy): Promise<WatchedClient> {
  const client = new pg.Client({
    host: proxy.host,
    port: proxy.port,
    user: 'app',
    database: 'app',
    query_timeout: 5_000,
    connectionTimeoutMillis: 5_000,
  })
  const watched: WatchedClient = { client, errors: [], notices: [], ended: false }
  client.on('error', (err) => watched.errors.push(err))
  client.on('notice', (notice) => watched.notices.push(notice.message))
  client.on('end', () => (watched.ended = true))
  await client.connect()
  return watched
}

const ADMIN_SHUTDOWN = 'terminating connection due to administrator command'

void t.test('FATAL 57P01 while idle: the session reconnects unseen, other sessions go on', async (t) => {
  const { upstream, source, proxy } = await setup(t)
  const a = await watchedClient(proxy)
  const b = await watchedClient(proxy)
  const pidA = await pid(a.client)
  const pidB = await pid(b.client)
  connectionOf(upstream, pidA).fatal('57P01', ADMIN_SHUTDOWN)
  // The proxy logs in again at once (docs/rotation.md, "Unplanned loss"): a third connection.
  await until(t, 'the reconnect login', () => upstream.connections.length === 3)
  const again = await pid(a.client)
  t.not(again, pidA, 'the session runs on a new upstream connection')
  t.equal(again, upstream.connections[2]?.processId)
  t.same(a.errors, [], 'the client never saw the FATAL')
  t.equal(await pid(b.client), pidB, 'the other session kept its connection')
  t.same(b.errors, [])
  t.same(
    source.distrusted.map((c) => c.username),
    ['app_v1'],
    'a 57P01 may be a revocation under way: the credential is distrusted',
  )
  t.equal(source.liveHolds, 2, 'one hold per session: the lost connection gave its hold back')
})

void t.test('FATAL 57P01 inside a transaction: the client gets it, with why it was not reconnected', async (t) => {
  const { upstream, proxy } = await setup(t)
  const a = await watchedClient(proxy)
  const b = await watchedClient(proxy)
  const pidA = await pid(a.client)
  await a.client.query('begin')
  connectionOf(upstream, pidA).fatal('57P01', ADMIN_SHUTDOWN)
  await until(t, 'the client connection ended', () => a.ended)
  const fatal = a.errors[0]
  t.equal(fatal?.code, '57P01', "the server's SQLSTATE")
  t.equal(fatal?.message, ADMIN_SHUTDOWN, "the server's words")
  t.match(fatal?.detail, /inside a transaction/, 'and why the proxy did not reconnect')
  t.equal(upstream.connections.length, 2, 'no reconnect was tried: statements are never replayed')
  t.equal(await sessionUser(b.client), 'app_v1', 'the other session goes on')
  const c = await watchedClient(proxy)
  t.ok((await pid(c.client)) > 0, 'new clients are served')
  t.match(
    proxy.logs.find((l) => l.msg === 'session ended' && l.reason === 'upstream_fatal'),
    { detail: /^57P01/ },
    'the audit line says the upstream ended it',
  )
})

void t.test('the upstream lost with a request in flight: the client gets an error, never a hang', async (t) => {
  const cuts = {
    'between messages': (c: FakeConnection) => {
      c.send(rowDescription(['n']))
      c.drop()
    },
    'half-way through a message': (c: FakeConnection) => {
      c.send(rowDescription(['n']), dataRow(['12345']).subarray(0, 8))
      c.drop()
    },
  }
  const { upstream, proxy } = await setup(t)
  for (const [where, cut] of Object.entries(cuts)) {
    await t.test(where, async (t) => {
      upstream.script = (message, connection) => {
        if (message.type !== 'Q' || cstrings(message.body)[0] !== 'select 8') return
        cut(connection)
        return true
      }
      const a = await watchedClient(proxy)
      const before = upstream.connections.length
      const err = (await a.client.query('select 8').then(
        () => undefined,
        (e: unknown) => e,
      )) as ServerError | undefined
      if (where === 'between messages') {
        t.equal(err?.code, '08006', 'FATAL connection_failure')
        t.match(err?.detail, /request in flight/, 'with why the session was not reconnected')
      } else {
        // A FATAL spliced into the half-sent DataRow would corrupt it: the client's socket just ends.
        t.match(err?.message, /Connection terminated unexpectedly/)
      }
      t.equal(upstream.connections.length, before, 'no reconnect: nothing in flight is ever replayed')
      const b = await watchedClient(proxy)
      t.ok((await pid(b.client)) > 0, 'the proxy serves new clients')
      await b.client.end()
    })
  }
})

void t.test('the upstream lost under the probe of a session that just changed its state', async (t) => {
  const losses = {
    dropped: { cut: (c: FakeConnection) => c.drop(), message: /lost the connection to the upstream server/ },
    // A bad length where the row should be: the connection's framing is lost, so it is as good as gone.
    'a malformed answer': {
      cut: (c: FakeConnection) => c.send(parseComplete(), bindComplete(), Buffer.from([0x44, 0, 0, 0, 2])),
      message: /invalid message length 2/,
    },
  }
  for (const [how, loss] of Object.entries(losses)) {
    await t.test(how, async (t) => {
      const { upstream, proxy } = await setup(t)
      const a = await watchedClient(proxy)
      const first = connectionOf(upstream, await pid(a.client))
      upstream.script = (message, connection) => {
        if (connection !== first || !isProbe(message)) return
        loss.cut(connection)
        return true
      }
      // A SET marks the state dirty: at the next idle point the proxy probes it, and the probe is lost.
      await a.client.query('set work_mem = 12345')
      await until(t, 'the client connection ended', () => a.ended)
      t.equal(first.probes, 1)
      const fatal = a.errors[0]
      t.equal(fatal?.code, '08006', 'a clear FATAL, not a hang')
      t.match(fatal?.message, loss.message)
      t.match(fatal?.detail, /just changed its state/, 'with why it could not be rebuilt elsewhere')
      // node-postgres adds its own note when the socket then ends; nothing else may come.
      const rest = a.errors.slice(1).filter((e) => e.message !== 'Connection terminated unexpectedly')
      t.same(rest, [], 'and nothing else')
      t.equal(upstream.connections.length, 1, 'no reconnect onto a state it could not rebuild')
      await until(t, 'the connection closed', () => first.closed)
    })
  }
})

void t.test('the upstream lost in the middle of the state probe during a move', async (t) => {
  const { upstream, source, proxy } = await setup(t)
  const a = await watchedClient(proxy)
  const b = await watchedClient(proxy)
  const first = connectionOf(upstream, await pid(a.client))
  const other = connectionOf(upstream, await pid(b.client))
  let during: Promise<string | undefined> | undefined
  upstream.script = async (message, connection) => {
    if (connection !== first || !isProbe(message)) return
    // The client speaks while its session is suspended for the probe; then the connection breaks.
    during = sessionUser(a.client)
    await new Promise((resolve) => setImmediate(resolve))
    connection.drop()
    return true
  }
  // Superseded, and ending soon enough that both sessions move at once.
  source.rotate(200)
  await until(t, 'both old connections closed', () => first.closed && other.closed)
  await until(t, 'the client sent its query', () => during !== undefined)
  t.equal(await during, 'app_v2', 'the query sent during the probe ran once, on a connection with the new credential')
  t.equal(await sessionUser(a.client), 'app_v2', 'and the session goes on')
  t.same(a.errors, [], 'no error reached the client')
  t.equal(await sessionUser(b.client), 'app_v2', 'the other session moved normally')
  t.same(b.errors, [])
  t.equal(first.probes, 1)
  const metrics = await proxy.server.metrics.registry.metrics()
  const moves = (kind: string, outcome: string): number | undefined =>
    sample(metrics, 'pg_vault_proxy_session_moves_total', { kind, outcome })
  t.equal(moves('swap', 'moved'), 1, 'one session moved as planned')
  t.equal(moves('reconnect', 'moved'), 1, 'the other was reconnected after its upstream was lost under the probe')
  const prepared = upstream.connections.filter((c) => c.user === 'app_v2')
  t.equal(prepared.length, 3, "two logins prepared for the moves, one for the lost session's reconnect")
  t.equal(prepared.filter((c) => !c.closed).length, 2, 'the login prepared for the lost move was closed')
  t.equal(source.holdsOn('app_v1'), 0, 'no hold left on the superseded credential')
  t.equal(source.liveHolds, 2)
})

/** The replay of work_mem = 12345 (SessionState.replay; the literals may come as E'...'). */
const REPLAYED_WORK_MEM = /^select pg_catalog\.set_config\(E?'work_mem', E?'12345', false\)$/

void t.test("a move replays the session's settings on the new connection", async (t) => {
  const { upstream, source, proxy } = await setup(t)
  const a = await watchedClient(proxy)
  const first = connectionOf(upstream, await pid(a.client))
  first.state = { settings: [['work_mem', '12345']] }
  source.rotate(200)
  await until(t, 'the old connection closed', () => first.closed)
  const second = upstream.connections[1]
  t.equal(second?.user, 'app_v2')
  t.equal(await sessionUser(a.client), 'app_v2')
  const queries = second?.messages.filter((m) => m.type === 'Q').map((m) => cstrings(m.body)[0])
  t.match(queries?.[0], REPLAYED_WORK_MEM, 'the probed setting was replayed first')
  t.equal(queries?.[1], 'select session_user', "then the client's query")
  t.same(a.errors, [])
})

void t.test('the new connection lost during the replay: the session stays where it was', async (t) => {
  const { upstream, source, proxy } = await setup(t)
  const a = await watchedClient(proxy)
  const first = connectionOf(upstream, await pid(a.client))
  first.state = { settings: [['work_mem', '12345']] }
  upstream.script = (message, connection) => {
    if (message.type !== 'Q' || !REPLAYED_WORK_MEM.test(cstrings(message.body)[0] ?? '')) return
    connection.drop()
    return true
  }
  source.rotate(200)
  await until(t, 'the failed move logged', () => proxy.logText().includes('could not move the session'))
  t.ok(upstream.connections[1]?.closed, 'the connection that failed the replay is gone')
  t.equal(await sessionUser(a.client), 'app_v1', 'the session goes on where it was (and will try again)')
  t.equal(await pid(a.client), first.processId)
  t.same(a.errors, [])
  const metrics = await proxy.server.metrics.registry.metrics()
  t.equal(sample(metrics, 'pg_vault_proxy_session_moves_total', { kind: 'swap', outcome: 'failed' }), 1)
  t.equal(source.holdsOn('app_v2'), 0, 'its hold was given back')
})

void t.test('a malformed answer to the state probe: that connection is never relayed again', async (t) => {
  const { upstream, source, proxy } = await setup(t)
  const a = await watchedClient(proxy)
  const first = connectionOf(upstream, await pid(a.client))
  upstream.script = async (message, connection) => {
    if (connection !== first || !isProbe(message)) return
    // A bad length where the probe's row should be, then (once the proxy has reacted) the rest of
    // the answer: bytes that must never reach the client, who asked for none of them.
    connection.send(parseComplete(), bindComplete(), Buffer.from([0x44, 0, 0, 0, 2]))
    await until(t, 'the proxy gave up the probe', () => connection.closed || proxy.logText().includes('will retry'))
    connection.send(commandComplete('SELECT 1'), closeComplete(), encodeReadyForQuery('I'))
    return true
  }
  source.rotate(200)
  await until(t, 'the probe answered', () => first.probes === 1)
  await until(t, 'the session settled', () => first.closed || proxy.logText().includes('will retry'))
  t.equal(await sessionUser(a.client), 'app_v2', 'the session goes on, on the new credential')
  t.same(a.errors, [], 'nothing stray reached the client')
  t.ok(first.closed, 'the connection that lost framing was closed')
  t.equal(source.holdsOn('app_v1'), 0)
})

for (const mode of ['none', 'session'] as const) {
  void t.test(`Terminate while the session moves (pool.mode ${mode})`, async (t) => {
    const { upstream, source, proxy, pool } = await setup(t, { pool: { mode } })
    const a = await watchedClient(proxy)
    const first = connectionOf(upstream, await pid(a.client))
    let ended: Promise<void> | undefined
    upstream.script = async (message, connection) => {
      if (connection !== first || !isProbe(message)) return
      // Goodbye from the client while the proxy waits for the probe's answer, which then comes.
      ended = a.client.end().catch(() => undefined)
      await new Promise((resolve) => setImmediate(resolve))
    }
    source.rotate(200)
    await until(t, 'the client said goodbye', () => ended !== undefined)
    await until(t, 'the client connection ended', () => a.ended)
    const second = upstream.connections[1]
    t.equal(second?.user, 'app_v2', 'the move had logged in with the new credential')
    await until(t, 'the old connection closed', () => first.closed)
    t.equal(first.messageTypes.at(-1), 'X', 'the old connection was ended with Terminate')
    if (mode === 'none') {
      await until(t, 'the new connection closed', () => second?.closed === true)
      t.equal(second?.messageTypes.at(-1), 'X', "the new connection got the client's Terminate")
      // The old connection's hold goes once the proxy has seen it close (it passes on notifications until then).
      await until(t, 'every credential hold given back', () => source.liveHolds === 0)
      t.equal(source.liveHolds, 0, `holds on v1 ${source.holdsOn('app_v1')}, v2 ${source.holdsOn('app_v2')}`)
    } else {
      await until(t, 'the new connection pooled', () => pool.idleConnections === 1)
      t.notOk(second?.closed, 'the new connection is kept for the next client')
      t.equal(source.holdsOn('app_v2'), 1, "the pool's hold on the new credential only")
      t.equal(source.liveHolds, 1)
    }
    t.same(a.errors, [])
    t.equal(upstream.connections.length, 2, 'no other login')
  })
}

void t.test('the client vanishes while its session moves: both connections closed, every hold back', async (t) => {
  const { upstream, source, proxy, pool } = await setup(t)
  const a = await watchedClient(proxy)
  const first = connectionOf(upstream, await pid(a.client))
  let gone = false
  upstream.script = async (message, connection) => {
    if (connection !== first || !isProbe(message)) return
    // No Terminate: the client's socket is destroyed while the proxy waits for the probe's answer.
    ;(a.client as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy()
    gone = true
    await new Promise((resolve) => setImmediate(resolve))
  }
  source.rotate(200)
  await until(t, 'the client vanished', () => gone)
  await until(t, 'both upstream connections closed', () => upstream.open.length === 0)
  t.equal(upstream.connections.length, 2, 'the old connection and the one logged in for the move')
  t.equal(upstream.connections[1]?.user, 'app_v2')
  await until(t, 'every credential hold given back', () => source.liveHolds === 0)
  t.equal(pool.idleConnections, 0, 'nothing pooled from an unclean end')
  t.match(
    proxy.logs.find((l) => l.msg === 'session ended'),
    { reason: 'client_closed' },
    'the audit line says the client left',
  )
})

void t.test('a shutdown WARNING, then the socket closes: an idle session reconnects unseen', async (t) => {
  const { upstream, proxy } = await setup(t)
  const a = await watchedClient(proxy)
  const first = connectionOf(upstream, await pid(a.client))
  // An immediate shutdown or a crash elsewhere: PostgreSQL warns every backend, then they exit.
  first.notice('terminating connection because of crash of another server process', 'WARNING', '57P02')
  first.drop()
  await until(t, 'the reconnect login', () => upstream.connections.length === 2)
  t.equal(await pid(a.client), upstream.connections[1]?.processId)
  t.same(a.errors, [])
  t.same(a.notices, [], 'the warning was about a connection the client no longer has')
})

void t.test('a FATAL the proxy does not take over reaches the client; the proxy goes on', async (t) => {
  const { upstream, proxy } = await setup(t)
  const a = await watchedClient(proxy)
  const first = connectionOf(upstream, await pid(a.client))
  first.fatal('53200', 'out of memory')
  await until(t, 'the client connection ended', () => a.ended)
  t.equal(a.errors[0]?.code, '53200', "the server's own FATAL, as it sent it")
  t.equal(upstream.connections.length, 1, 'only announced shutdowns and losses are reconnected')
  const b = await watchedClient(proxy)
  t.ok((await pid(b.client)) > 0)
})

void t.test('after the idle-session timeout the session reconnects only when the client speaks', async (t) => {
  const { upstream, source, proxy } = await setup(t)
  const a = await watchedClient(proxy)
  const b = await watchedClient(proxy)
  for (const c of [a, b]) {
    connectionOf(upstream, await pid(c.client)).fatal('57P05', 'terminating connection due to idle-session timeout')
  }
  // Parked: no login until the client speaks (reconnecting now would only time out again).
  await until(t, 'the holds given back while parked', () => source.liveHolds === 0)
  t.equal(upstream.connections.length, 2, 'no login while nobody speaks')
  t.equal(await pid(a.client), upstream.connections[2]?.processId, 'a query wakes the session on a new connection')
  t.same(a.errors, [])
  t.equal(source.liveHolds, 1)
  await b.client.end()
  t.equal(upstream.connections.length, 3, 'a goodbye is not worth a login')
  t.same(b.errors, [])
  await until(t, "the goodbye's session gave everything back", () => source.liveHolds === 1)
})

void t.test('a pooled connection whose server spoke while pooled is never handed out', async (t) => {
  const says = {
    'a NoticeResponse': (c: FakeConnection) => c.notice('for a client who left', 'WARNING', '01000'),
    'a FATAL, then its end': (c: FakeConnection) => c.fatal('57P01', ADMIN_SHUTDOWN),
  }
  for (const [what, say] of Object.entries(says)) {
    await t.test(what, async (t) => {
      const fixture = await setup(t)
      const { upstream, proxy, pool } = fixture
      const pooled = await pooledByOneClient(t, fixture)
      say(pooled)
      // The loopback write is in the proxy's receive queue when write() returns; one turn of the
      // event loop reads it into the pooled socket's buffer, before the next client is even accepted.
      await new Promise((resolve) => setImmediate(resolve))
      const b = await watchedClient(proxy)
      const next = await pid(b.client)
      t.not(next, pooled.processId, 'the next client got a fresh login')
      t.equal(upstream.connections.length, 2)
      t.same(b.notices, [], 'nothing the pooled server said reached the next client')
      t.same(b.errors, [])
      await until(t, 'the spoken-to connection closed', () => pooled.closed)
      t.equal(pool.idleConnections, 0)
      // A FATAL 57P01 on a connection handed out anyway would be reconnected unseen: the counts tell.
      const metrics = await proxy.server.metrics.registry.metrics()
      t.equal(sample(metrics, 'pg_vault_proxy_pool_reuses_total') ?? 0, 0, 'the pool handed nothing out')
      t.equal(sample(metrics, 'pg_vault_proxy_upstream_logins_total'), 2, 'both clients logged in')
      t.equal(sample(metrics, 'pg_vault_proxy_session_moves_total', { kind: 'reconnect' }) ?? 0, 0, 'no reconnect')
    })
  }
})

void t.test('a pooled connection whose server closed without a word: the next client does not notice', async (t) => {
  const fixture = await setup(t)
  const { upstream, proxy, pool } = fixture
  const pooled = await pooledByOneClient(t, fixture)
  pooled.drop()
  await new Promise((resolve) => setImmediate(resolve))
  const b = await watchedClient(proxy)
  t.equal(await pid(b.client), upstream.connections[1]?.processId, 'served by a new login')
  t.same(b.errors, [])
  t.same(b.notices, [])
  const metrics = await proxy.server.metrics.registry.metrics()
  t.equal(sample(metrics, 'pg_vault_proxy_pool_reuses_total') ?? 0, 0, 'the pool noticed the close: nothing handed out')
  t.equal(sample(metrics, 'pg_vault_proxy_session_moves_total') ?? 0, 0, 'so nothing needed a reconnect')
  t.equal(pool.idleConnections, 0)
})

void t.test('a reset query that fails closes the connection; the next client logs in afresh', async (t) => {
  const { upstream, proxy, pool } = await setup(t)
  upstream.script = (message, connection) => {
    if (message.type !== 'Q' || cstrings(message.body)[0] !== 'DISCARD ALL') return
    connection.send(errorResponse('ERROR', '25001', 'DISCARD ALL cannot run inside a transaction block'))
    connection.ready()
    return true
  }
  const a = await watchedClient(proxy)
  const first = connectionOf(upstream, await pid(a.client))
  await a.client.end()
  await until(t, 'the failed reset closed the connection', () => first.closed)
  t.same(first.messageTypes.slice(-2), ['Q', 'X'], 'the reset, then Terminate')
  t.equal(pool.idleConnections, 0, 'not pooled')
  const metrics = await proxy.server.metrics.registry.metrics()
  t.equal(sample(metrics, 'pg_vault_proxy_pool_resets_total', { outcome: 'failed' }), 1)
  const b = await watchedClient(proxy)
  t.not(await pid(b.client), first.processId, 'the next client got a fresh login')
  t.equal(upstream.connections.length, 2)
})

void t.test('pool.idle_timeout_ms: a connection idle that long is closed; the next client logs in', async (t) => {
  const fixture = await setup(t, { pool: { idle_timeout_ms: 100 } })
  const { upstream, proxy, pool } = fixture
  const first = await pooledByOneClient(t, fixture)
  await until(t, 'the idle connection closed', () => first.closed)
  t.equal(first.messageTypes.at(-1), 'X', 'ended with Terminate')
  t.equal(pool.idleConnections, 0)
  const b = await watchedClient(proxy)
  t.not(await pid(b.client), first.processId, 'a fresh login')
  t.equal(upstream.connections.length, 2)
  t.same(b.errors, [])
  await b.client.end()
})

void t.test(
  'pool.server_lifetime_ms: an old connection keeps its client, and is closed when it next goes idle',
  async (t) => {
    const lifetimeMs = 3_000
    const fixture = await setup(t, { pool: { server_lifetime_ms: lifetimeMs } })
    const { proxy, pool } = fixture
    const first = await pooledByOneClient(t, fixture)
    const pooledAt = Date.now()
    const b = await watchedClient(proxy)
    t.equal(await pid(b.client), first.processId, 'reused while younger than its lifetime')
    await new Promise((resolve) => setTimeout(resolve, pooledAt + lifetimeMs + 100 - Date.now()))
    t.equal(await pid(b.client), first.processId, 'past its lifetime, the linked session goes on where it was')
    t.same(b.errors, [])
    await b.client.end()
    await until(t, 'the old connection closed instead of pooled', () => first.closed)
    t.equal(pool.idleConnections, 0)
  },
)

void t.test('a pooled connection whose credential ends soon is closed, never handed out', async (t) => {
  const fixture = await setup(t)
  const { source, proxy, pool } = fixture
  const first = await pooledByOneClient(t, fixture)
  t.equal(source.liveHolds, 1, 'the pool alone holds the credential')
  source.endsIn(1_000)
  await until(t, 'the connection closed', () => first.closed)
  t.equal(pool.idleConnections, 0)
  const b = await watchedClient(proxy)
  t.not(await pid(b.client), first.processId, 'the next client got a fresh login')
  const metrics = await proxy.server.metrics.registry.metrics()
  t.equal(sample(metrics, 'pg_vault_proxy_pool_reuses_total') ?? 0, 0, 'nothing handed out')
  await b.client.end()
})

void t.test('a client that leaves half-way through a message: its connection is closed, not pooled', async (t) => {
  const { upstream, proxy, pool } = await setup(t)
  const client = net.connect(proxy.port, proxy.host)
  client.on('error', () => {})
  await once(client, 'connect')
  client.write(startupMessage({ user: 'app', database: 'app' }))
  // Read up to the greeting's ReadyForQuery (type Z, length 5, status): the session is relaying.
  await new Promise<void>((resolve) => {
    let received = Buffer.alloc(0)
    const onData = (chunk: Buffer): void => {
      received = Buffer.concat([received, chunk])
      if (received.length < 6 || received[received.length - 6] !== 0x5a) return
      client.off('data', onData)
      resolve()
    }
    client.on('data', onData)
  })
  const query = new BufferList().cstring('select 1').message('Q')
  client.write(query.subarray(0, 8))
  // The relay counts what it read from the client: once it holds the 8 bytes, the client goes.
  let relayed = 0
  for (let i = 0; i < 1000 && relayed < 8; i++) {
    await new Promise((resolve) => setTimeout(resolve, 5))
    relayed =
      sample(await proxy.server.metrics.registry.metrics(), 'pg_vault_proxy_bytes_total', {
        direction: 'client_to_upstream',
      }) ?? 0
  }
  t.equal(relayed, 8, 'the proxy read half a Query')
  client.destroy()
  const first = upstream.connections[0] as FakeConnection
  await until(t, 'the connection closed', () => first.closed)
  t.equal(pool.idleConnections, 0, 'not pooled')
  const metrics = await proxy.server.metrics.registry.metrics()
  t.equal(sample(metrics, 'pg_vault_proxy_pool_resets_total', { outcome: 'ok' }) ?? 0, 0, 'never offered to the pool')
})

/** The simple-Query texts a fake connection received, in order. */
function queries(connection: FakeConnection): string[] {
  return connection.messages.filter((m) => m.type === 'Q').map((m) => cstrings(m.body)[0] ?? '')
}

/** What PostgreSQL answers `select session_user` in a session whose login role was dropped (GetUserNameFromId). */
function roleGone(connection: FakeConnection): true {
  connection.send(errorResponse('ERROR', '42704', 'invalid role OID: 16399'))
  connection.ready()
  return true
}

void t.test('by default every link checks the role; the check also rides with the reset', async (t) => {
  const fixture = await setup(t)
  const { proxy } = fixture
  const first = await pooledByOneClient(t, fixture)
  t.same(queries(first).slice(-2), ['DISCARD ALL', 'SELECT session_user'], 'the reset, then the role check')
  const b = await watchedClient(proxy)
  t.equal(await pid(b.client), first.processId, 'reused')
  t.same(
    queries(first).slice(-2),
    ['SELECT session_user', 'select pg_backend_pid()'],
    "the link's check, then the client's own query",
  )
  t.same(b.errors, [])
  await b.client.end()
})

void t.test('within pool.server_check_delay_ms a link sends nothing', async (t) => {
  const fixture = await setup(t, { pool: { server_check_delay_ms: 30_000 } })
  const { proxy } = fixture
  const first = await pooledByOneClient(t, fixture)
  t.same(queries(first).slice(-2), ['DISCARD ALL', 'SELECT session_user'], 'the reset, then the role check')
  const before = first.messages.length
  const b = await watchedClient(proxy)
  t.equal(await pid(b.client), first.processId, 'reused')
  t.same(queries(first).slice(-1), ['select pg_backend_pid()'], "nothing between the check and the client's own query")
  t.equal(first.messages.length, before + 1, 'the link sent no message of its own')
  t.same(b.errors, [])
  await b.client.end()
})

void t.test(
  'a pre-warmed connection is checked at its first link, whatever pool.server_check_delay_ms says',
  async (t) => {
    const { upstream, proxy, pool } = await setup(t, { pool: { server_check_delay_ms: 30_000, min_idle: 1 } })
    const a = await watchedClient(proxy)
    await pid(a.client)
    // A's login made the key warm: the pool logs in one more connection, for nobody yet.
    await until(t, 'a connection pre-warmed', () => pool.idleConnections === 1)
    const warmed = upstream.connections[1]
    if (!warmed) throw new Error('no pre-warmed connection')
    t.same(queries(warmed), [], 'nothing sent to it yet')
    const b = await watchedClient(proxy)
    t.equal(await pid(b.client), warmed.processId, 'the next client got the pre-warmed connection')
    t.same(queries(warmed), ['SELECT session_user', 'select pg_backend_pid()'], 'checked before the greeting')
    t.same(b.errors, [])
    await Promise.all([a.client.end(), b.client.end()])
  },
)

void t.test('a login role found gone by the reset: the connection is closed, the next client logs in', async (t) => {
  const { upstream, proxy, pool } = await setup(t)
  upstream.script = (message, connection) =>
    message.type === 'Q' && cstrings(message.body)[0] === 'SELECT session_user' ? roleGone(connection) : undefined
  const a = await watchedClient(proxy)
  const first = connectionOf(upstream, await pid(a.client))
  await a.client.end()
  await until(t, 'the connection closed', () => first.closed)
  t.equal(pool.idleConnections, 0, 'not pooled')
  const metrics = await proxy.server.metrics.registry.metrics()
  t.equal(sample(metrics, 'pg_vault_proxy_pool_resets_total', { outcome: 'failed' }), 1)
  const b = await watchedClient(proxy)
  t.not(await pid(b.client), first.processId, 'the next client got a fresh login')
  t.same(b.errors, [])
})

void t.test(
  'a login role gone between the reset and the link: the link finds it, the connection is not handed out',
  async (t) => {
    const { upstream, proxy, pool } = await setup(t)
    let gone = false
    upstream.script = (message, connection) =>
      gone && message.type === 'Q' && /^SELECT session_user/.test(cstrings(message.body)[0] ?? '')
        ? roleGone(connection)
        : undefined
    const a = await watchedClient(proxy)
    const first = connectionOf(upstream, await pid(a.client))
    await a.client.end()
    await until(t, 'the connection pooled', () => pool.idleConnections === 1)
    gone = true
    const b = await watchedClient(proxy)
    t.not(await pid(b.client), first.processId, 'a fresh login, not the connection whose role is gone')
    t.equal(queries(first).at(-1), 'SELECT session_user', 'the link asked')
    await until(t, 'the connection closed', () => first.closed)
    t.same(b.errors, [])
    t.same(b.notices, [])
  },
)

void t.test('a malformed message from the upstream mid-relay ends that session only', async (t) => {
  const { upstream, proxy, source, pool } = await setup(t)
  const broken = { 'a bad length': [0x44, 0, 0, 0, 2], 'an unknown type': [0x79, 0, 0, 0, 4] }
  for (const [what, bytes] of Object.entries(broken)) {
    await t.test(what, async (t) => {
      upstream.script = (message, connection) => {
        if (message.type !== 'Q' || cstrings(message.body)[0] !== 'select 7') return
        connection.send(rowDescription(['n']), dataRow(['7']), Buffer.from(bytes))
        return true
      }
      const a = await watchedClient(proxy)
      const b = await watchedClient(proxy)
      const first = connectionOf(upstream, await pid(a.client))
      const err = (await a.client.query('select 7').then(
        () => undefined,
        (e: unknown) => e,
      )) as ServerError | undefined
      t.equal(err?.code, '08006', 'connection_failure: the upstream connection can no longer be trusted')
      t.equal(err?.severity, 'FATAL')
      t.match(err?.message, /lost the connection to the upstream server: it sent an invalid/)
      await until(t, 'the client connection ended', () => a.ended)
      await until(t, 'the broken upstream connection closed', () => first.closed)
      t.ok((await pid(b.client)) > 0, 'the other session goes on')
      const c = await watchedClient(proxy)
      t.ok((await pid(c.client)) > 0, 'the proxy serves new clients')
      await b.client.end()
      await c.client.end()
    })
  }
  t.ok(
    proxy.logs.some((l) => l.msg === 'session ended' && l.reason === 'upstream_protocol_violation'),
    'the audit line names the upstream protocol violation',
  )
  await until(t, 'the ended sessions gave their holds back', () => source.liveHolds === pool.idleConnections)
})
