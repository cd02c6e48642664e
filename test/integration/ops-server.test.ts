import { rename } from 'node:fs/promises'
import { createConnection } from 'node:net'
import pg from 'pg'
import t, { type Test } from 'tap'
import { createLogger } from '../../src/ops/logger.js'
import { OpsServer } from '../../src/ops/ops-server.js'
import { opsGet, sample } from '../support/ops-probe.js'
import { clusterFor } from '../support/pg-cluster.js'
import { startProxy, type RunningProxy } from '../support/proxy-harness.js'
import { devOnly, eventually, vaultFor } from '../support/vault-target.js'
import { cancelRequest } from '../support/wire-builder.js'

// The ops endpoints of a proxy running in this process: probes, metrics, status.
const cluster = await clusterFor(t)
const vault = await vaultFor(t, cluster)
const db = await vault.database()
await db.createDynamicRole({ name: 'app', defaultTtl: 60, maxTtl: 120 })
const created = await vault.call('POST', 'auth/token/create', { policies: ['root'] })
const token = (created.json as { auth: { client_token: string } }).auth.client_token
const viaVault = {
  vault: { address: vault.address, auth: { method: 'token', token } },
  credentials: { vault: { role: 'app' } },
}

async function opsFor(t: Test, proxy: RunningProxy): Promise<(path: string) => ReturnType<typeof opsGet>> {
  const ops = new OpsServer({
    listen: { host: '127.0.0.1', port: 0 },
    allowRemote: false,
    target: proxy.server,
    logger: createLogger('silent'),
  })
  await ops.start()
  t.teardown(() => ops.close())
  return (path) => opsGet(ops.port, path)
}

const metricsOf = async (get: (path: string) => ReturnType<typeof opsGet>): Promise<string> =>
  (await get('/metrics')).body

void t.test(
  'Vault credentials: ready after the prefetch, before any client; status and metrics show the lease',
  async (t) => {
    const proxy = await startProxy(t, cluster, viaVault)
    const get = await opsFor(t, proxy)
    t.ok(await eventually(10, async () => (await get('/readyz')).status === 200), 'ready without a client')
    t.equal((await get('/startupz')).status, 200)
    t.equal((await get('/livez')).status, 200)
    const metrics = await metricsOf(get)
    t.equal(sample(metrics, 'pg_vault_proxy_sessions_total'), 0, 'no session was needed for that')
    t.equal(sample(metrics, 'pg_vault_proxy_credentials_issued_total', { source: 'vault_dynamic' }), 1)
    t.equal(sample(metrics, 'pg_vault_proxy_ready'), 1)
    t.ok(
      (sample(metrics, 'pg_vault_proxy_vault_request_duration_seconds_count', { path: `${db.mount}/creds/app` }) ??
        0) >= 1,
      'the creds request is in the latency histogram, by path',
    )
    const ttl = sample(metrics, 'pg_vault_proxy_credential_ttl_seconds') ?? -1
    t.ok(ttl > 0 && ttl <= 60, `credential TTL remaining ${ttl} s`)

    const status = await get('/status')
    t.match(status.contentType, /application\/json/)
    const body = JSON.parse(status.body) as {
      phase: string
      ready: boolean
      ownerRole: string
      credentials: { ready: boolean; leaseId: string; user: string; ttlSeconds: number }
    }
    t.equal(body.phase, 'running')
    t.equal(body.ready, true)
    t.equal(body.ownerRole, cluster.ownerRole)
    t.equal(body.credentials.ready, true)
    t.match(body.credentials.leaseId, new RegExp(`^${db.mount}/creds/app/`))
    t.match(body.credentials.user, /^v-/)

    // The secrets the proxy holds right now appear nowhere in its answers.
    const { password } = await proxy.server.currentProfile.credentials.get()
    t.ok(password.length >= 8, 'a real password to look for')
    for (const path of ['/status', '/metrics', '/readyz']) {
      const text = (await get(path)).body
      t.notOk(text.includes(password), `${path} does not contain the database password`)
      t.notOk(text.includes(token), `${path} does not contain the Vault token`)
    }
  },
)

