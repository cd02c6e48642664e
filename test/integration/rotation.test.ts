import { readFile, writeFile } from 'node:fs/promises'
import { connect } from 'node:net'
import pg from 'pg'
import postgres from 'postgres'
import t, { type Test } from 'tap'
import { sample } from '../support/ops-probe.js'
import { clusterFor } from '../support/pg-cluster.js'
import { startProxy, type RunningProxy } from '../support/proxy-harness.js'
import { runClient } from '../support/run-client.js'
import { eventually, vaultFor } from '../support/vault-target.js'
import { serialize } from 'pg-protocol'
import { BufferList, errorFieldsOf, parseMessages, startupMessage, type WireMessage } from '../support/wire-builder.js'

// Live sessions moving to fresh credentials (planned swaps) and reconnecting after upstream loss,
// against the real cluster and the dev Vault, with node-postgres and postgres.js (docs/rotation.md).
const cluster = await clusterFor(t)
const vault = await vaultFor(t, cluster)
const db = await vault.database()
const viaRoot = { address: vault.address, auth: { method: 'token', token: vault.token } }

/** A proxy on Vault credentials from a role whose leases last `ttl` seconds and cannot be renewed. */
async function rotatingProxy(
  t: Test,
  role: string,
  ttl: number,
  overrides: Record<string, unknown> = {},
): Promise<RunningProxy> {
  await db.createDynamicRole({ name: role, defaultTtl: ttl, maxTtl: ttl })
  return startProxy(t, cluster, { vault: viaRoot, credentials: { vault: { role } }, ...overrides })
}

/**
 * A proxy that pre-warms no server connections (pool.min_idle 0): these tests find a session's
 * backend by its application_name, which a pre-warmed connection of the same key shares.
 */
function startUnwarmed(t: Test): Promise<RunningProxy> {
  return startProxy(t, cluster, { pool: { min_idle: 0 } })
}

async function one<T>(client: pg.Client, sql: string, values?: unknown[]): Promise<T> {
  const result = await client.query<Record<string, T>>(sql, values)
  return Object.values(result.rows[0] ?? {})[0] as T
}

/** Waits until the client's session runs as a different login user than `before` (it was moved). */
async function movedFrom(client: pg.Client, before: string, seconds = 15): Promise<boolean> {
  return eventually(seconds, async () => (await one<string>(client, 'select session_user')) !== before)
}

async function moves(proxy: RunningProxy, kind: string, outcome: string): Promise<number> {
  const text = await proxy.server.metrics.registry.metrics()
  return sample(text, 'pg_vault_proxy_session_moves_total', { kind, outcome }) ?? 0
}

/** Errors the server logged since `from` (byte offset): a lost prepared statement shows up here even when a driver heals it. */
async function serverErrorsSince(from: number): Promise<string[]> {
  const log = await readFile(cluster.logFile, 'utf8')
  return log
    .slice(from)
    .split('\n')
    .filter((line) => /ERROR|FATAL/.test(line) && !/terminating connection due to administrator command/.test(line))
}

async function logSize(): Promise<number> {
  return (await readFile(cluster.logFile)).length
}

/** The upstream backend pid serving a proxied client, found from the server side by application_name. */
async function backendOf(appName: string): Promise<number> {
  const rows = await cluster.query<{ pid: number }>('select pid from pg_stat_activity where application_name = $1', [
    appName,
  ])
  if (rows.length !== 1) throw new Error(`expected one backend for ${appName}, found ${rows.length}`)
  return rows[0]!.pid
}

/** Runs pg_sleep on `client`, sends a CancelRequest with the key the proxy gave it, and returns the SQLSTATE. */
async function cancelledSleep(client: pg.Client, appName: string, proxy: RunningProxy): Promise<string | undefined> {
  const running = client.query('select pg_sleep(20)').catch((e: unknown) => e as Error & { code?: string })
  await eventually(
    5,
    async () =>
      (
        await cluster.query('select 1 from pg_stat_activity where application_name = $1 and state = $2', [
          appName,
          'active',
        ])
      ).length === 1,
  )
  const { processID, secretKey } = client as unknown as { processID: number; secretKey: number }
  const key = Buffer.alloc(4)
  key.writeInt32BE(secretKey)
  const cancel = connect(proxy.port, proxy.host)
  cancel.write(new BufferList().int32(80877102).int32(processID).bytes(key).packet())
  const result = await running
  cancel.destroy()
  return (result as { code?: string }).code
}

