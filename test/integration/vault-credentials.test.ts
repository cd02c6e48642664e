import t from 'tap'
import { clusterFor } from '../support/pg-cluster.js'
import { startProxy, type RunningProxy } from '../support/proxy-harness.js'
import { flavorUnderTest } from '../support/vault-flavor.js'
import { runClient, type ClientRun } from '../support/run-client.js'
import { eventually, vaultFor } from '../support/vault-target.js'

// The proxy with credentials from the (dev) Vault: dynamic, static and KV sources, lease lifecycle.
const cluster = await clusterFor(t)
const vault = await vaultFor(t, cluster, { flavor: flavorUnderTest() })
t.comment(`dev Vault flavor: ${vault.dev?.flavor ?? 'a real Vault'}`)
const db = await vault.database()

// A child token, so "never logged" is checked against a real token string.
const child = await vault.call('POST', 'auth/token/create', { policies: ['root'] })
const token = (child.json as { auth: { client_token: string } }).auth.client_token
const viaToken = { address: vault.address, auth: { method: 'token', token } }
const who = (proxy: RunningProxy): Promise<{ current: string; session: string }> => proxy.whoAmI()
const vaultUsers = async (): Promise<string[]> =>
  (await cluster.query<{ rolname: string }>("select rolname from pg_roles where rolname like 'v-%' order by 1")).map(
    (r) => r.rolname,
  )

void t.test('dynamic credentials: one shared lease, sessions act as the owner, revoked at shutdown', async (t) => {
  await db.createDynamicRole({ name: 'app', defaultTtl: 60, maxTtl: 120 })
  const proxy = await startProxy(t, cluster, { vault: viaToken, credentials: { vault: { role: 'app' } } })
  const results = await Promise.all(Array.from({ length: 6 }, () => who(proxy)))
  for (const r of results) t.equal(r.current, 'app_owner')
  t.match(results[0]?.session, /^v-/, 'session_user is a Vault-issued user')
  t.equal(new Set(results.map((r) => r.session)).size, 1, 'six concurrent clients shared one credential')
  t.same(await vaultUsers(), [results[0]?.session], 'exactly one Vault call made exactly one user')
  t.ok(
    proxy.logs.some(
      (l) =>
        l.msg === 'issued a database credential' &&
        typeof l.leaseId === 'string' &&
        String(l.leaseId).startsWith(`${db.mount}/creds/app/`),
    ),
  )
  t.notMatch(proxy.logText(), token, 'the Vault token is never logged')
  await proxy.stop()
  t.ok(await eventually(5, async () => (await vaultUsers()).length === 0), 'no v- role left after shutdown')
})

void t.test(
  'leases renew, then rotate before max_ttl with zero failed connections across several lifetimes',
  async (t) => {
    await db.createDynamicRole({ name: 'short', defaultTtl: 3, maxTtl: 6 })
    const proxy = await startProxy(t, cluster, { vault: viaToken, credentials: { vault: { role: 'short' } } })
    const seen = new Set<string>()
    let failures = 0
    let connections = 0
    const until = Date.now() + 16_000
    while (Date.now() < until) {
      try {
        const r = await who(proxy)
        seen.add(r.session)
        if (r.current !== 'app_owner') failures++
      } catch (err) {
        failures++
        t.comment(`connection failed: ${(err as Error).message}`)
      }
      connections++
      await new Promise((r) => setTimeout(r, 100))
    }
    t.equal(failures, 0, `0 of ${connections} connections failed`)
    t.ok(seen.size >= 2, `${seen.size} credentials used over 16 s of 6 s max_ttl leases`)
    t.ok(
      proxy.logs.some((l) => l.msg === 'renewed a lease'),
      'leases were renewed',
    )
    t.ok(
      proxy.logs.some((l) => l.msg === 'renewed a lease' && l.capped === true),
      'a renewal was capped by max_ttl',
    )
    t.ok(await eventually(10, async () => (await vaultUsers()).length <= 1), 'replaced leases were revoked once unused')
  },
)

void t.test(
  'pgbench reconnecting for every transaction and psql, across several lease lifetimes, without a failure',
  async (t) => {
    await db.createDynamicRole({ name: 'bench', defaultTtl: 3, maxTtl: 6 })
    const proxy = await startProxy(t, cluster, { vault: viaToken, credentials: { vault: { role: 'bench' } } })
    const run = (cmd: string, args: string[]): Promise<ClientRun> => runClient(cmd, args)
    const target = ['-h', '127.0.0.1', '-p', String(proxy.port), '-U', 'app']
    const script = `${proxy.socketDir}/select.sql`
    await import('node:fs/promises').then((fs) => fs.writeFile(script, 'select current_user;\n'))
    const bench = await run('pgbench', [...target, '-n', '-C', '-c', '2', '-T', '14', '-f', script, cluster.database])
    t.equal(bench.code, 0, 'pgbench succeeded')
    t.match(bench.out, /number of failed transactions: 0 /)
    const issued = proxy.logs.filter((l) => l.msg === 'issued a database credential').length
    t.ok(issued >= 2, `${issued} credentials issued during the run`)
    const psql = await run('psql', [...target, '-d', cluster.database, '-X', '-A', '-t', '-c', 'select current_user'])
    t.equal(psql.out.trim(), 'app_owner')
  },
)