void t.test(
  'a proxy whose Vault is sealed from the start stays not ready, then turns ready',
  { skip: devOnly('sealed switch') },
  async (t) => {
    await vault.setFaults({ sealed: true })
    try {
      const proxy = await startProxy(t, cluster, viaVault)
      const get = await opsFor(t, proxy)
      t.ok(
        await eventually(
          10,
          async () =>
            (sample(await metricsOf(get), 'pg_vault_proxy_vault_request_errors_total', {
              path: `${db.mount}/creds/app`,
              failure: 'sealed',
            }) ?? 0) >= 1,
        ),
        'the prefetch asked Vault and was told it is sealed',
      )
      const readyz = await get('/readyz')
      t.equal(readyz.status, 503, 'not ready')
      t.match(readyz.body, /\[-\]credentials failed: no lease from Vault/)
      t.equal((await get('/startupz')).status, 200, 'but started')
      t.equal((JSON.parse((await get('/status')).body) as { ready: boolean }).ready, false)
      t.equal(sample(await metricsOf(get), 'pg_vault_proxy_ready'), 0)
      await vault.setFaults({ sealed: false })
      t.ok(
        await eventually(40, async () => (await get('/readyz')).status === 200),
        'ready once unsealed, with no client',
      )
    } finally {
      await vault.setFaults({ sealed: false })
    }
  },
)

void t.test('a password file that cannot be read: not ready until it can', async (t) => {
  const proxy = await startProxy(t, cluster)
  const get = await opsFor(t, proxy)
  const file = proxy.config.credentials.static?.password_file as string
  t.equal((await get('/readyz')).status, 200)
  await rename(file, `${file}.away`)
  const readyz = await get('/readyz')
  t.equal(readyz.status, 503)
  t.match(readyz.body, /\[-\]credentials failed: cannot read the password file .* \(ENOENT\)/)
  await rename(`${file}.away`, file)
  t.equal((await get('/readyz')).status, 200)
})

void t.test('sessions move the metrics; each ends with one audit line', async (t) => {
  const proxy = await startProxy(t, cluster)
  const get = await opsFor(t, proxy)
  const before = await metricsOf(get)
  const bytes = (text: string, direction: string): number =>
    sample(text, 'pg_vault_proxy_bytes_total', { direction }) ?? 0

  const client = await proxy.client({ user: 'auditor' })
  await client.query("select repeat('x', 10000)")
  const during = await metricsOf(get)
  t.equal(sample(during, 'pg_vault_proxy_sessions_active'), 1, 'one session relaying')
  t.equal(
    (sample(during, 'pg_vault_proxy_sessions_total') ?? 0) - (sample(before, 'pg_vault_proxy_sessions_total') ?? 0),
    1,
  )
  t.ok(
    bytes(during, 'upstream_to_client') - bytes(before, 'upstream_to_client') > 10_000,
    'bytes count while the session runs',
  )
  t.ok(bytes(during, 'client_to_upstream') > bytes(before, 'client_to_upstream'))
  await client.end()

  t.ok(
    await eventually(5, async () => sample(await metricsOf(get), 'pg_vault_proxy_sessions_active') === 0),
    'no session relaying once it ended',
  )
  const after = await metricsOf(get)
  t.equal(sample(after, 'pg_vault_proxy_session_ends_total', { reason: 'client_terminated' }), 1)
  const audit = proxy.logs.filter((l) => l.msg === 'session ended')
  t.equal(audit.length, 1, 'one audit line')
  t.match(audit[0], {
    client: /^127\.0\.0\.1:\d+$/,
    route: 'default',
    clientUser: 'auditor',
    database: cluster.database,
    upstreamUser: cluster.users.scram.user,
    reason: 'client_terminated',
    durationMs: Number,
    bytesFromClient: Number,
    bytesFromUpstream: Number,
  })
  t.ok((audit[0]?.bytesFromUpstream as number) > 10_000)
})

void t.test('refusals are counted by reason and audited', async (t) => {
  const proxy = await startProxy(t, cluster, { max_client_connections: 1 })
  const get = await opsFor(t, proxy)
  await proxy.client()
  const second = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'late', database: cluster.database })
  const err = (await second.connect().then(
    () => undefined,
    (e: unknown) => e,
  )) as { code?: string }
  t.equal(err.code, '53300')
  t.equal(sample(await metricsOf(get), 'pg_vault_proxy_session_failures_total', { reason: 'too_many_clients' }), 1)
  t.match(
    proxy.logs.find((l) => l.msg === 'session ended' && l.reason === 'refused'),
    { clientUser: 'late', refusal: 'too_many_clients', sqlState: '53300', route: 'default' },
  )
})

