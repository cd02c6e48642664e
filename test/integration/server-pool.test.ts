import { spawn } from 'node:child_process'
import pg from 'pg'
import t, { type Test } from 'tap'
import { clusterFor } from '../support/pg-cluster.js'
import { startProxy, type RunningProxy } from '../support/proxy-harness.js'
import { runClient } from '../support/run-client.js'

// Server connections reused between clients (pool.mode: session): a client that ends cleanly leaves
// its logged-in connection, reset with DISCARD ALL, for the next client with the same database and
// startup parameters. Each test reads the backend pid to tell a reused connection from a fresh login.
const cluster = await clusterFor(t)

/**
 * A proxy whose pool keeps only what clients leave (pool.min_idle 0): the tests of reuse tell a
 * connection's next client by its backend pid, which a pre-warmed connection would muddle.
 */
const startPool = (t: Test, pool: Record<string, unknown> = {}): Promise<RunningProxy> =>
  startProxy(t, cluster, { pool: { min_idle: 0, ...pool } })

/** One psql run of `sql` through the proxy, unaligned and tuples only; its output, or an error with what psql said. */
async function psqlOnce(proxy: RunningProxy, sql: string, env: Record<string, string> = {}): Promise<string> {
  const args = ['-X', '-At', '-h', proxy.host, '-p', String(proxy.port), '-U', 'anyone', '-d', cluster.database]
  const r = await runClient('psql', [...args, '-c', sql], { env })
  if (r.code !== 0) throw new Error(r.out)
  return r.stdout.trim()
}

async function once<T>(
  proxy: RunningProxy,
  run: (client: pg.Client) => Promise<T>,
  options: pg.ClientConfig = {},
): Promise<T> {
  const client = new pg.Client({
    host: proxy.host,
    port: proxy.port,
    user: 'app',
    database: cluster.database,
    ...options,
  })
  client.on('error', () => {})
  await client.connect()
  try {
    return await run(client)
  } finally {
    await client.end()
  }
}

const pid = (client: pg.Client): Promise<number> =>
  client.query<{ pid: number }>('select pg_backend_pid() as pid').then((r) => r.rows[0]!.pid)

/** The connection goes back to the pool after the client left; wait until it is there. */
async function pooled(proxy: RunningProxy, count = 1): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if ((proxy.server.status().routes[0]?.pool.idle ?? 0) >= count) return
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  throw new Error(`no ${count} pooled connection(s) after 2 s`)
}

async function metric(proxy: RunningProxy, name: string, labels = ''): Promise<number> {
  const text = await proxy.server.metrics.registry.metrics()
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(labels))
  return line ? Number(line.split(' ').pop()) : 0
}

void t.test('consecutive clients reuse one logged-in server connection', async (t) => {
  const proxy = await startPool(t)
  const first = await once(proxy, pid)
  await pooled(proxy)
  const second = await once(proxy, pid)
  await pooled(proxy)
  const third = await once(proxy, pid)
  await pooled(proxy) // the third connection's reset has run too
  t.equal(second, first, "the second client runs on the first one's backend")
  t.equal(third, first, 'and so does the third')
  t.equal(await metric(proxy, 'pg_vault_proxy_pool_reuses_total', 'route="default"'), 2)
  t.equal(await metric(proxy, 'pg_vault_proxy_upstream_logins_total', 'route="default"'), 1)
  t.equal(await metric(proxy, 'pg_vault_proxy_pool_resets_total', 'outcome="ok"'), 3)
  const ends = proxy.logs.filter((l) => l.msg === 'session ended')
  t.same(
    ends.map((l) => l.reused),
    [false, true, true],
    'the audit line says whether the session reused a connection',
  )
  t.equal(proxy.server.status().routes[0]?.pool.mode, 'session', '/status shows the pool')
})

void t.test('psql twice: the same backend, and the owner role as ever', async (t) => {
  const proxy = await startPool(t)
  const psql = (): Promise<string> => psqlOnce(proxy, 'select pg_backend_pid(), current_user')
  const first = await psql()
  await pooled(proxy)
  const second = await psql()
  t.match(first, /^\d+\|app_owner$/)
  t.equal(second, first, 'same pid, same current_user')
})

