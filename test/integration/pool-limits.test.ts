import { connect } from 'node:net'
import pg from 'pg'
import t from 'tap'
import { sample } from '../support/ops-probe.js'
import { clusterFor } from '../support/pg-cluster.js'
import { startProxy, type RunningProxy } from '../support/proxy-harness.js'
import { eventually, vaultFor } from '../support/vault-target.js'
import { startupMessage } from '../support/wire-builder.js'

// pool.max_server_connections (clients wait in line, then 53300), and pool.min_idle (connections
// logged in ahead of clients), against the real cluster; backend pids tell connections apart.
const cluster = await clusterFor(t)

/** A client of the proxy as user app (ended at the proxy's teardown if the test does not end it). */
const connected = (proxy: RunningProxy, options: pg.ClientConfig = {}): Promise<pg.Client> =>
  proxy.client({ user: 'app', ...options })

const pid = (client: pg.Client): Promise<number> =>
  client.query<{ pid: number }>('select pg_backend_pid() as pid').then((r) => r.rows[0]!.pid)

const poolOf = (proxy: RunningProxy) => proxy.server.status().routes[0]!.pool

async function metric(proxy: RunningProxy, name: string, labels: Record<string, string> = {}): Promise<number> {
  return sample(await proxy.server.metrics.registry.metrics(), name, { route: 'default', ...labels }) ?? 0
}

async function until(what: string, check: () => boolean | Promise<boolean>, seconds = 10): Promise<void> {
  if (!(await eventually(seconds, async () => check()))) throw new Error(`not within ${seconds} s: ${what}`)
}

const backendAlive = async (p: number): Promise<boolean> =>
  (await cluster.query(`select 1 from pg_stat_activity where pid = ${p}`)).length > 0

void t.test('at the limit a client waits in line and gets the connection that comes back', async (t) => {
  const proxy = await startProxy(t, cluster, {
    pool: { max_server_connections: 1, min_idle: 0, wait_timeout_ms: 60_000 },
  })
  const first = await connected(proxy)
  const firstPid = await pid(first)
  t.match(poolOf(proxy), { idle: 0, linked: 1, opening: 0, waiting: 0, max: 1 }, '/status: one linked, limit 1')
  let secondConnected = false
  const second = connected(proxy).then((c) => {
    secondConnected = true
    return c
  })
  await until('the second client waits', () => poolOf(proxy).waiting === 1)
  t.notOk(secondConnected, 'the second client is not greeted while it waits')
  t.equal(await metric(proxy, 'pg_vault_proxy_pool_waiting_clients'), 1, 'the waiting gauge')
  await first.end()
  const client = await second
  t.equal(await pid(client), firstPid, 'it got the connection the first client left')
  t.equal(poolOf(proxy).waiting, 0)
  t.equal(await metric(proxy, 'pg_vault_proxy_pool_wait_seconds_count'), 1, 'one wait recorded')
  t.equal(await metric(proxy, 'pg_vault_proxy_upstream_logins_total'), 1, 'no second login')
  await client.end()
})

void t.test('a client that waits past pool.wait_timeout_ms is refused with 53300, saying why', async (t) => {
  const proxy = await startProxy(t, cluster, {
    pool: { max_server_connections: 1, min_idle: 0, wait_timeout_ms: 200 },
  })
  const holder = await connected(proxy)
  const refused = await connected(proxy, { application_name: 'late-comer' }).then(
    () => undefined,
    (err: pg.DatabaseError) => err,
  )
  t.equal(refused?.code, '53300', 'too_many_connections')
  t.match(refused?.message, /pool\.max_server_connections \(1\)/, 'names the setting and its value')
  t.match(refused?.message, `route "default", database "${cluster.database}", application_name "late-comer"`)
  t.match(refused?.message, /pool\.wait_timeout_ms \(200 ms\)/)
  t.match(refused?.hint, /raise pool\.max_server_connections/, 'and says what to do')
  t.equal(await metric(proxy, 'pg_vault_proxy_pool_wait_timeouts_total'), 1)
  t.equal(
    sample(await proxy.server.metrics.registry.metrics(), 'pg_vault_proxy_session_failures_total', {
      reason: 'too_many_server_connections',
    }),
    1,
    'counted as a refusal',
  )
  t.equal(await one(holder), 1, 'the client holding the connection is unaffected')
  await holder.end()
  const after = await connected(proxy)
  t.equal(await one(after), 1, 'once it is free, the next client gets in')
  await after.end()
})

const one = (client: pg.Client): Promise<number> =>
  client.query<{ n: number }>('select 1 as n').then((r) => r.rows[0]!.n)