const terminate = (pid: number): Promise<unknown> => cluster.query('select pg_terminate_backend($1)', [pid])

/**
 * Waits until the proxy has noticed `count` upstream losses of idle sessions. A client statement
 * sent before that races the loss, and one that reaches a dying upstream is never replayed.
 */
async function lossesNoticed(proxy: RunningProxy, count: number): Promise<boolean> {
  return eventually(10, async () =>
    Promise.resolve(
      proxy.logs.filter((l) => String(l.msg).startsWith('upstream connection lost at an idle point')).length >= count,
    ),
  )
}

void t.test('planned swap: settings, prepared statements and LISTENs move with the session', async (t) => {
  const proxy = await rotatingProxy(t, 'swap_state', 4)
  const client = await proxy.client({ application_name: 'swap-state' })
  const first = await one<string>(client, 'select session_user')
  const logFrom = await logSize()
  await client.query('set search_path = public, pg_catalog')
  await client.query("select set_config('work_mem', '8MB', false)")
  await client.query("set app.tenant = 'acme'")
  await client.query("set statement_timeout = '5s'")
  await client.query('prepare sql_stmt(int) as select $1 * 2 as n')
  await client.query({ name: 'proto_stmt', text: 'select $1::int + 1 as n', values: [1] })
  await client.query('listen "Chan A"')
  const notes: string[] = []
  client.on('notification', (n) => notes.push(n.payload ?? ''))

  t.ok(await movedFrom(client, first), 'the session now runs as another Vault user')
  t.equal(await one(client, 'show search_path'), 'public, pg_catalog', 'SET search_path survived')
  t.equal(await one(client, 'show work_mem'), '8MB', 'a set_config() setting survived')
  t.equal(await one(client, "select current_setting('app.tenant')"), 'acme', 'a custom setting survived')
  t.equal(await one(client, 'show statement_timeout'), '5s')
  t.equal(await one(client, 'select current_user'), 'app_owner', 'still acting as the owner role')
  t.equal(await one(client, 'execute sql_stmt(21)'), 42, 'a SQL PREPAREd statement survived')
  t.equal(
    (await client.query<{ n: number }>({ name: 'proto_stmt', text: 'select $1::int + 1 as n', values: [41] })).rows[0]
      ?.n,
    42,
    'a protocol-level named statement survived (node-postgres sent only Bind/Execute)',
  )
  await cluster.query(`notify "Chan A", 'after the move'`)
  t.ok(await eventually(5, async () => notes.includes('after the move')), 'the LISTEN survived')
  t.same(await serverErrorsSince(logFrom), [], 'the server logged no error (no statement went missing)')
  t.equal(await cancelledSleep(client, 'swap-state', proxy), '57014', 'a cancel request reaches the new backend')
  t.ok((await moves(proxy, 'swap', 'moved')) >= 1, 'session_moves_total{kind="swap",outcome="moved"}')
  t.ok(
    proxy.logs.some((l) => l.msg === 'session moved to a new credential' && l.from === first),
    'the move is logged with the old and new users',
  )
})

