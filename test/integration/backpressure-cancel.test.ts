import { createConnection } from 'node:net'
import t from 'tap'
import { clusterFor } from '../support/pg-cluster.js'
import { startProxy } from '../support/proxy-harness.js'
import { ctrlCDuringSleep } from '../support/psql-cancel.js'
import { BufferList, startupMessage } from '../support/wire-builder.js'

const cluster = await clusterFor(t)

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

void t.test('a client that stops reading makes the upstream wait, not the proxy buffer', async (t) => {
  const proxy = await startProxy(t, cluster)
  const socket = createConnection({ host: '127.0.0.1', port: proxy.port })
  let received = 0
  socket.on('data', (d: Buffer) => (received += d.length))
  socket.write(startupMessage({ user: 'app', database: cluster.database, application_name: 'slow_reader' }))
  while (received === 0) await sleep(20)
  const rssBefore = process.memoryUsage().rss
  // About 400 MB of result rows; the client reads none of them.
  socket.pause()
  socket.write(new BufferList().cstring("select repeat('x', 1000000) from generate_series(1, 400)").message('Q'))
  let waitEvent: string | undefined
  for (let i = 0; i < 100 && waitEvent !== 'ClientWrite'; i++) {
    await sleep(50)
    const rows = await cluster.query<{ wait_event: string | null }>(
      "select wait_event from pg_stat_activity where application_name = 'slow_reader'",
    )
    waitEvent = rows[0]?.wait_event ?? undefined
  }
  t.equal(waitEvent, 'ClientWrite', 'the upstream backend is blocked writing to the proxy')
  const grown = process.memoryUsage().rss - rssBefore
  t.ok(
    grown < 64 * 1024 * 1024,
    `proxy memory grew by ${Math.round(grown / 1024 / 1024)} MiB, far less than the result`,
  )
  socket.destroy()
})

void t.test('psql Ctrl-C reaches an upstream that needs TLS', async (t) => {
  const proxy = await startProxy(t, cluster, { upstream: { sslmode: 'require' } })
  const { stderr } = await ctrlCDuringSleep(proxy.port, cluster)
  t.match(stderr, /canceling statement due to user request/)
  t.ok(proxy.logs.some((l) => l.msg === 'forwarding cancel request'))
})

void t.test('a cancel for an idle session is dropped, so it cannot hit the next statement', async (t) => {
  const proxy = await startProxy(t, cluster)
  const client = await proxy.client()
  const { processID, secretKey } = client as unknown as { processID: number; secretKey: number }
  const cancel = createConnection({ host: '127.0.0.1', port: proxy.port })
  const key = Buffer.alloc(4)
  key.writeInt32BE(secretKey)
  cancel.write(new BufferList().int32(80877102).int32(processID).bytes(key).packet())
  await new Promise((resolve) => cancel.on('close', resolve))
  t.equal((await client.query<{ n: number }>('select 1 as n, pg_sleep(0.2)')).rows[0]?.n, 1, 'the next statement runs')
  t.notOk(proxy.logs.some((l) => l.msg === 'forwarding cancel request'))
})