void t.test('a 900 h lease (longer than a Node timer) is not renewed in a loop', async (t) => {
  await db.createDynamicRole({ name: 'long', defaultTtl: '900h', maxTtl: '900h' })
  const proxy = await startProxy(t, cluster, { vault: viaToken, credentials: { vault: { role: 'long' } } })
  const before = await who(proxy)
  t.equal(before.current, 'app_owner')
  await new Promise((r) => setTimeout(r, 2_000))
  const issued = proxy.logs.find((l) => l.msg === 'issued a database credential')
  t.ok(
    Number(issued?.ttlSeconds) * 1000 > 2 ** 31 - 1,
    `the lease's TTL (${String(issued?.ttlSeconds)} s) exceeds 2^31-1 ms`,
  )
  const renewals = proxy.logs.filter((l) => /lease renewal|renewed a lease/.test(String(l.msg)))
  t.equal(renewals.length, 0, 'no sys/leases/renew in 2 s (it was 347, each an ALTER ROLE)')
  t.equal(proxy.logs.filter((l) => l.msg === 'issued a database credential').length, 1, 'one credential')
  t.same(await who(proxy), before, 'the same credential still serves')
})

void t.test('a client terminating its siblings again and again cannot make the proxy churn credentials', async (t) => {
  await db.createDynamicRole({ name: 'victims', defaultTtl: 120, maxTtl: 300 })
  const proxy = await startProxy(t, cluster, { vault: viaToken, credentials: { vault: { role: 'victims' } } })
  const started = Date.now()
  for (let round = 0; round < 5; round++) {
    // Fresh sessions each round, so both are on the credential the proxy hands out now.
    const victim = await proxy.client()
    victim.on('error', () => undefined)
    const attacker = await proxy.client()
    // As the login user (SET ROLE NONE), a session may terminate every other session of that user.
    await attacker.query('set role none')
    const user = (await attacker.query<{ u: string }>('select session_user as u')).rows[0]?.u
    await attacker.query(
      'select pg_terminate_backend(pid) from pg_stat_activity where usename = $1 and pid <> pg_backend_pid()',
      [user],
    )
    await new Promise((r) => setTimeout(r, 300))
  }
  const elapsedMs = Date.now() - started
  const issued = proxy.logs.filter((l) => l.msg === 'issued a database credential').length
  // The backoff lets one distrust through, then one after 2 s, 2 + 4 s, 2 + 4 + 8 s, ... (a slow
  // machine may take longer than 2 s for the five rounds). Without it each round makes one: 6.
  const allowed = 1 + Math.floor(Math.log2(elapsedMs / 2000 + 1))
  t.ok(
    issued <= 1 + allowed && issued < 6,
    `five rounds of terminations in ${elapsedMs} ms made ${issued - 1} new credential(s); the backoff allows ${allowed}`,
  )
  t.ok(
    proxy.logs.some((l) => /keeps terminating sessions/.test(String(l.msg))),
    'the backoff was logged',
  )
  t.equal((await who(proxy)).current, 'app_owner', 'clients still get in')
})

void t.test('a lease revoked behind the proxy: the next client still gets in (refresh and retry)', async (t) => {
  await db.createDynamicRole({ name: 'revoked', defaultTtl: 60, maxTtl: 120 })
  const proxy = await startProxy(t, cluster, { vault: viaToken, credentials: { vault: { role: 'revoked' } } })
  const first = await who(proxy)
  const leaseId = proxy.logs.find((l) => l.msg === 'issued a database credential')?.leaseId as string
  await vault.call('PUT', 'sys/leases/revoke', { lease_id: leaseId })
  t.ok(await eventually(5, async () => !(await vaultUsers()).includes(first.session)), 'the role is gone')
  const second = await who(proxy)
  t.equal(second.current, 'app_owner')
  t.not(second.session, first.session, 'a fresh credential')
  t.ok(proxy.logs.some((l) => l.msg === 'upstream refused the credential; fetching a new one'))
})

void t.test('static role: rotation is picked up', async (t) => {
  await cluster.query(`create role app_static login in role ${cluster.ownerRole}`)
  await db.createStaticRole('static', 'app_static', 3600)
  const proxy = await startProxy(t, cluster, { vault: viaToken, credentials: { vault: { static_role: 'static' } } })
  t.same(await who(proxy), { current: 'app_owner', session: 'app_static' })
  const before = await vault.call('GET', `${db.mount}/static-creds/static`)
  await vault.call('POST', `${db.mount}/rotate-role/static`, {})
  const after = await vault.call('GET', `${db.mount}/static-creds/static`)
  t.not(
    (after.json as { data: { password: string } }).data.password,
    (before.json as { data: { password: string } }).data.password,
    'Vault rotated the password',
  )
  t.same(await who(proxy), { current: 'app_owner', session: 'app_static' }, 'the proxy logs in with the new password')
})

void t.test('KV v2 source: username and password from a secret, a rotated password picked up', async (t) => {
  const secretPath = vault.name('db-app')
  const password1 = 'kv-password-one'
  await cluster.query(`create role kv_user login password '${password1}' in role ${cluster.ownerRole}`)
  await vault.call('POST', `secret/data/${secretPath}`, { data: { username: 'kv_user', password: password1 } })
  const proxy = await startProxy(t, cluster, { vault: viaToken, credentials: { kv: { path: secretPath } } })
  t.same(await who(proxy), { current: 'app_owner', session: 'kv_user' })
  await cluster.query(`alter role kv_user password 'kv-password-two'`)
  await vault.call('POST', `secret/data/${secretPath}`, { data: { username: 'kv_user', password: 'kv-password-two' } })
  t.same(await who(proxy), { current: 'app_owner', session: 'kv_user' }, 'refused once, re-read, retried')
  t.notMatch(proxy.logText(), 'kv-password')
})