void t.test('pgjdbc-style S_1 after five executions, and postgres.js named statements, across swaps', async (t) => {
  const proxy = await rotatingProxy(t, 'swap_named', 4)
  const logFrom = await logSize()
  // pgjdbc runs a statement unnamed 5 times (prepareThreshold), then prepares it as S_1 and binds only.
  const jdbc = await proxy.client({ application_name: 'jdbc-style' })
  const first = await one<string>(jdbc, 'select session_user')
  for (let i = 0; i < 5; i++) await jdbc.query('select $1::int as n', [i])
  const s1 = { name: 'S_1', text: 'select $1::int as n' }
  t.equal((await jdbc.query<{ n: number }>({ ...s1, values: [5] })).rows[0]?.n, 5)

  const sql = postgres({ host: proxy.host, port: proxy.port, database: cluster.database, username: 'pjs', max: 1 })
  t.teardown(() => sql.end({ timeout: 1 }))
  const pjsUser = async (): Promise<string> => (await sql`select session_user as u`)[0]!.u as string
  const pjsFirst = await pjsUser()
  t.equal(sql.parameters.session_authorization, pjsFirst, 'postgres.js tracks session_authorization')
  const query = (n: number) => sql`select ${n}::int * 3 as n`
  t.equal((await query(1))[0]!.n, 3)

  t.ok(await movedFrom(jdbc, first), 'the jdbc-style session moved')
  t.equal((await jdbc.query<{ n: number }>({ ...s1, values: [6] })).rows[0]?.n, 6, 'S_1 still binds after the move')
  t.ok(await eventually(15, async () => (await pjsUser()) !== pjsFirst), 'the postgres.js session moved')
  t.equal(
    sql.parameters.session_authorization,
    await pjsUser(),
    'the client was sent the ParameterStatus that changed (session_authorization)',
  )
  t.equal((await query(2))[0]!.n, 6, 'postgres.js reused its named statement after the move')
  const names = (await sql`select name from pg_prepared_statements where not from_sql`).map((r) => r.name as string)
  t.ok(names.length >= 2, `postgres.js's statements exist on the new connection (${names.join(', ')})`)
  t.same(
    await serverErrorsSince(logFrom),
    [],
    'no statement was missing at any point (postgres.js did not need to heal)',
  )
})

void t.test('a node-postgres Client without an error listener lives through a swap and a reconnect', async (t) => {
  // No pre-warmed connection (pool.min_idle 0): backendOf finds the session's backend by application_name.
  const proxy = await rotatingProxy(t, 'swap_noerr', 4, { pool: { min_idle: 0 } })
  const client = new pg.Client({
    host: proxy.host,
    port: proxy.port,
    user: 'bare',
    database: cluster.database,
    application_name: 'no-error-listener',
  })
  // Deliberately no client.on('error'): an asynchronous error event would crash this test process.
  await client.connect()
  t.teardown(() => client.end().catch(() => undefined))
  const first = await one<string>(client, 'select session_user')
  t.ok(await movedFrom(client, first), 'moved to a new credential')
  await terminate(await backendOf('no-error-listener'))
  t.ok(await lossesNoticed(proxy, 1))
  t.equal(await one(client, 'select 1'), 1, 'the next query after pg_terminate_backend succeeds')
  t.equal(await one(client, 'select current_user'), 'app_owner')
})

void t.test('a temp table blocks the swap: the session is closed with 57P01 saying why, others move', async (t) => {
  const proxy = await rotatingProxy(t, 'swap_temp', 5)
  const pinned = await proxy.client({ application_name: 'temp-holder' })
  const free = await proxy.client({ application_name: 'no-temp' })
  const freeFirst = await one<string>(free, 'select session_user')
  await pinned.query('create temp table scratch (n int)')
  const ended = new Promise<Error>((resolve) => pinned.on('error', resolve))
  t.ok(await movedFrom(free, freeFirst), 'a session without temp tables moved')
  const err = (await Promise.race([
    ended,
    new Promise((resolve) => setTimeout(() => resolve(new Error('not closed')), 15_000)),
  ])) as Error & { code?: string; hint?: string }
  t.equal(err.code, '57P01', 'the session holding the temp table was closed with 57P01')
  t.match(err.message, /could not move the session to a new one because it held temporary tables/)
  t.match(err.hint, /docs\/rotation\.md/)
  t.ok(
    proxy.logs.some(
      (l) => l.msg === 'session cannot move to the new credential' && /temporary tables/.test(String(l.why)),
    ),
    'a log line says why the swap was refused',
  )
  t.ok((await moves(proxy, 'swap', 'blocked')) >= 1, 'session_moves_total{outcome="blocked"}')
  t.equal(
    await moves(proxy, 'swap', 'closed'),
    1,
    'session_moves_total{outcome="closed"}: one session closed at the end',
  )
  t.equal(await one(free, 'select 1'), 1, 'the other session keeps working')
})