void t.test('a waiting client that leaves leaves the line', async (t) => {
  const proxy = await startProxy(t, cluster, {
    pool: { max_server_connections: 1, min_idle: 0, wait_timeout_ms: 60_000 },
  })
  const holder = await connected(proxy)
  const holderPid = await pid(holder)
  const quitter = connect(proxy.port, proxy.host)
  quitter.on('error', () => {})
  quitter.write(startupMessage({ user: 'app', database: cluster.database }))
  await until('the raw client waits', () => poolOf(proxy).waiting === 1)
  quitter.destroy()
  await until('it left the line', () => poolOf(proxy).waiting === 0)
  const next = connected(proxy)
  await until('the next client waits', () => poolOf(proxy).waiting === 1)
  await holder.end()
  const client = await next
  t.equal(await pid(client), holderPid, 'the connection went to the client still waiting')
  t.equal(await metric(proxy, 'pg_vault_proxy_upstream_logins_total'), 1, 'nobody logged in for the one who left')
  t.match(poolOf(proxy), { linked: 1, opening: 0, waiting: 0 })
  await client.end()
})

void t.test('a drain refuses the clients waiting in line with 57P03', async (t) => {
  const proxy = await startProxy(t, cluster, {
    pool: { max_server_connections: 1, min_idle: 0, wait_timeout_ms: 60_000 },
  })
  const holder = await connected(proxy)
  const waiter = connected(proxy).then(
    () => undefined,
    (err: pg.DatabaseError) => err,
  )
  await until('the second client waits', () => poolOf(proxy).waiting === 1)
  const drained = proxy.server.drain(10_000)
  t.equal((await waiter)?.code, '57P03', 'refused as shutting down, not left waiting')
  await drained
  t.equal(poolOf(proxy).waiting, 0)
  await holder.end().catch(() => undefined)
})

void t.test('at the limit an idle connection of another key is closed to make room', async (t) => {
  const proxy = await startProxy(t, cluster, { pool: { max_server_connections: 1, min_idle: 0 } })
  // work_mem must match by value (application_name would be set on link: the same key).
  const a = await connected(proxy, { options: '-c work_mem=4MB' })
  const aPid = await pid(a)
  await a.end()
  await until('its connection is pooled', () => poolOf(proxy).idle === 1)
  const b = await connected(proxy, { options: '-c work_mem=8MB' })
  t.not(await pid(b), aPid, 'another key: another connection')
  t.match(poolOf(proxy), { idle: 0, linked: 1 }, 'the idle one gave way')
  t.ok(await eventually(5, async () => !(await backendAlive(aPid))), 'its backend ended')
  t.equal(await metric(proxy, 'pg_vault_proxy_pool_wait_seconds_count'), 0, 'nobody had to wait')
  await b.end()
})

void t.test('pool.mode none: max_server_connections limits server connections all the same', async (t) => {
  const proxy = await startProxy(t, cluster, {
    pool: { mode: 'none', max_server_connections: 2, wait_timeout_ms: 200 },
  })
  const a = await connected(proxy)
  const b = await connected(proxy)
  const refused = await connected(proxy).then(
    () => undefined,
    (err: pg.DatabaseError) => err,
  )
  t.equal(refused?.code, '53300', 'the third client is refused')
  t.match(poolOf(proxy), { mode: 'none', idle: 0, linked: 2, max: 2 })
  await a.end()
  await until('the closed connection frees its slot', () => poolOf(proxy).linked === 1)
  const c = await connected(proxy)
  t.equal(await one(c), 1, 'a slot came free when a client left')
  await Promise.all([b.end(), c.end()])
  await until('nothing linked', () => poolOf(proxy).linked === 0)
  t.equal(poolOf(proxy).idle, 0, 'and nothing kept')
})

void t.test('pool.min_idle: a connection is logged in ahead of the next client', async (t) => {
  const proxy = await startProxy(t, cluster) // min_idle 1 by default
  const first = await connected(proxy, { application_name: 'warm' })
  const firstPid = await pid(first)
  await until('a connection is pre-warmed', () => poolOf(proxy).idle === 1)
  const waiting = await cluster.query<{ pid: number; usename: string }>(
    "select pid, usename from pg_stat_activity where application_name = 'warm' and pid <> $1",
    [firstPid],
  )
  t.equal(waiting.length, 1, 'one more backend for the same key, before any second client')
  t.equal(await metric(proxy, 'pg_vault_proxy_pool_prewarms_total', { outcome: 'ok' }), 1)
  const second = await connected(proxy, { application_name: 'warm' })
  t.equal(await pid(second), waiting[0]!.pid, 'the next client runs on the pre-warmed backend')
  const who = await second.query<Record<string, string>>(
    "select current_user, session_user, current_setting('application_name') as app",
  )
  t.same(
    who.rows[0],
    { current_user: cluster.ownerRole, session_user: cluster.users.scram.user, app: 'warm' },
    'logged in as a fresh login would be: the owner role, the client parameters',
  )
  t.equal(await metric(proxy, 'pg_vault_proxy_upstream_logins_total'), 1, 'only the first client logged in')
  t.equal(await metric(proxy, 'pg_vault_proxy_pool_reuses_total'), 1)
  await until('another one is pre-warmed', () => poolOf(proxy).idle === 1)
  t.match(poolOf(proxy), { linked: 2, idle: 1 })
  await Promise.all([first.end(), second.end()])
})