void t.test('nothing a client leaves behind reaches the next client', async (t) => {
  const proxy = await startPool(t)
  const firstPid = await once(proxy, async (client) => {
    await client.query('set search_path = pg_catalog')
    await client.query("set statement_timeout = '1234ms'")
    await client.query('set application_name = left_behind')
    await client.query("set timezone = 'Asia/Tokyo'")
    await client.query('prepare leftover as select 1')
    await client.query({ name: 'protocol_level', text: 'select 2' })
    await client.query('listen leftover_channel')
    await client.query('create temp table leftover_temp (id int)')
    await client.query('select pg_advisory_lock(4242)')
    await client.query('begin')
    await client.query('declare leftover_cursor cursor with hold for select 1')
    await client.query('commit')
    await client.query('set role none')
    return pid(client)
  })
  await pooled(proxy)
  const seen = await once(proxy, async (client) => ({
    pid: await pid(client),
    state: (
      await client.query<Record<string, unknown>>(`select
        current_user, session_user,
        current_setting('search_path') as search_path,
        current_setting('statement_timeout') as statement_timeout,
        current_setting('application_name') as application_name,
        current_setting('TimeZone') = (select reset_val from pg_settings where name = 'TimeZone') as default_timezone,
        (select count(*)::int from pg_prepared_statements) as prepared,
        (select count(*)::int from pg_listening_channels()) as listening,
        to_regclass('pg_temp.leftover_temp') is null as no_temp_table,
        (select count(*)::int from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()) as advisory_locks,
        (select count(*)::int from pg_cursors) as cursors`)
    ).rows[0],
  }))
  t.equal(seen.pid, firstPid, 'the second client got the same backend')
  t.same(seen.state, {
    current_user: 'app_owner',
    session_user: cluster.users.scram.user,
    search_path: '"$user", public',
    statement_timeout: '0',
    application_name: '',
    default_timezone: true,
    prepared: 0,
    listening: 0,
    no_temp_table: true,
    advisory_locks: 0,
    cursors: 0,
  })
  t.equal(
    await cluster.query("select 1 from pg_locks where locktype = 'advisory'").then((r) => r.length),
    0,
    'the advisory lock was released',
  )
})

void t.test('the greeting after reuse carries the reset values, as a fresh login would', async (t) => {
  const proxy = await startPool(t)
  const greeting = async (
    setup?: (client: pg.Client) => Promise<unknown>,
  ): Promise<{ pid: number; params: Map<string, string> }> => {
    const params = new Map<string, string>()
    const client = new pg.Client({
      host: proxy.host,
      port: proxy.port,
      user: 'app',
      database: cluster.database,
      application_name: 'greeter',
    })
    client.on('error', () => {})
    let greeted = false
    // Only the greeting: values set later in the session come after its first ReadyForQuery.
    client.connection.on('parameterStatus', (m: { parameterName: string; parameterValue: string }) => {
      if (!greeted) params.set(m.parameterName, m.parameterValue)
    })
    client.connection.once('readyForQuery', () => (greeted = true))
    await client.connect()
    const p = await pid(client)
    await setup?.(client)
    await client.end()
    return { pid: p, params }
  }
  const fresh = await greeting(async (client) => {
    await client.query("set timezone = 'Asia/Tokyo'")
    await client.query("set application_name = 'changed'")
    await client.query("set datestyle = 'German'")
    await client.query("set intervalstyle = 'iso_8601'")
  })
  await pooled(proxy)
  const reused = await greeting()
  t.equal(reused.pid, fresh.pid, 'reused')
  t.same(
    Object.fromEntries(reused.params),
    Object.fromEntries(fresh.params),
    'the same ParameterStatus set as the fresh login',
  )
  t.equal(reused.params.get('application_name'), 'greeter', "the client's own application_name")
})

void t.test('different startup parameters do not share connections', async (t) => {
  const proxy = await startPool(t)
  const a = await once(proxy, pid, { options: '-c work_mem=4MB' })
  await pooled(proxy)
  const b = await once(proxy, pid, { options: '-c work_mem=8MB' })
  t.not(b, a, 'other options: another connection')
  await pooled(proxy, 2)
  t.equal(await once(proxy, pid, { options: '-c work_mem=4MB' }), a, 'the first key still finds its connection')
})

