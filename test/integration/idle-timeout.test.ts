import { createConnection } from 'node:net'
import t from 'tap'
import { sample } from '../support/ops-probe.js'
import { clusterFor } from '../support/pg-cluster.js'
import { startProxy } from '../support/proxy-harness.js'
import { eventually } from '../support/vault-target.js'
import { BufferList, errorFieldsOf, parseMessages, startupMessage } from '../support/wire-builder.js'

// idle_client_timeout_ms: like PostgreSQL's idle_session_timeout, only outside a transaction.
const cluster = await clusterFor(t)
const TIMEOUT_MS = 300
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

void t.test('an idle client gets FATAL 57P05; one idle inside a transaction is kept until it commits', async (t) => {
  const proxy = await startProxy(t, cluster, { idle_client_timeout_ms: TIMEOUT_MS })
  const idle = await proxy.client()
  const inTransaction = await proxy.client()
  const errorOf = (client: typeof idle): Promise<{ code?: string; message?: string }> =>
    new Promise((resolve) => client.on('error', (e) => resolve(e as { code?: string })))
  const idleEnded = errorOf(idle)
  const transactionEnded = errorOf(inTransaction)
  await inTransaction.query('begin')

  const err = await idleEnded
  t.equal(err.code, '57P05')
  t.match(err.message, /idle-session timeout \(pg-vault-proxy idle_client_timeout_ms = 300\)/)
  // The idle client's timer has fired; the one in a transaction started later still has to outlive its own.
  await sleep(TIMEOUT_MS * 3)
  t.equal((await inTransaction.query<{ n: number }>('select 1 as n')).rows[0]?.n, 1, 'still there in its transaction')
  await inTransaction.query('commit')
  t.equal((await transactionEnded).code, '57P05', 'closed once idle outside the transaction')
  t.equal(
    sample(await proxy.server.metrics.registry.metrics(), 'pg_vault_proxy_session_ends_total', {
      reason: 'idle_timeout',
    }),
    2,
  )
  t.equal(proxy.logs.filter((l) => l.msg === 'session ended' && l.reason === 'idle_timeout').length, 2)
})

void t.test('a client that keeps sending is never idle long enough', async (t) => {
  const proxy = await startProxy(t, cluster, { idle_client_timeout_ms: TIMEOUT_MS })
  const client = await proxy.client()
  for (let i = 0; i < 8; i++) {
    await client.query('select 1')
    await sleep(TIMEOUT_MS / 3)
  }
  t.equal((await client.query<{ n: number }>('select 2 as n')).rows[0]?.n, 2, 'alive after several timeouts in total')
})

void t.test('an extended-query batch without Sync holds a transaction open: not idle', async (t) => {
  const proxy = await startProxy(t, cluster, { idle_client_timeout_ms: TIMEOUT_MS })
  const socket = createConnection({ host: '127.0.0.1', port: proxy.port })
  let received = Buffer.alloc(0)
  socket.on('data', (chunk: Buffer) => (received = Buffer.concat([received, chunk])))
  const closed = new Promise((resolve) => socket.on('close', resolve))
  const types = (): string[] => parseMessages(received).map((m) => m.type)
  socket.write(startupMessage({ user: 'raw', database: cluster.database }))
  t.ok(await eventually(5, async () => types().includes('Z')), 'logged in')

  const sent = received.length
  socket.write(
    Buffer.concat([
      new BufferList().cstring('').cstring('select 1').int16(0).message('P'),
      new BufferList().cstring('').cstring('').int16(0).int16(0).int16(0).message('B'),
      new BufferList().cstring('').int32(0).message('E'),
      new BufferList().message('H'),
    ]),
  )
  t.ok(await eventually(5, async () => types().includes('C')), 'the Execute completed (Flush, no Sync)')
  await sleep(TIMEOUT_MS * 3)
  t.notOk(types().includes('E'), 'no FATAL while the batch is open')
  socket.write(new BufferList().message('S'))
  await closed
  const after = parseMessages(received.subarray(sent))
  t.same(
    after.map((m) => m.type),
    ['1', '2', 'D', 'C', 'Z', 'E'],
    'the batch finished with ReadyForQuery; then, idle, the FATAL',
  )
  t.equal(errorFieldsOf(after.at(-1)?.body ?? Buffer.alloc(0)).C, '57P05')
})

void t.test('without idle_client_timeout_ms idle clients stay', async (t) => {
  const proxy = await startProxy(t, cluster)
  const client = await proxy.client()
  await sleep(TIMEOUT_MS * 3)
  t.equal((await client.query<{ n: number }>('select 1 as n')).rows[0]?.n, 1)
})
