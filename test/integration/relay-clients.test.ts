import { createConnection } from 'node:net'
import t from 'tap'
import { clusterFor } from '../support/pg-cluster.js'
import { startProxy } from '../support/proxy-harness.js'
import { ctrlCDuringSleep } from '../support/psql-cancel.js'
import { runClient, type ClientRun } from '../support/run-client.js'
import { BufferList, startupMessage } from '../support/wire-builder.js'

// Real clients through the proxy: psql, pgbench and node-postgres.
const cluster = await clusterFor(t)
const proxy = await startProxy(t, cluster)

type Run = ClientRun

const run = (cmd: string, args: string[], input?: string | Buffer, env: Record<string, string> = {}): Promise<Run> =>
  runClient(cmd, args, { input, env })

const tcp = ['-h', '127.0.0.1', '-p', String(proxy.port), '-U', 'app', '-d', cluster.database]
/** pgbench takes the database as its last argument (its -d means debug). */
const bench = (args: string[]): Promise<Run> =>
  run('pgbench', ['-h', '127.0.0.1', '-p', String(proxy.port), '-U', 'app', ...args, cluster.database])
const psql = (sql: string, extra: string[] = []): Promise<Run> =>
  run('psql', [...tcp, '-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', ...extra, '-c', sql])

void t.test('psql over TCP (with its SSLRequest) and over the Unix socket, with no password prompt', async (t) => {
  const overTcp = await psql('select current_user, session_user')
  t.equal(overTcp.code, 0, overTcp.stderr)
  t.equal(overTcp.stdout.trim(), 'app_owner|scram_user')
  const overSocket = await run('psql', [
    '-h',
    proxy.socketDir,
    '-p',
    String(proxy.port),
    '-U',
    'app',
    '-d',
    cluster.database,
    '-X',
    '-A',
    '-t',
    '-w',
    '-c',
    'select current_user',
  ])
  t.equal(overSocket.code, 0, overSocket.stderr)
  t.equal(overSocket.stdout.trim(), 'app_owner')
})

void t.test('a multi-statement query with an error, and the session goes on', async (t) => {
  const client = await proxy.client()
  await t.rejects(client.query('select 1; select 1/0; select 3'), { code: '22012' })
  t.equal((await client.query<{ n: number }>('select 2 as n')).rows[0]?.n, 2)
  const named = { name: 'by_id', text: 'select $1::int * 2 as n', values: [21] }
  t.equal((await client.query<{ n: number }>(named)).rows[0]?.n, 42, 'named prepared statement')
  t.equal((await client.query<{ n: number }>({ ...named, values: [5] })).rows[0]?.n, 10, 'reused')
})

void t.test('COPY in and out with megabytes of data through psql', async (t) => {
  await cluster.query('create table if not exists copy_target (id int, payload text)')
  await cluster.query('grant all on copy_target to app_owner')
  const rows = 100_000
  const line = 'x'.repeat(60)
  const data = Array.from({ length: rows }, (_, i) => `${i}\t${line}`).join('\n') + '\n'
  const copyIn = await run('psql', [...tcp, '-X', '-v', 'ON_ERROR_STOP=1', '-c', '\\copy copy_target from stdin'], data)
  t.equal(copyIn.code, 0, copyIn.stderr)
  t.match(copyIn.stdout, `COPY ${rows}`)
  t.ok(data.length > 6_000_000, `sent ${data.length} bytes`)
  const copyOut = await run('psql', [
    ...tcp,
    '-X',
    '-c',
    'copy (select id, payload from copy_target order by id) to stdout',
  ])
  t.equal(copyOut.code, 0, copyOut.stderr)
  t.equal(copyOut.stdout, data, 'every byte came back')
})