/** A node-postgres client that sends `extra` in its startup packet too (node-postgres itself only sends a few). */
function clientWith(proxy: RunningProxy, extra: Record<string, string>): pg.Client {
  const client = new pg.Client({ host: proxy.host, port: proxy.port, user: 'app', database: cluster.database })
  const conf = client as unknown as { getStartupConf: () => Record<string, string> }
  const base = conf.getStartupConf.bind(client)
  conf.getStartupConf = () => ({ ...base(), ...extra })
  client.on('error', () => {})
  return client
}

interface Linked {
  pid: number
  /** The ParameterStatus values of the greeting (before the first ReadyForQuery). */
  greeting: Record<string, string>
  /** What the session says its settings are. */
  settings: Record<string, string | boolean>
}

/** Connects with `extra` startup parameters, reads the greeting and the settings; keeps the client open until `end`. */
async function linked(proxy: RunningProxy, extra: Record<string, string>): Promise<Linked & { end(): Promise<void> }> {
  const client = clientWith(proxy, extra)
  const greeting: Record<string, string> = {}
  let greeted = false
  client.connection.on('parameterStatus', (m: { parameterName: string; parameterValue: string }) => {
    if (!greeted) greeting[m.parameterName] = m.parameterValue
  })
  client.connection.once('readyForQuery', () => (greeted = true))
  await client.connect()
  const settings = (
    await client.query<Record<string, string | boolean>>(`select
      current_setting('application_name') as application_name,
      current_setting('TimeZone') as timezone,
      current_setting('client_encoding') as client_encoding,
      current_setting('IntervalStyle') as intervalstyle,
      now()::text like '%+09' as tokyo_offset`)
  ).rows[0]!
  return { pid: await pid(client), greeting, settings, end: () => client.end() }
}

void t.test(
  'clients that differ only in linkable parameters share a connection, each with its own values',
  async (t) => {
    const proxy = await startPool(t)
    // `timezone` as libpq sends it for PGTZ; the second client spells it `TimeZone`: one parameter.
    const first = await linked(proxy, {
      application_name: 'first',
      timezone: 'UTC',
      client_encoding: 'UTF8',
      intervalstyle: 'postgres',
    })
    await first.end()
    await pooled(proxy)
    const second = await linked(proxy, {
      application_name: 'second',
      TimeZone: 'Asia/Tokyo',
      client_encoding: 'unicode',
      IntervalStyle: 'iso_8601',
    })
    t.equal(second.pid, first.pid, 'the same backend')
    t.same(
      second.settings,
      {
        application_name: 'second',
        timezone: 'Asia/Tokyo',
        client_encoding: 'UTF8',
        intervalstyle: 'iso_8601',
        tokyo_offset: true,
      },
      "the session runs with the second client's values",
    )
    // A fresh login with the same parameters, while the linked one is busy: the greetings must match.
    const fresh = await linked(proxy, {
      application_name: 'second',
      TimeZone: 'Asia/Tokyo',
      client_encoding: 'unicode',
      IntervalStyle: 'iso_8601',
    })
    t.not(fresh.pid, second.pid, 'the comparison is a fresh login')
    t.equal(second.greeting.application_name, 'second')
    t.equal(second.greeting.TimeZone, 'Asia/Tokyo')
    t.equal(second.greeting.client_encoding, 'UTF8', 'the alias reads as the server names it')
    t.same(second.greeting, fresh.greeting, 'the greeting is the one a fresh login gives')
    await Promise.all([second.end(), fresh.end()])
    await pooled(proxy, 2)
    t.equal(
      await metric(proxy, 'pg_vault_proxy_upstream_logins_total', 'route="default"'),
      2,
      'two logins for three clients',
    )
  },
)

