import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import t from 'tap'
import { freePort } from '../support/free-port.js'
import { clusterFor } from '../support/pg-cluster.js'
import { clusterUpstreamYaml } from '../support/proxy-config.js'
import { parseConfig } from '../../src/config/load-config.js'
import { ConfigReloader } from '../../src/ops/config-reload.js'
import { createLogger } from '../../src/ops/logger.js'
import { CLIENT_KEEPALIVE_DELAY_MS } from '../../src/proxy/proxy-server.js'
import { startProxy, type RunningProxy } from '../support/proxy-harness.js'
import { runClient } from '../support/run-client.js'
import { startupMessage } from '../support/wire-builder.js'

// Connections that have not sent their startup packet yet hold one of max_startup_connections
// slots; past it new connections get FATAL 53300 at once, and every way out of the startup frees
// its slot.
const cluster = await clusterFor(t)

/** Opens a TCP connection that sends nothing; resolves once connected. */
async function idleSocket(port: number): Promise<net.Socket> {
  const socket = net.connect({ host: '127.0.0.1', port })
  socket.on('error', () => {})
  await once(socket, 'connect')
  return socket
}

async function until(check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

async function connectAs(port: number): Promise<pg.Client> {
  const client = new pg.Client({ host: '127.0.0.1', port, user: 'app', database: cluster.database })
  client.on('error', () => {})
  await client.connect()
  return client
}

async function refusal(port: number): Promise<Record<string, string>> {
  return (await connectAs(port).then(
    async (c) => {
      await c.end()
      return { code: 'admitted' }
    },
    (e: unknown) => e,
  )) as Record<string, string>
}

const openConnections = (proxy: RunningProxy): number => proxy.server.status().sessions.connections

void t.test('idle sockets fill the slots; the next client gets 53300 at once; timeouts free them', async (t) => {
  const proxy = await startProxy(t, cluster, { max_startup_connections: 3, startup_timeout_ms: 1_500 })
  const idle = [await idleSocket(proxy.port), await idleSocket(proxy.port), await idleSocket(proxy.port)]
  await until(() => openConnections(proxy) === 3, 'the proxy to accept the idle sockets')
  t.match(proxy.server.status().sessions, { starting: 3, maxStartupConnections: 3 }, '/status shows the slots in use')

  const err = await refusal(proxy.port)
  t.equal(err.code, '53300', 'node-postgres: too_many_connections')
  t.match(err.message, /sorry, too many clients already \(pg-vault-proxy max_startup_connections reached: 3 /)
  const psql = await runClient('psql', [
    '-X',
    '-h',
    proxy.socketDir,
    '-p',
    String(proxy.port),
    '-U',
    'app',
    '-d',
    cluster.database,
    '-c',
    'select 1',
  ])
  t.equal(psql.code, 2, 'psql over the Unix socket could not connect')
  t.match(psql.stderr, /FATAL: {2}sorry, too many clients already \(pg-vault-proxy max_startup_connections reached/)
  const warnings = proxy.logs.filter((l) => String(l.msg).startsWith('max_startup_connections reached'))
  t.equal(warnings.length, 1, 'one warning for the two refusals in a row')

  const closed = idle.map((s) => once(s, 'close'))
  await Promise.all(closed)
  t.pass('startup_timeout_ms still closes the idle sockets')
  const client = await connectAs(proxy.port)
  t.equal((await client.query<{ n: number }>('select 1 as n')).rows[0]?.n, 1, 'a client is served once slots are free')
  await client.end()
  t.notMatch(proxy.logText(), /EMFILE|accept failed/, 'no descriptor errors')
})

void t.test('every way out of the startup frees its slot: login, a bad packet, the client leaving', async (t) => {
  const proxy = await startProxy(t, cluster, { max_startup_connections: 2 })
  // Logged-in sessions hold no slot: more of them than the limit.
  const sessions = [await connectAs(proxy.port), await connectAs(proxy.port), await connectAs(proxy.port)]
  // A junk packet (closed by the proxy), a client that leaves, a refused startup: each frees its slot.
  for (let i = 0; i < 3; i++) {
    const junk = await idleSocket(proxy.port)
    junk.write(Buffer.from([0, 0, 0, 4]))
    await once(junk, 'close')
    const leaving = await idleSocket(proxy.port)
    leaving.destroy()
    const bad = await idleSocket(proxy.port)
    bad.write(startupMessage({ database: cluster.database })) // no user: FATAL 28000
    bad.resume() // read the FATAL, so the proxy's close is seen
    await once(bad, 'close')
  }
  await until(() => openConnections(proxy) === sessions.length, 'the short connections to end')
  // Exactly two slots are free: two idle sockets take them, the third client is refused.
  const idle = [await idleSocket(proxy.port), await idleSocket(proxy.port)]
  await until(() => openConnections(proxy) === sessions.length + 2, 'the idle sockets to be accepted')
  t.equal((await refusal(proxy.port)).code, '53300', 'the slots freed are all there are')
  idle[0]!.destroy()
  await until(() => openConnections(proxy) === sessions.length + 1, 'the proxy to see the idle client leave')
  const admitted = await connectAs(proxy.port)
  t.equal((await admitted.query<{ n: number }>('select 2 as n')).rows[0]?.n, 2, 'admitted once one left')
  await admitted.end()
  idle[1]!.destroy()
  for (const s of sessions) await s.end()
})

void t.test('a reload keeps the running max_startup_connections and applies startup_timeout_ms', async (t) => {
  const proxy = await startProxy(t, cluster, { max_startup_connections: 2, startup_timeout_ms: 10_000 })
  let logText = ''
  const logger = createLogger(
    'debug',
    new Writable({
      write(chunk: Buffer, _encoding, done) {
        logText += chunk.toString()
        done()
      },
    }),
  )
  const { config } = proxy
  const raw = {
    listen: '127.0.0.1:0',
    socket_dir: proxy.socketDir,
    owner_role: config.owner_role,
    upstream: config.upstream,
    credentials: config.credentials,
    max_startup_connections: 5,
    startup_timeout_ms: 300,
  }
  const reloader = new ConfigReloader(config, {
    server: proxy.server,
    logger,
    load: () => Promise.resolve(parseConfig(raw)),
  })
  t.equal(await reloader.reload(), true, 'applied')
  t.match(
    logText,
    /"keys":\["max_startup_connections"\].*take effect only after a restart/,
    'the limit needs a restart',
  )
  const idle = [await idleSocket(proxy.port), await idleSocket(proxy.port)]
  await until(() => openConnections(proxy) === 2, 'the idle sockets to be accepted')
  t.equal((await refusal(proxy.port)).code, '53300', 'the running limit of 2 stays')
  const started = Date.now()
  await Promise.all(idle.map((s) => once(s, 'close')))
  t.ok(Date.now() - started < 5_000, 'the new startup_timeout_ms (300 ms) closed them, not the old 10 s')
})

void t.test('client TCP connections have keepalive on (the kernel runs a keepalive timer)', async (t) => {
  const proxy = await startProxy(t, cluster)
  const client = await idleSocket(proxy.port)
  t.teardown(() => client.destroy())
  await until(() => openConnections(proxy) === 1, 'the proxy to accept the connection')
  const local = client.localPort as number
  // `ss -o` shows the timer the kernel runs on the proxy's side of this connection.
  const ss = await runClient('ss', [
    '-tnoH',
    'state',
    'established',
    `( sport = :${proxy.port} and dport = :${local} )`,
  ])
  t.equal(ss.code, 0, ss.out)
  t.match(ss.stdout, /timer:\(keepalive,/, `keepalive timer on the accepted socket: ${ss.stdout.trim()}`)
  const seconds = Number(/keepalive,(\d+)sec/.exec(ss.stdout)?.[1])
  t.ok(seconds > 40 && seconds <= CLIENT_KEEPALIVE_DELAY_MS / 1000, `first probe after about 60 s (${seconds} s left)`)
  // Control: the client's own socket, where keepalive is off, has no such timer.
  const own = await runClient('ss', [
    '-tnoH',
    'state',
    'established',
    `( sport = :${local} and dport = :${proxy.port} )`,
  ])
  t.ok(own.stdout.trim().length > 0, 'the client side is listed')
  t.notMatch(own.stdout, /keepalive/, 'and has no keepalive timer')
})

void t.test('a flood of idle sockets beyond the descriptor limit: no EMFILE, refusals, then service', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'pgvp-slots-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const passwordFile = join(dir, 'password')
  await writeFile(passwordFile, cluster.users.scram.password, { mode: 0o600 })
  const port = await freePort()
  const config = join(dir, 'proxy.yaml')
  await writeFile(
    config,
    [
      `listen: 127.0.0.1:${port}`,
      `owner_role: ${cluster.ownerRole}`,
      'max_startup_connections: 16',
      'startup_timeout_ms: 3000',
      'log: { format: json }',
      'ops: { enabled: false }',
      ...clusterUpstreamYaml(cluster, passwordFile),
    ].join('\n'),
  )
  // 256 descriptors for the proxy, 400 sockets against it.
  const child = spawn(
    'bash',
    ['-c', `ulimit -n 256 && exec "${process.execPath}" --import=tsx src/cli/main.ts run --config "${config}"`],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  )
  let output = ''
  child.stdout.on('data', (d: Buffer) => (output += d.toString()))
  child.stderr.on('data', (d: Buffer) => (output += d.toString()))
  t.teardown(() => void child.kill('SIGKILL'))
  await until(() => output.includes('pg-vault-proxy ready'), 'the proxy to start', 30_000)

  const flood: net.Socket[] = []
  const closedCount = { count: 0 }
  for (let i = 0; i < 400; i++) {
    const socket = net.connect({ host: '127.0.0.1', port })
    socket.on('error', () => {})
    socket.on('close', () => closedCount.count++)
    socket.resume() // read what the proxy answers, so its close is seen
    flood.push(socket)
  }
  t.teardown(() => flood.forEach((s) => s.destroy()))
  await Promise.all(flood.map((s) => once(s, 'connect').catch(() => undefined)))
  // All but the 16 that hold a slot are answered and closed.
  await until(() => closedCount.count >= 400 - 16, 'the refused sockets to be closed')
  const err = await refusal(port)
  t.equal(err.code, '53300', 'a real client is refused with 53300 while the slots are full')
  t.equal(child.exitCode, null, 'the proxy is still running')

  await until(() => closedCount.count === 400, 'startup_timeout_ms to close the idle sockets in the slots', 15_000)
  const client = await connectAs(port)
  t.equal((await client.query<{ n: number }>('select 3 as n')).rows[0]?.n, 3, 'served once the slots are free')
  await client.end()
  t.notMatch(output, /EMFILE|ENFILE|accept failed/, 'no descriptor error in the log')
  t.match(output, /max_startup_connections reached/, 'the operator was told')
})