void t.test(
  'pgbench: init, then simple and prepared runs, and reconnect-per-transaction over the socket',
  async (t) => {
    const init = await bench(['-i', '-s', '1', '-q'])
    t.equal(init.code, 0, 'pgbench -i succeeded')
    const tables = await cluster.query<{ tableowner: string }>(
      "select tableowner from pg_tables where tablename = 'pgbench_accounts'",
    )
    t.equal(tables[0]?.tableowner, 'app_owner', 'pgbench tables are owned by the owner role')
    for (const args of [
      ['-c', '4', '-j', '2', '-t', '50'],
      ['-c', '4', '-j', '2', '-t', '50', '-M', 'prepared', '-S'],
      ['-c', '2', '-t', '20', '-C', '-h', proxy.socketDir],
    ]) {
      const result = await bench(['-n', ...args])
      t.equal(result.code, 0, `pgbench ${args.join(' ')}`)
      t.match(result.stdout, /number of failed transactions: 0/)
      if (result.code !== 0) t.comment(result.stderr.slice(0, 2000))
    }
  },
)

void t.test('LISTEN/NOTIFY, including the pid of the own backend as the client knows it', async (t) => {
  const listener = await proxy.client()
  const notifier = await proxy.client()
  await listener.query('LISTEN proxy_channel')
  const received: Array<{ channel: string; payload?: string; processId: number }> = []
  const got = new Promise<void>((resolve) =>
    listener.on('notification', (n) => {
      received.push(n)
      if (received.length === 2) resolve()
    }),
  )
  await notifier.query("NOTIFY proxy_channel, 'from another session'")
  await listener.query("NOTIFY proxy_channel, 'from myself'")
  await got
  t.equal(received[0]?.payload, 'from another session')
  t.equal(received[1]?.payload, 'from myself')
  const ownPid = (listener as unknown as { processID: number }).processID
  t.equal(received[1]?.processId, ownPid, 'a self-notification carries the pid from BackendKeyData')
  t.not(received[0]?.processId, ownPid)
})

void t.test('NoticeResponse passes through', async (t) => {
  const client = await proxy.client()
  const notices: string[] = []
  client.on('notice', (n) => notices.push(n.message ?? ''))
  await client.query("do $$ begin raise notice 'hello from plpgsql'; end $$")
  t.same(notices, ['hello from plpgsql'])
})

void t.test('pipelined extended queries with an error in the middle of a transaction: T, E, E', async (t) => {
  const socket = createConnection({ host: '127.0.0.1', port: proxy.port })
  const chunks: Buffer[] = []
  socket.on('data', (d: Buffer) => chunks.push(d))
  const readyStatuses = (): string[] => {
    const all = Buffer.concat(chunks)
    const statuses: string[] = []
    for (let off = 0; off + 5 <= all.length;) {
      const len = all.readUInt32BE(off + 1)
      if (all[off] === 0x5a) statuses.push(String.fromCharCode(all[off + 5]!))
      off += 1 + len
    }
    return statuses
  }
  const until = async (n: number): Promise<void> => {
    for (let i = 0; i < 200 && readyStatuses().length < n; i++) await new Promise((r) => setTimeout(r, 20))
  }
  socket.write(startupMessage({ user: 'app', database: cluster.database }))
  await until(1)
  chunks.length = 0
  const batch = (sql: string): Buffer =>
    Buffer.concat([
      new BufferList().cstring('').cstring(sql).int16(0).message('P'),
      new BufferList().cstring('').cstring('').int16(0).int16(0).int16(0).message('B'),
      new BufferList().cstring('').int32(0).message('E'),
      new BufferList().message('S'),
    ])
  socket.write(Buffer.concat([batch('begin'), batch('select 1/0'), batch('select 1')]))
  await until(3)
  t.same(readyStatuses(), ['T', 'E', 'E'])
  // A SET of a reported parameter answers with ParameterStatus, which must reach the client.
  socket.write(new BufferList().cstring('rollback; set application_name = renamed').message('Q'))
  await until(4)
  t.ok(
    Buffer.concat(chunks).includes('application_name\0renamed\0'),
    'ParameterStatus application_name=renamed relayed',
  )
  socket.end(new BufferList().message('X'))
})

void t.test('psql Ctrl-C cancels a running pg_sleep within a second', async (t) => {
  const { stderr, code, afterCtrlCMs } = await ctrlCDuringSleep(proxy.port, cluster)
  t.match(stderr, /canceling statement due to user request/)
  t.not(code, 0)
  t.ok(afterCtrlCMs < 5_000, `psql returned ${afterCtrlCMs} ms after Ctrl-C, not after the 30 s sleep`)
})