void t.test('a WITH HOLD cursor or a session advisory lock blocks the swap too, each named', async (t) => {
  const proxy = await rotatingProxy(t, 'swap_hold_lock', 5)
  const cursorHolder = await proxy.client({ application_name: 'cursor-holder' })
  const lockHolder = await proxy.client({ application_name: 'lock-holder' })
  const free = await proxy.client({ application_name: 'holds-nothing' })
  const freeFirst = await one<string>(free, 'select session_user')
  // Outside a transaction block: only WITH HOLD cursors outlive their transaction.
  await cursorHolder.query('declare held cursor with hold for select generate_series(1, 10)')
  await lockHolder.query('select pg_advisory_lock(4242)')
  const closed = (client: pg.Client): Promise<Error & { code?: string }> =>
    Promise.race([
      new Promise<Error>((resolve) => client.on('error', resolve)),
      new Promise<Error>((resolve) => setTimeout(() => resolve(new Error('not closed')), 15_000)),
    ])
  const [cursorErr, lockErr] = await Promise.all([closed(cursorHolder), closed(lockHolder)])
  t.ok(await movedFrom(free, freeFirst), 'the session holding nothing moved')
  t.equal(cursorErr.code, '57P01')
  t.match(cursorErr.message, /because it held WITH HOLD cursors/)
  t.equal(lockErr.code, '57P01')
  t.match(lockErr.message, /because it held session advisory locks/)
  t.equal(await moves(proxy, 'swap', 'closed'), 2, 'both holders were closed at their credential end')
  // The lock went with its backend: another session can take it.
  t.equal(await one(free, 'select pg_try_advisory_lock(4242)'), true, 'the advisory lock was released')
})

void t.test('a backend terminated mid-transaction: a prompt error, nothing replayed', async (t) => {
  const proxy = await startUnwarmed(t)
  await cluster.query('create table if not exists rotation_tx (n int)')
  await cluster.query('grant all on rotation_tx to app_owner')
  const client = await proxy.client({ application_name: 'mid-tx' })
  await client.query('begin')
  await client.query('insert into rotation_tx values (1)')
  type PgError = Error & { code?: string; detail?: string }
  // The FATAL reaches node-postgres either as an 'error' event (it arrived first) or as the next query's error.
  const fatal = new Promise<PgError>((resolve) => client.once('error', resolve))
  await terminate(await backendOf('mid-tx'))
  await new Promise((resolve) => setTimeout(resolve, 50))
  const next = client.query('insert into rotation_tx values (2)').then(
    () => new Error('the insert succeeded') as PgError,
    (e: unknown) => e as PgError,
  )
  const err = await Promise.race([fatal, next])
  t.equal(err.code, '57P01', 'the client gets the FATAL')
  t.match(err.message, /terminating connection due to administrator command/)
  t.match(err.detail, /inside a transaction .* never replays statements/, 'and the proxy says why it did not reconnect')
  t.equal(
    await one(await proxy.client(), 'select count(*)::int from rotation_tx'),
    0,
    'nothing was committed or replayed',
  )
  t.equal(await moves(proxy, 'reconnect', 'moved'), 0, 'no reconnect was attempted')

  // A query running when the backend dies: the same, never re-run.
  const busy = await proxy.client({ application_name: 'mid-query' })
  const running = busy.query('select pg_sleep(30)').catch((e: unknown) => e)
  t.ok(
    await eventually(5, async () => {
      const rows = await cluster.query(
        "select 1 from pg_stat_activity where application_name = 'mid-query' and state = 'active'",
      )
      return rows.length === 1
    }),
  )
  await terminate(await backendOf('mid-query'))
  const queryErr = (await running) as PgError
  t.equal(queryErr.code, '57P01', 'the running query fails at once instead of hanging')
  t.match(queryErr.detail, /request in flight/)
  t.ok((await moves(proxy, 'reconnect', 'declined')) >= 1, 'session_moves_total{kind="reconnect",outcome="declined"}')
})