void t.test('search_path, not reported before PostgreSQL 18, is set on every link, as a list', async (t) => {
  const proxy = await startPool(t)
  const path = async (value: string): Promise<{ pid: number; path: string }> => {
    const client = clientWith(proxy, { search_path: value })
    await client.connect()
    try {
      const row = (await client.query<{ p: string }>("select current_setting('search_path') as p")).rows[0]!
      return { pid: await pid(client), path: row.p }
    } finally {
      await client.end()
    }
  }
  const first = await path('public')
  await pooled(proxy)
  const second = await path('pg_catalog, public')
  await pooled(proxy)
  const third = await path('public')
  t.same(
    [first, second, third],
    [
      { pid: first.pid, path: 'public' },
      { pid: first.pid, path: 'pg_catalog, public' },
      { pid: first.pid, path: 'public' },
    ],
  )
})

void t.test("after the reset the pool knows the connection is back at its first client's values", async (t) => {
  const proxy = await startPool(t)
  const values = { application_name: 'second', TimeZone: 'Asia/Tokyo' }
  const first = await linked(proxy, { application_name: 'first', TimeZone: 'UTC' })
  await first.end()
  await pooled(proxy)
  const second = await linked(proxy, values)
  await second.end()
  await pooled(proxy)
  // DISCARD ALL put back 'first' and UTC; had the pool kept the second client's values, the third
  // client, who sends the same, would not be given them.
  const third = await linked(proxy, values)
  await third.end()
  t.equal(third.pid, first.pid, 'one backend for all three')
  t.equal(second.pid, first.pid)
  t.same([third.settings.application_name, third.settings.timezone], ['second', 'Asia/Tokyo'])
  t.same([third.greeting.application_name, third.greeting.TimeZone], ['second', 'Asia/Tokyo'])
})

void t.test('a client without a linkable parameter does not get a connection whose first client sent it', async (t) => {
  const proxy = await startPool(t)
  const named = await once(proxy, pid, { application_name: 'named' })
  await pooled(proxy)
  const unnamed = await once(proxy, async (client) => ({
    pid: await pid(client),
    name: (await client.query<{ n: string }>("select current_setting('application_name') as n")).rows[0]!.n,
  }))
  t.not(unnamed.pid, named, 'another connection')
  t.equal(unnamed.name, '', 'and no application_name')
  await pooled(proxy, 2)
  t.equal(await once(proxy, pid, { application_name: 'renamed' }), named, 'another name does get it')
})

void t.test(
  'a value the server refuses on link is refused as at a fresh login, and the connection stays pooled',
  async (t) => {
    const proxy = await startPool(t)
    const refusal = async (): Promise<Record<string, unknown>> => {
      const client = clientWith(proxy, { TimeZone: 'nonsense' })
      const err = (await client.connect().then(
        () => new Error('connected'),
        (e: unknown) => e,
      )) as pg.DatabaseError
      return { code: err.code, severity: err.severity, message: err.message }
    }
    const fresh = await refusal()
    t.same(
      fresh,
      { code: '22023', severity: 'FATAL', message: 'invalid value for parameter "TimeZone": "nonsense"' },
      'a fresh login with a bad TimeZone is refused by the server',
    )
    const good = await linked(proxy, { TimeZone: 'UTC' })
    await good.end()
    await pooled(proxy)
    t.same(await refusal(), fresh, 'the link refuses it the same way')
    await pooled(proxy)
    const after = await linked(proxy, { TimeZone: 'Europe/Paris' })
    await after.end()
    t.equal(after.pid, good.pid, 'the connection went back to the pool and serves the next client')
    t.equal(after.settings.timezone, 'Europe/Paris')
    t.equal(
      await metric(proxy, 'pg_vault_proxy_upstream_logins_total', 'route="default"'),
      2,
      'the refused fresh login and the first good one: the second refusal came from the link',
    )
  },
)

