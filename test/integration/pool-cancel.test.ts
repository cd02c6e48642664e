import { connect } from 'node:net'
import pg from 'pg'
import t from 'tap'
import { sample } from '../support/ops-probe.js'
import { clusterFor } from '../support/pg-cluster.js'
import { startProxy, type RunningProxy } from '../support/proxy-harness.js'
import { eventually } from '../support/vault-target.js'
import { cancelRequest } from '../support/wire-builder.js'

// Cancel keys and pooled connections: a pooled backend serves one client after another, and each
// client gets a BackendKeyData of the proxy's own (src/proxy/cancel-registry.ts), never the
// backend's. The key of a client that has ended must not cancel the next client's query on the same
// backend (with the backend's own key it would: https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-CANCELING-REQUESTS).
const cluster = await clusterFor(t)

interface Key {
  processID: number
  secretKey: number
}

async function connectClient(proxy: RunningProxy): Promise<pg.Client> {
  const client = new pg.Client({ host: proxy.host, port: proxy.port, user: 'app', database: cluster.database })
  client.on('error', () => {})
  await client.connect()
  return client
}

const keyOf = (client: pg.Client): Key => {
  const { processID, secretKey } = client as unknown as Key
  return { processID, secretKey }
}

const pid = (client: pg.Client): Promise<number> =>
  client.query<{ pid: number }>('select pg_backend_pid() as pid').then((r) => r.rows[0]!.pid)

/** Sends a CancelRequest to the proxy; resolves once the proxy has dealt with it (it closes the connection then). */
async function sendCancel(proxy: RunningProxy, key: Key): Promise<void> {
  const secret = Buffer.alloc(4)
  secret.writeInt32BE(key.secretKey)
  const socket = connect(proxy.port, proxy.host)
  socket.on('error', () => {})
  const closed = new Promise((resolve) => socket.on('close', resolve))
  socket.write(cancelRequest(key.processID, secret))
  await closed
}

async function cancels(proxy: RunningProxy, outcome: string): Promise<number> {
  const text = await proxy.server.metrics.registry.metrics()
  return sample(text, 'pg_vault_proxy_cancel_requests_total', { outcome }) ?? 0
}

/** Waits until backend `backendPid` runs `sql`. */
async function running(backendPid: number, sql: string): Promise<boolean> {
  return eventually(5, async () => {
    const rows = await cluster.query(
      "select 1 from pg_stat_activity where pid = $1 and state = 'active' and query = $2",
      [backendPid, sql],
    )
    return rows.length === 1
  })
}

void t.test("an ended client's cancel key does not reach the next client on its pooled backend", async (t) => {
  // No pre-warmed connection: B must get A's backend.
  const proxy = await startProxy(t, cluster, { pool: { min_idle: 0 } })

  const a = await connectClient(proxy)
  const aPid = await pid(a)
  const aKey = keyOf(a)
  t.not(aKey.processID, aPid, "the client was given the proxy's key, not the backend's")
  await a.end()
  t.ok(
    await eventually(5, async () => Promise.resolve((proxy.server.status().routes[0]?.pool.idle ?? 0) === 1)),
    "A's connection is back in the pool",
  )

  const b = await connectClient(proxy)
  t.teardown(() => b.end().catch(() => undefined))
  t.equal(await pid(b), aPid, "B runs on A's backend")
  const bKey = keyOf(b)
  t.not(bKey.processID, aKey.processID, 'B has a key of its own')

  // A's old key while B's query runs: nothing happens to B.
  const sleep = 'select pg_sleep(3)'
  let finished = false
  const bQuery = b.query(sleep).then(
    () => {
      finished = true
      return 'completed'
    },
    (err: Error & { code?: string }) => {
      finished = true
      return err.code ?? err.message
    },
  )
  t.ok(await running(aPid, sleep), "B's query is running upstream")
  await sendCancel(proxy, aKey)
  t.notOk(finished, "B's query was still running when the proxy had handled A's key (the check is meaningful)")
  t.equal(await bQuery, 'completed', "B's query completed: A's key cancelled nothing")
  t.equal(await cancels(proxy, 'unknown_key'), 1, "A's key is unknown once A ended (cancel_requests_total unknown_key)")
  t.equal(await cancels(proxy, 'forwarded'), 0, 'nothing was forwarded upstream')

  // B's own key cancels B's query.
  const longSleep = 'select pg_sleep(30)'
  const cancelled = b.query(longSleep).then(
    () => 'completed',
    (err: Error & { code?: string }) => err.code ?? err.message,
  )
  t.ok(await running(aPid, longSleep), "B's second query is running upstream")
  await sendCancel(proxy, bKey)
  t.equal(await cancelled, '57014', "B's key cancels B's query (query_canceled)")
  t.equal(await cancels(proxy, 'forwarded'), 1, 'forwarded once')
  t.equal(await pid(b), aPid, 'B carries on, on the same backend')
})