void t.test('an idle session whose backend is terminated reconnects with its state', async (t) => {
  const proxy = await startUnwarmed(t)
  const client = await proxy.client({ application_name: 'idle-kill' })
  await client.query('set search_path = pg_catalog, public')
  await client.query('listen reconnect_chan')
  const notes: string[] = []
  client.on('notification', (n) => notes.push(n.payload ?? ''))
  const before = await backendOf('idle-kill')
  await terminate(before)
  t.ok(
    await eventually(
      5,
      async () =>
        (
          await cluster.query(
            "select 1 from pg_stat_activity where application_name = 'idle-kill' and pid <> " + before,
          )
        ).length === 1,
    ),
    'a new backend took over at once (the session LISTENs, so it reconnects eagerly)',
  )
  t.equal(await one(client, 'show search_path'), 'pg_catalog, public', 'the next statement succeeds, with the setting')
  await cluster.query("notify reconnect_chan, 'again'")
  t.ok(await eventually(5, async () => notes.includes('again')), 'LISTEN was restored')
  t.equal(await moves(proxy, 'reconnect', 'moved'), 1)
  // Cancel follows the new backend.
  t.equal(await cancelledSleep(client, 'idle-kill', proxy), '57014', 'a cancel request reaches the new backend')
})

void t.test('idle_session_timeout (57P05): reconnects when the client next speaks', async (t) => {
  const proxy = await startUnwarmed(t)
  const client = await proxy.client({ application_name: 'idle-timeout' })
  await client.query("set idle_session_timeout = '300ms'")
  await new Promise((resolve) => setTimeout(resolve, 1_000))
  t.ok(
    proxy.logs.some((l) => l.msg === 'upstream closed an idle session; reconnecting when the client next speaks'),
    'the proxy waits for the client instead of reconnecting into another timeout',
  )
  t.equal(
    (await cluster.query("select 1 from pg_stat_activity where application_name = 'idle-timeout'")).length,
    0,
    'no upstream connection is held meanwhile',
  )
  t.equal(await one(client, "select current_setting('idle_session_timeout')"), '300ms', 'the next statement succeeds')
  t.equal(await moves(proxy, 'reconnect', 'moved'), 1)
})

void t.test('rotation.reconnect: false relays the FATAL, as a direct connection would', async (t) => {
  const proxy = await startProxy(t, cluster, { rotation: { reconnect: false }, pool: { min_idle: 0 } })
  const client = await proxy.client({ application_name: 'no-reconnect' })
  const ended = new Promise<Error & { code?: string }>((resolve) => client.on('error', resolve))
  await terminate(await backendOf('no-reconnect'))
  const err = await ended
  t.equal(err.code, '57P01')
  t.match(err.message, /terminating connection due to administrator command/)
})

void t.test('rotation.strict: a session busy in a transaction is closed at its credential end', async (t) => {
  const proxy = await rotatingProxy(t, 'swap_strict', 4, { rotation: { strict: true } })
  const client = await proxy.client({ application_name: 'strict-busy' })
  const ended = new Promise<Error & { code?: string }>((resolve) => client.on('error', resolve))
  await client.query('begin')
  const err = await Promise.race([ended, new Promise<undefined>((resolve) => setTimeout(resolve, 15_000))])
  t.equal(err?.code, '57P01', 'closed with 57P01 before the lease ended')
  t.match(err?.message, /it was busy \(a transaction or a long query\)/)
})

