import { connect } from 'node:net'
import { serialize } from 'pg-protocol'
import t from 'tap'
import { opsGet } from '../support/ops-probe.js'
import { clusterFor } from '../support/pg-cluster.js'
import { FAULT_QUERIES } from '../support/inject-session-faults.js'
import { startProxyProcess } from '../support/proxy-process.js'
import { eventually } from '../support/vault-target.js'
import { startupMessage } from '../support/wire-builder.js'

// A bug in one session's code (injected by test/support/inject-session-faults.ts) ends that
// session with FATAL XX000 and a log line; the process and every other session go on.
const cluster = await clusterFor(t)

void t.test('an unexpected error ends its own session only: thrown, rejected, or in a timer', async (t) => {
  const proxy = await startProxyProcess(t, cluster, { imports: ['./test/support/inject-session-faults.ts'] })
  const sibling = await proxy.client()
  await sibling.query('begin')
  await sibling.query('select 1')

  for (const [kind, sql] of Object.entries(FAULT_QUERIES)) {
    const victim = await proxy.client()
    // The fault may come after the answer (the timer): then the FATAL arrives while the client is idle.
    type Failure = { code?: string; message?: string; severity?: string }
    const failed = await new Promise<Failure>((resolve) => {
      victim.on('error', resolve)
      victim.query(sql).catch(resolve)
    })
    t.equal(failed?.code, 'XX000', `${kind}: the client gets SQLSTATE XX000`)
    t.equal(failed?.severity, 'FATAL', `${kind}: as a FATAL`)
    t.match(failed?.message, /pg-vault-proxy internal error \(session \d+\)/, `${kind}: saying what it is`)
    const line = await proxy.logged('internal error in session', (l) =>
      String((l.err as { message?: string } | undefined)?.message).includes(
        kind === 'thrown' ? 'thrown in a message' : kind === 'rejected' ? 'rejected promise' : 'timer',
      ),
    )
    t.equal(line.level, 50, `${kind}: logged as an error`)
    t.equal(proxy.exitCode(), undefined, `${kind}: the process is still running`)
    t.same(
      (await sibling.query<{ one: number }>('select 1 as one')).rows,
      [{ one: 1 }],
      `${kind}: the sibling, mid-transaction, answers`,
    )
    t.equal((await opsGet(proxy.opsPort, '/livez')).status, 200, `${kind}: /livez answers`)
  }
  await sibling.query('commit')
  t.equal(
    await proxy.metric('pg_vault_proxy_session_ends_total', { reason: 'internal_error' }),
    3,
    'three sessions ended as internal_error',
  )
  const fresh = await proxy.client()
  t.same((await fresh.query<{ one: number }>('select 1 as one')).rows, [{ one: 1 }], 'new sessions work')
})

void t.test('a client that leaves while its session logs in upstream leaves nothing behind', async (t) => {
  // Found by the fuzzer: the client's end came while the proxy logged in, and the relay started
  // afterwards waited for it forever, holding an upstream connection.
  const proxy = await startProxyProcess(t, cluster)
  for (const delayMs of [0, 1, 2, 5]) {
    await Promise.all(
      Array.from(
        { length: 10 },
        () =>
          new Promise<void>((resolve) => {
            const socket = connect({ host: '127.0.0.1', port: proxy.port })
            socket.on('error', () => {})
            socket.on('connect', () => {
              socket.write(
                Buffer.concat([
                  startupMessage({ user: 'gone', database: cluster.database }),
                  serialize.query('select 1'),
                ]),
              )
              setTimeout(() => {
                socket.destroy()
                resolve()
              }, delayMs)
            })
          }),
      ),
    )
  }
  const connections = (): Promise<number | undefined> => proxy.metric('pg_vault_proxy_client_connections')
  t.ok(await eventually(10, async () => (await connections()) === 0), `no session left (${await connections()} open)`)
  const pool = (name: string): Promise<number> =>
    proxy.metric(`pg_vault_proxy_pool_${name}_connections`, { route: 'default' }).then((n) => n ?? 0)
  t.ok(
    await eventually(10, async () => (await pool('linked')) + (await pool('opening')) === 0),
    'no server connection linked or logging in',
  )
  const upstream = await cluster.query<{ n: string }>(
    "select count(*) as n from pg_stat_activity where application_name = '' and usename = $1",
    [cluster.users.scram.user],
  )
  // The pool keeps one connection of the key warm (pool.min_idle): that one only.
  t.equal(Number(upstream[0]?.n), await pool('idle'), 'and no upstream connection but the idle ones of the pool')
})