void t.test('pool.min_idle never goes past max_server_connections', async (t) => {
  const proxy = await startProxy(t, cluster, { pool: { max_server_connections: 2, min_idle: 3 } })
  const client = await connected(proxy)
  // Pre-warming opens what is missing at once, within the limit: one, not three.
  await until('the one connection that fits is warm', () => poolOf(proxy).idle === 1 && poolOf(proxy).opening === 0)
  t.match(poolOf(proxy), { linked: 1, idle: 1, opening: 0, max: 2 }, 'the limit, and no more')
  t.equal(await metric(proxy, 'pg_vault_proxy_pool_prewarms_total', { outcome: 'ok' }), 1)
  await client.end()
})

void t.test('pre-warming that fails backs off, logs once, and recovers', async (t) => {
  // One connection for the login user: the client's own; the pool's pre-warm logins are refused (53300).
  await cluster.query(`alter role ${cluster.users.scram.user} connection limit 1`)
  t.teardown(() => cluster.query(`alter role ${cluster.users.scram.user} connection limit -1`))
  const proxy = await startProxy(t, cluster)
  const client = await connected(proxy)
  await until('pre-warming failed twice', async () => {
    return (await metric(proxy, 'pg_vault_proxy_pool_prewarms_total', { outcome: 'failed' })) >= 2
  })
  const warnings = (): number =>
    proxy.logs.filter((l) => String(l.msg).startsWith('pre-warming a server connection failed')).length
  t.equal(warnings(), 1, 'one warning for the run of failures, not one per attempt')
  t.equal(await one(client), 1, "the client's session is unaffected")
  await cluster.query(`alter role ${cluster.users.scram.user} connection limit -1`)
  // The next attempt comes when the backoff says: on a loaded machine more failures may have
  // doubled it past a few seconds (it stops doubling at 60 s).
  await until('a connection is pre-warmed once logins work again', () => poolOf(proxy).idle === 1, 70)
  t.ok(
    proxy.logs.some((l) => l.msg === 'pre-warming server connections works again'),
    'and says so',
  )
  t.equal(warnings(), 1)
  await client.end()
})

void t.test('after a credential switch the pre-warmed connections use the new credential', async (t) => {
  const vault = await vaultFor(t, cluster)
  const db = await vault.database()
  await db.createDynamicRole({ name: 'pool_warm', defaultTtl: 600, maxTtl: 600 })
  const proxy = await startProxy(t, cluster, {
    vault: { address: vault.address, auth: { method: 'token', token: vault.token } },
    credentials: { vault: { role: 'pool_warm' } },
  })
  const client = await connected(proxy, { application_name: 'switch' })
  const before = (await client.query<{ u: string }>('select session_user as u')).rows[0]!.u
  await until('a connection is pre-warmed', () => poolOf(proxy).idle === 1)
  const warmed = await cluster.query<{ usename: string }>(
    "select usename from pg_stat_activity where application_name = 'switch'",
  )
  t.same(
    warmed.map((r) => r.usename),
    [before, before],
    'the session and the pre-warmed connection on the first credential',
  )
  // Inside a transaction the session cannot move yet: the pool gets there first.
  await client.query('begin')
  // What a refused login does: the source drops the lease, superseding it, and fetches a new one.
  const credentials = proxy.server.currentRoutes[0]!.credentials
  await credentials.invalidate(await credentials.get())
  let warmPid = 0
  await until('a connection on the new credential is warm', async () => {
    const rows = await cluster.query<{ pid: number }>(
      "select pid from pg_stat_activity where application_name = 'switch' and usename <> $1",
      [before],
    )
    warmPid = rows[0]?.pid ?? 0
    return poolOf(proxy).idle === 1 && rows.length === 1
  })
  const logins = await metric(proxy, 'pg_vault_proxy_upstream_logins_total')
  await client.query('commit')
  t.ok(
    await eventually(
      10,
      async () => (await client.query<{ u: string }>('select session_user as u')).rows[0]!.u !== before,
    ),
    'the session moved to the new credential at its next idle point',
  )
  t.equal(await pid(client), warmPid, 'onto the pre-warmed connection: no login while it waited')
  await until('the old credential is gone and another connection is warm', async () => {
    const users = await cluster.query<{ usename: string }>(
      "select usename from pg_stat_activity where application_name = 'switch'",
    )
    return poolOf(proxy).idle === 1 && users.length === 2 && users.every((u) => u.usename !== before)
  })
  const next = await connected(proxy, { application_name: 'switch' })
  const after = (await next.query<{ u: string }>('select session_user as u')).rows[0]!.u
  t.not(after, before, 'the next client runs on the new credential')
  t.equal(await metric(proxy, 'pg_vault_proxy_upstream_logins_total'), logins, 'on a pre-warmed connection too')
  await Promise.all([client.end(), next.end()])
})