void t.test('psql with PGTZ, PGAPPNAME and PGCLIENTENCODING: two runs, one backend, each its own values', async (t) => {
  const proxy = await startPool(t)
  const psql = (env: Record<string, string>): Promise<string> =>
    psqlOnce(
      proxy,
      "select pg_backend_pid(), current_setting('application_name'), current_setting('TimeZone'), current_setting('client_encoding')",
      env,
    )
  const [firstPid, ...first] = (await psql({ PGTZ: 'UTC', PGAPPNAME: 'one', PGCLIENTENCODING: 'UTF8' })).split('|')
  await pooled(proxy)
  const [secondPid, ...second] = (
    await psql({ PGTZ: 'America/New_York', PGAPPNAME: 'two', PGCLIENTENCODING: 'LATIN1' })
  ).split('|')
  t.same(first, ['one', 'UTC', 'UTF8'])
  t.same(second, ['two', 'America/New_York', 'LATIN1'])
  t.equal(secondPid, firstPid, 'the same backend')
})

void t.test('unclean ends close the connection instead of pooling it', async (t) => {
  const proxy = await startPool(t)
  // Inside a transaction: Terminate while status is T.
  const inTx = await once(proxy, async (client) => {
    await client.query('begin')
    await client.query('create table pool_uncommitted (id int)')
    return pid(client)
  })
  // A client that vanishes without Terminate.
  const client = new pg.Client({ host: proxy.host, port: proxy.port, user: 'app', database: cluster.database })
  client.on('error', () => {})
  await client.connect()
  const killed = await pid(client)
  ;(client as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy()
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.equal(proxy.server.status().routes[0]?.pool.idle, 0, 'nothing pooled')
  const next = await once(proxy, pid)
  t.not(next, inTx, 'the connection left inside a transaction was not reused')
  t.not(next, killed, 'nor the one whose client vanished')
  const gone = await cluster.query<{ n: number }>(
    `select count(*)::int as n from pg_stat_activity where pid in (${inTx}, ${killed})`,
  )
  t.equal(gone[0]?.n, 0, 'both backends ended')
  t.equal(
    (await cluster.query("select 1 from pg_tables where tablename = 'pool_uncommitted'")).length,
    0,
    'the open transaction was rolled back, not handed on',
  )
})

void t.test('a failed transaction, a Terminate mid-COPY, and a client gone mid-COPY: nothing is pooled', async (t) => {
  const proxy = await startPool(t)
  // Made outside the proxy, so that no pooled connection exists before the three clients below.
  await cluster.query(`create table pool_copy_in (id int); alter table pool_copy_in owner to ${cluster.ownerRole}`)
  /** Waits (bounded) until the backend `pid` runs a COPY. */
  const copying = async (backend: number): Promise<void> => {
    for (let i = 0; i < 250; i++) {
      const rows = await cluster.query(
        `select 1 from pg_stat_activity where pid = ${backend} and state = 'active' and query ilike 'copy%'`,
      )
      if (rows.length > 0) return
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
    throw new Error(`backend ${backend} never started its COPY`)
  }

  // Terminate while the transaction is failed (ReadyForQuery status E).
  const failed = await once(proxy, async (client) => {
    const backend = await pid(client)
    await client.query('begin')
    await client.query('select 1/0').catch(() => undefined)
    return backend
  })

  // Terminate while the server is still sending a COPY ... TO STDOUT.
  const copyOut = new pg.Client({ host: proxy.host, port: proxy.port, user: 'app', database: cluster.database })
  copyOut.on('error', () => {})
  await copyOut.connect()
  const copyOutPid = await pid(copyOut)
  const unfinished = copyOut
    .query("copy (select g, repeat('x', 100) from generate_series(1, 20000000) g) to stdout")
    .catch(() => undefined)
  await copying(copyOutPid)
  await copyOut.end()
  void unfinished

  // psql killed half-way through a COPY ... FROM STDIN.
  const args = ['-X', '-h', proxy.host, '-p', String(proxy.port), '-U', 'anyone', '-d', cluster.database]
  const psql = spawn('psql', [...args, '-c', 'copy pool_copy_in from stdin'], {
    env: { ...process.env, PGCONNECT_TIMEOUT: '10' },
  })
  psql.stdin.write('1\n2\n')
  let copyInPid: number | undefined
  for (let i = 0; i < 250 && copyInPid === undefined; i++) {
    const rows = await cluster.query<{ pid: number }>(
      "select pid from pg_stat_activity where query = 'copy pool_copy_in from stdin' and state = 'active'",
    )
    copyInPid = rows[0]?.pid
    if (copyInPid === undefined) await new Promise((resolve) => setTimeout(resolve, 20))
  }
  t.ok(copyInPid !== undefined, 'psql began its COPY')
  const exited = new Promise((resolve) => psql.once('close', resolve))
  psql.kill('SIGKILL')
  await exited

  const ended = [failed, copyOutPid, copyInPid ?? -1]
  for (let i = 0; i < 250; i++) {
    const rows = await cluster.query(`select 1 from pg_stat_activity where pid in (${ended.join(', ')})`)
    if (rows.length === 0) break
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  t.same(
    await cluster.query(`select pid from pg_stat_activity where pid in (${ended.join(', ')})`),
    [],
    'all three backends ended',
  )
  t.equal(proxy.server.status().routes[0]?.pool.idle, 0, 'none of their connections was pooled')
  // Closed where the session ended, not by a reset that failed afterwards: none was offered to the pool.
  for (const outcome of ['ok', 'failed'])
    t.equal(await metric(proxy, 'pg_vault_proxy_pool_resets_total', `outcome="${outcome}"`), 0, `no reset ${outcome}`)
  const next = await once(proxy, pid)
  t.notOk(ended.includes(next), 'the next client is on none of them')
  t.equal((await cluster.query('select 1 from pool_copy_in')).length, 0, 'the cut COPY stored nothing')
})

void t.test('a reset that fails closes the connection', async (t) => {
  const proxy = await startPool(t, { reset_query: 'select 1/0' })
  const first = await once(proxy, pid)
  // The reset runs after the client has gone: wait for its outcome.
  for (let i = 0; i < 250 && (await metric(proxy, 'pg_vault_proxy_pool_resets_total', 'outcome="failed"')) === 0; i++)
    await new Promise((resolve) => setTimeout(resolve, 20))
  t.equal(await metric(proxy, 'pg_vault_proxy_pool_resets_total', 'outcome="failed"'), 1)
  t.not(await once(proxy, pid), first)
})

void t.test('pool.mode none and max_idle 0: a fresh login for every client', async (t) => {
  for (const pool of [{ mode: 'none' }, { max_idle: 0 }]) {
    const proxy = await startPool(t, pool)
    const first = await once(proxy, pid)
    await new Promise((resolve) => setTimeout(resolve, 200))
    t.not(await once(proxy, pid), first, JSON.stringify(pool))
    t.equal(proxy.server.status().routes[0]?.pool.idle, 0)
    await proxy.stop()
  }
})

void t.test('pgbench with a new connection per transaction runs on a handful of reused connections', async (t) => {
  const proxy = await startProxy(t, cluster)
  const env = { PGHOST: proxy.host, PGPORT: String(proxy.port), PGUSER: 'anyone', PGDATABASE: cluster.database }
  const init = await runClient('pgbench', ['-i', '-s', '1', '-q'], { env })
  t.equal(init.code, 0, init.out)
  const run = await runClient('pgbench', ['-n', '-S', '-C', '-c', '4', '-t', '50'], { env })
  t.equal(run.code, 0, run.out)
  t.match(run.stdout, /number of transactions actually processed: 200\/200/)
  const logins = await metric(proxy, 'pg_vault_proxy_upstream_logins_total', 'route="default"')
  const reuses = await metric(proxy, 'pg_vault_proxy_pool_reuses_total', 'route="default"')
  t.ok(reuses >= 150, `most connections were reused (${reuses} reuses, ${logins} logins)`)
  t.ok(logins <= 30, `few upstream logins (${logins})`)
})

void t.test('stopping the proxy closes pooled connections', async (t) => {
  const proxy = await startPool(t)
  const p = await once(proxy, pid)
  await pooled(proxy)
  await proxy.stop()
  for (let i = 0; i < 50; i++) {
    const rows = await cluster.query(`select 1 from pg_stat_activity where pid = ${p}`)
    if (rows.length === 0) break
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  t.equal((await cluster.query(`select 1 from pg_stat_activity where pid = ${p}`)).length, 0, 'its backend ended')
})