void t.test('notifications keep flowing through a swap: none is lost', async (t) => {
  const proxy = await rotatingProxy(t, 'swap_notify', 4)
  const client = await proxy.client({ application_name: 'listener' })
  const first = await one<string>(client, 'select session_user')
  await client.query('listen stream')
  const got = new Set<number>()
  client.on('notification', (n) => got.add(Number(n.payload)))
  let sent = 0
  let moved = false
  void movedFrom(client, first, 15).then((m) => (moved = m))
  // Notify until the session has moved, and a little beyond.
  const deadline = Date.now() + 15_000
  while (Date.now() < deadline) {
    await cluster.query(`notify stream, '${sent++}'`)
    if (moved) break
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
  for (let i = 0; i < 20; i++) await cluster.query(`notify stream, '${sent++}'`)
  t.ok(moved, 'the listening session moved')
  t.ok(await eventually(5, async () => got.size === sent), `all ${sent} notifications arrived (${got.size})`)
})

void t.test('a backend crash: idle sessions reconnect once the server has recovered', async (t) => {
  const proxy = await startUnwarmed(t)
  const victim = await proxy.client({ application_name: 'crash-victim' })
  const bystander = await proxy.client({ application_name: 'crash-bystander' })
  await victim.query('set search_path = pg_catalog, public')
  await bystander.query("set application_name = 'crash-bystander-2'")
  // A state change is probed at the next idle point, before the client's next statement runs.
  await Promise.all([victim.query('select 1'), bystander.query('select 1')])
  // SIGKILL on a backend: its socket closes without a word, and the postmaster ends every other
  // backend with WARNING 57P02, then refuses logins (57P03) while it recovers.
  process.kill(await backendOf('crash-victim'), 'SIGKILL')
  t.ok(await lossesNoticed(proxy, 2), 'the proxy noticed both losses')
  t.equal(await one(victim, 'show search_path'), 'pg_catalog, public', 'the killed session answers again')
  t.equal(await one(bystander, 'show application_name'), 'crash-bystander-2', 'so does the bystander')
  t.equal(await moves(proxy, 'reconnect', 'moved'), 2)
  t.ok(
    proxy.logs.some((l) => /57P02/.test(JSON.stringify(l.loss ?? ''))),
    "the bystander's loss was the crash WARNING 57P02",
  )
})

void t.test(
  'pgbench on persistent connections and a psql session, across leases that terminate backends',
  async (t) => {
    const proxy = await rotatingProxy(t, 'swap_bench', 8)
    const target = ['-h', proxy.host, '-p', String(proxy.port), '-U', 'bench']
    const script = `${proxy.socketDir}/tx.sql`
    await writeFile(
      script,
      [
        '\\set n random(1, 1000)',
        'begin;',
        'select :n + 1;',
        'select current_user;',
        'end;',
        'select session_user;',
      ].join('\n') + '\n',
    )
    // psql with a pause in the middle of its session: the swap happens while it sleeps (idle).
    const psqlScript = `${proxy.socketDir}/psql.sql`
    await writeFile(
      psqlScript,
      [
        'set search_path = pg_catalog, public;',
        'select session_user;',
        '\\! sleep 10',
        'select session_user;',
        'show search_path;',
      ].join('\n') + '\n',
    )
    const [bench, psql] = await Promise.all([
      runClient('pgbench', [...target, '-n', '-c', '4', '-j', '2', '-T', '14', '-f', script, cluster.database]),
      runClient('psql', [
        ...target,
        '-d',
        cluster.database,
        '-X',
        '-A',
        '-t',
        '-v',
        'ON_ERROR_STOP=1',
        '-f',
        psqlScript,
      ]),
    ])
    t.equal(bench.code, 0, 'pgbench succeeded')
    t.match(bench.out, /number of failed transactions: 0 /, 'no transaction failed')
    t.notMatch(bench.out, /aborted/, 'no client aborted')
    t.ok(
      (await moves(proxy, 'swap', 'moved')) >= 4,
      `pgbench's sessions were moved (${await moves(proxy, 'swap', 'moved')} moves)`,
    )
    t.equal(psql.code, 0, psql.out)
    const [user1, user2, path] = psql.out.trim().split('\n').slice(-3)
    t.not(user1, user2, 'psql ran on two credentials in one session')
    t.equal(path, 'pg_catalog, public', 'and kept its setting')
  },
)

void t.test(
  'Vault revokes a lease behind the proxy: its idle sessions reconnect with a fresh credential',
  async (t) => {
    await db.createDynamicRole({ name: 'revoked_live', defaultTtl: 60, maxTtl: 120 })
    const proxy = await startProxy(t, cluster, { vault: viaRoot, credentials: { vault: { role: 'revoked_live' } } })
    const client = await proxy.client({ application_name: 'revoked-live' })
    const first = await one<string>(client, 'select session_user')
    const leaseId = proxy.logs.find((l) => l.msg === 'issued a database credential')?.leaseId as string
    // The revocation statements terminate the session's backend and drop its login user.
    await vault.call('PUT', 'sys/leases/revoke', { lease_id: leaseId })
    t.ok(await lossesNoticed(proxy, 1))
    const second = await one<string>(client, 'select session_user')
    t.not(second, first, 'the session runs on a fresh credential')
    t.equal(await one(client, 'select current_user'), 'app_owner')
    t.ok(proxy.logs.some((l) => String(l.msg).startsWith('the server terminated sessions of this credential')))
  },
)

/** A bare protocol client: what drivers that Parse and Bind in separate round trips (asyncpg, pgx) do. */
async function rawSession(
  proxy: RunningProxy,
  applicationName = 'raw',
): Promise<{
  send(...messages: Buffer[]): void
  untilReady(): Promise<WireMessage[]>
  /** The next whole message. */
  next(): Promise<WireMessage>
  close(): void
}> {
  const socket = connect(proxy.port, proxy.host)
  let received = Buffer.alloc(0)
  let wake: (() => void) | undefined
  socket.on('data', (chunk: Buffer) => {
    received = Buffer.concat([received, chunk])
    wake?.()
  })
  const untilReady = async (): Promise<WireMessage[]> => {
    for (;;) {
      const messages = parseMessages(received)
      const end = messages.findIndex((m) => m.type === 'Z')
      if (end >= 0) {
        const taken = messages.slice(0, end + 1)
        received = received.subarray(taken.reduce((n, m) => n + 5 + m.body.length, 0))
        return taken
      }
      await new Promise<void>((resolve) => (wake = resolve))
    }
  }
  const next = async (): Promise<WireMessage> => {
    for (;;) {
      const [first] = parseMessages(received)
      if (first) {
        received = received.subarray(5 + first.body.length)
        return first
      }
      await new Promise<void>((resolve) => (wake = resolve))
    }
  }
  socket.write(
    startupMessage({
      user: 'raw',
      database: cluster.database,
      client_encoding: 'UTF8',
      application_name: applicationName,
    }),
  )
  await untilReady()
  return {
    send: (...messages) => socket.write(Buffer.concat(messages)),
    untilReady,
    next,
    close: () => socket.destroy(),
  }
}

void t.test("the client's unnamed statement survives the state probe and a swap", async (t) => {
  const proxy = await rotatingProxy(t, 'swap_unnamed', 4)
  const raw = await rawSession(proxy)
  t.teardown(() => raw.close())
  const bindExecute = (value: string): Buffer[] => [
    serialize.bind({ statement: '', values: [value] }),
    serialize.execute(),
    serialize.sync(),
  ]
  // A statement that changes state makes the proxy probe at the idle point between the round trips.
  raw.send(
    serialize.parse({ text: "select pg_catalog.set_config('app.user', $1, false) as v", types: [25] }),
    serialize.describe({ type: 'S' }),
    serialize.sync(),
  )
  t.same(
    (await raw.untilReady()).map((m) => m.type),
    ['1', 't', 'T', 'Z'],
  )
  await new Promise((resolve) => setTimeout(resolve, 200))
  raw.send(...bindExecute('alice'))
  const first = await raw.untilReady()
  t.same(
    first.map((m) => m.type),
    ['2', 'D', 'C', 'Z'],
    'Bind of the unnamed statement works after the probe',
  )
  t.ok(
    await eventually(15, async () => (await moves(proxy, 'swap', 'moved')) >= 1),
    'the session moved to a new credential',
  )
  raw.send(...bindExecute('bob'))
  const second = await raw.untilReady()
  t.same(
    second.filter((m) => m.type !== 'S').map((m) => m.type),
    ['2', 'D', 'C', 'Z'],
    'and after the move',
  )
  t.ok(
    second.some((m) => m.type === 'S' && m.body.toString().startsWith('session_authorization\0v-')),
    'the client was told the new session_authorization',
  )
  t.match(second.find((m) => m.type === 'D')?.body.toString(), /bob/)
})

void t.test('a LATIN1 client: its settings keep their characters across a swap', async (t) => {
  const proxy = await rotatingProxy(t, 'swap_latin1', 4)
  const script = `${proxy.socketDir}/latin1.sql`
  await writeFile(
    script,
    Buffer.from(
      [
        "set app.tenant = 'café';",
        'select session_user;',
        '\\! sleep 6',
        'select session_user;',
        "select current_setting('app.tenant') = 'café' as same, length(current_setting('app.tenant'));",
      ].join('\n') + '\n',
      'latin1',
    ),
  )
  const out = await runClient(
    'psql',
    [
      ...['-h', proxy.host, '-p', String(proxy.port), '-U', 'latin', '-d', cluster.database],
      '-X',
      '-A',
      '-t',
      '-F',
      ' ',
      '-v',
      'ON_ERROR_STOP=1',
      '-f',
      script,
    ],
    { env: { PGCLIENTENCODING: 'LATIN1' }, encoding: 'latin1' },
  )
  t.equal(out.code, 0, out.out)
  const [user1, user2, check] = out.out.trim().split('\n').slice(-3)
  t.not(user1, user2, 'the session moved')
  t.equal(check, 't 4', "the setting is still 'café', four characters")
})

void t.test('a session parked after 57P05 still honours idle_client_timeout_ms and the shutdown drain', async (t) => {
  const proxy = await startProxy(t, cluster, { idle_client_timeout_ms: 1500 })
  const client = await proxy.client({ application_name: 'parked' })
  const ended = new Promise<Error & { code?: string }>((resolve) => client.on('error', resolve))
  await client.query("set idle_session_timeout = '200ms'")
  const err = await Promise.race([ended, new Promise<undefined>((resolve) => setTimeout(resolve, 5_000))])
  t.equal(err?.code, '57P05', "the proxy's own idle timeout ends the parked session")
  t.match(err?.message, /idle_client_timeout_ms = 1500/)

  const drained = await startProxy(t, cluster)
  const other = await drained.client({ application_name: 'parked-drain' })
  await other.query("set idle_session_timeout = '200ms'")
  await new Promise((resolve) => setTimeout(resolve, 600))
  const started = Date.now()
  await drained.server.drain(10_000)
  t.ok(Date.now() - started < 5_000, 'the drain did not wait for the parked session')
})

void t.test('an upstream lost during COPY, or while holding a temp table: a prompt error that says why', async (t) => {
  const proxy = await startUnwarmed(t)
  await cluster.query('create table if not exists rotation_copy (n int)')
  await cluster.query('grant all on rotation_copy to app_owner')
  const raw = await rawSession(proxy, 'in-copy')
  t.teardown(() => raw.close())
  raw.send(serialize.query('copy rotation_copy from stdin'))
  t.same((await raw.next()).type, 'G', 'in COPY IN')
  await terminate(await backendOf('in-copy'))
  const fatal = await raw.next()
  t.equal(fatal.type, 'E')
  const fields = errorFieldsOf(fatal.body)
  t.equal(fields.C, '57P01')
  t.match(fields.D, /request in flight/, 'the DETAIL says why it was not reconnected')

  const holder = await proxy.client({ application_name: 'temp-lost' })
  const ended = new Promise<Error & { code?: string; detail?: string }>((resolve) => holder.on('error', resolve))
  await holder.query('create temp table keep_me (n int)')
  await holder.query('select 1') // the probe after CREATE TEMP has run by now
  await terminate(await backendOf('temp-lost'))
  const err = await ended
  t.equal(err.code, '57P01')
  t.match(err.detail, /held temporary tables, which cannot move/)
  t.equal(await moves(proxy, 'reconnect', 'moved'), 0, 'neither was reconnected')
})