void t.test('CancelRequests are counted: forwarded, for an idle session, with an unknown key', async (t) => {
  const proxy = await startProxy(t, cluster)
  const get = await opsFor(t, proxy)
  const client = await proxy.client()
  const { processID, secretKey } = client as unknown as { processID: number; secretKey: number }
  const key = Buffer.alloc(4)
  key.writeInt32BE(secretKey)
  const sendCancel = async (pid: number, secret: Buffer): Promise<void> => {
    const socket = createConnection({ host: '127.0.0.1', port: proxy.port })
    socket.write(cancelRequest(pid, secret))
    await new Promise((resolve) => socket.on('close', resolve))
  }
  const count = async (outcome: string): Promise<number> =>
    sample(await metricsOf(get), 'pg_vault_proxy_cancel_requests_total', { outcome }) ?? 0

  await sendCancel(processID, key)
  t.ok(
    await eventually(5, async () => (await count('not_busy')) === 1),
    'a cancel for an idle session is dropped and counted',
  )

  const sleeping = client.query('select pg_sleep(30)').then(
    () => undefined,
    (e: { code?: string }) => e.code,
  )
  t.ok(
    await eventually(10, async () => {
      const rows = await cluster.query(
        "select 1 from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'",
      )
      return rows.length > 0
    }),
  )
  await sendCancel(processID, key)
  t.equal(await sleeping, '57014', 'the query was cancelled')
  t.ok(await eventually(5, async () => (await count('forwarded')) === 1))

  await sendCancel(processID + 1, key)
  t.ok(await eventually(5, async () => (await count('unknown_key')) === 1))
})

void t.test('draining: not ready, new clients refused with 57P03, an open transaction finishes first', async (t) => {
  const proxy = await startProxy(t, cluster)
  const get = await opsFor(t, proxy)
  const inTransaction = await proxy.client()
  const idle = await proxy.client()
  const idleEnded = new Promise<{ code?: string }>((resolve) =>
    idle.on('error', (e) => resolve(e as { code?: string })),
  )
  const closed = new Promise<{ code?: string }>((resolve) =>
    inTransaction.on('error', (e) => resolve(e as { code?: string })),
  )
  await inTransaction.query('begin')
  const drained = proxy.server.drain(60_000)

  t.equal((await idleEnded).code, '57P01', 'an idle session is ended at once')
  const readyz = await get('/readyz')
  t.equal(readyz.status, 503)
  t.match(readyz.body, /\[-\]accepting failed: shutting down/)
  t.equal((await get('/livez')).status, 200, 'alive while draining')
  t.equal((JSON.parse((await get('/status')).body) as { phase: string }).phase, 'draining')
  const late = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'late', database: cluster.database })
  const refused = (await late.connect().then(
    () => undefined,
    (e: unknown) => e,
  )) as { code?: string; message?: string }
  t.equal(refused.code, '57P03', 'a new client is refused')
  t.match(refused.message, /shutting down/)

  t.equal((await inTransaction.query<{ n: number }>('select 1 as n')).rows[0]?.n, 1, 'the transaction goes on')
  await inTransaction.query('commit')
  t.equal((await closed).code, '57P01', 'and the session ends once the transaction is done')
  await drained
  t.equal(proxy.server.health.phase, 'stopped')
})

void t.test('the ops server: loopback unless allowed; only GET and HEAD; unknown paths 404', async (t) => {
  const proxy = await startProxy(t, cluster)
  const logger = createLogger('silent')
  t.throws(
    () => new OpsServer({ listen: { host: '0.0.0.0', port: 0 }, allowRemote: false, target: proxy.server, logger }),
    /ops\.listen: refusing .* 0\.0\.0\.0.*ops\.allow_remote: true/,
  )
  t.doesNotThrow(
    () => new OpsServer({ listen: { host: '0.0.0.0', port: 0 }, allowRemote: true, target: proxy.server, logger }),
  )
  const ops = new OpsServer({
    listen: { host: '127.0.0.1', port: 0 },
    allowRemote: false,
    target: proxy.server,
    logger,
  })
  await ops.start()
  t.teardown(() => ops.close())
  const metrics = await opsGet(ops.port, '/metrics')
  t.match(metrics.contentType, /^text\/plain; version=0\.0\.4/)
  t.match(metrics.body, /# TYPE pg_vault_proxy_sessions_total counter/)
  t.match(metrics.body, /process_cpu_user_seconds_total/, 'process metrics too')
  t.equal((await opsGet(ops.port, '/nope')).status, 404)
  t.equal((await opsGet(ops.port, '/readyz', 'POST')).status, 405)
  const head = await opsGet(ops.port, '/livez', 'HEAD')
  t.equal(head.status, 200)
  t.equal(head.body, '')
})
