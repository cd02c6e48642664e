import { spawn } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { runHealthcheck } from '../../src/cli/healthcheck-command.js'
import { parseConfig } from '../../src/config/load-config.js'
import { createLogger } from '../../src/ops/logger.js'
import { OpsServer } from '../../src/ops/ops-server.js'
import { freePort } from '../support/free-port.js'
import { clusterFor } from '../support/pg-cluster.js'
import { startProxy, type RunningProxy } from '../support/proxy-harness.js'

// `pg-vault-proxy healthcheck`, the container's HEALTHCHECK: it must probe where the configuration
// says the proxy is, and tell a ready proxy from one that is not, or not there at all.
const cluster = await clusterFor(t)
const dir = await mkdtemp(join(tmpdir(), 'pgvp-health-'))
t.teardown(() => rm(dir, { recursive: true, force: true }))

/** A configuration for the healthcheck only: it reads addresses, and never logs in. */
function healthConfig(extra: Record<string, unknown>): ReturnType<typeof parseConfig> {
  return parseConfig({
    owner_role: cluster.ownerRole,
    upstream: { host: cluster.host, port: cluster.port },
    credentials: { static: { username: 'unused', password: 'unused' } },
    ...extra,
  })
}

async function opsFor(t: Test, proxy: RunningProxy, host = '127.0.0.1', allowRemote = false): Promise<number> {
  const ops = new OpsServer({
    listen: { host, port: 0 },
    allowRemote,
    target: proxy.server,
    logger: createLogger('silent'),
  })
  await ops.start()
  t.teardown(() => ops.close())
  return ops.port
}

void t.test('ops server on: /readyz at ops.listen decides', async (t) => {
  const proxy = await startProxy(t, cluster)
  const port = await opsFor(t, proxy)
  const ready = await runHealthcheck(healthConfig({ ops: { listen: `127.0.0.1:${port}` } }), 2000)
  t.equal(ready.healthy, true, ready.detail)
  t.match(ready.detail, `http://127.0.0.1:${port}/readyz answered 200`)
  t.match(ready.detail, /\[\+\]credentials ok/, 'the readiness checks are shown, for docker inspect')

  const gone = await freePort()
  const refused = await runHealthcheck(healthConfig({ ops: { listen: `127.0.0.1:${gone}` } }), 2000)
  t.equal(refused.healthy, false, 'nothing listening at ops.listen')
  t.match(refused.detail, `http://127.0.0.1:${gone}/readyz: connect ECONNREFUSED`)
})

void t.test('a proxy without a usable credential is unhealthy, with the reason', async (t) => {
  const proxy = await startProxy(t, cluster, {
    credentials: { static: { username: cluster.users.scram.user, password_file: join(dir, 'missing') } },
  })
  const port = await opsFor(t, proxy)
  const result = await runHealthcheck(healthConfig({ ops: { listen: `127.0.0.1:${port}` } }), 2000)
  t.equal(result.healthy, false)
  t.match(result.detail, 'answered 503')
  t.match(result.detail, /\[-\]credentials failed/)
})

void t.test('a draining proxy is unhealthy', async (t) => {
  const proxy = await startProxy(t, cluster)
  const port = await opsFor(t, proxy)
  const config = healthConfig({ ops: { listen: `127.0.0.1:${port}` } })
  t.equal((await runHealthcheck(config, 2000)).healthy, true)
  const drained = proxy.server.drain(5000)
  const result = await runHealthcheck(config, 2000)
  t.equal(result.healthy, false)
  t.match(result.detail, /\[-\]accepting failed: shutting down/)
  await drained
})

void t.test('a wildcard ops.listen is probed on loopback', async (t) => {
  const proxy = await startProxy(t, cluster)
  const port = await opsFor(t, proxy, '0.0.0.0', true)
  const result = await runHealthcheck(healthConfig({ ops: { listen: `0.0.0.0:${port}`, allow_remote: true } }), 2000)
  t.equal(result.healthy, true, result.detail)
  t.match(result.detail, `http://127.0.0.1:${port}/readyz`)
})

void t.test('ops server off: every listener must answer the PostgreSQL handshake', async (t) => {
  const proxy = await startProxy(t, cluster)
  const up = await runHealthcheck(healthConfig({ ops: { enabled: false }, listen: `127.0.0.1:${proxy.port}` }), 2000)
  t.equal(up.healthy, true, up.detail)
  t.equal(up.detail, `the listener at 127.0.0.1:${proxy.port} answered an SSLRequest`)
  t.notOk(
    proxy.logs.some((l) => l.level === 40 || l.level === 50),
    'the probe leaves no warning or error in the proxy log',
  )

  const gone = await freePort()
  const routes = healthConfig({
    ops: { enabled: false },
    routes: [
      { name: 'one', listen: `127.0.0.1:${proxy.port}` },
      { name: 'two', listen: `127.0.0.1:${gone}` },
    ],
  })
  const half = await runHealthcheck(routes, 2000)
  t.equal(half.healthy, false, 'one route listener down is unhealthy')
  t.match(half.detail, `the listener at 127.0.0.1:${proxy.port} answered an SSLRequest`)
  t.match(half.detail, `the listener at 127.0.0.1:${gone}: connect ECONNREFUSED`)
})

void t.test('ops server off: a listener that is not the proxy, or says nothing, is unhealthy', async (t) => {
  const sockets = new Set<import('node:net').Socket>()
  const other = createServer((socket) => {
    sockets.add(socket)
    socket.once('data', () => socket.write('HTTP/1.1 400 Bad Request\r\n\r\n'))
  })
  const silent = createServer((socket) => sockets.add(socket))
  await Promise.all([other, silent].map((s) => new Promise<void>((r) => s.listen(0, '127.0.0.1', r))))
  t.teardown(() => {
    for (const s of sockets) s.destroy()
    other.close()
    silent.close()
  })
  const portOf = (s: typeof other): number => (s.address() as { port: number }).port
  const wrong = await runHealthcheck(
    healthConfig({ ops: { enabled: false }, listen: `127.0.0.1:${portOf(other)}` }),
    2000,
  )
  t.equal(wrong.healthy, false)
  t.match(wrong.detail, 'answered an SSLRequest with "H", not "N"')
  const quiet = await runHealthcheck(
    healthConfig({ ops: { enabled: false }, listen: `127.0.0.1:${portOf(silent)}` }),
    300,
  )
  t.equal(quiet.healthy, false)
  t.match(quiet.detail, 'no answer within 300 ms')
})

void t.test('port 0 cannot be probed, and says so', async (t) => {
  const ops = await runHealthcheck(healthConfig({ ops: { listen: '127.0.0.1:0' } }), 2000)
  t.equal(ops.healthy, false)
  t.match(ops.detail, 'ops.listen has port 0')
  const listener = await runHealthcheck(healthConfig({ ops: { enabled: false }, listen: '127.0.0.1:0' }), 2000)
  t.equal(listener.healthy, false)
  t.match(listener.detail, 'listen has port 0')
})

function cli(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, ['--import=tsx', 'src/cli/main.ts', ...args], {
      env: { ...process.env, ...env },
    })
    let stdout = ''
    let stderr = ''
    proc.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    proc.on('close', (code) => resolve({ code, stdout, stderr }))
  })
}

void t.test('the CLI: PGVP_CONFIG names the file, exit 0 when healthy and 1 when not', async (t) => {
  const proxy = await startProxy(t, cluster)
  const port = await opsFor(t, proxy)
  const file = join(dir, 'proxy.yaml')
  await writeFile(
    file,
    [
      `owner_role: ${cluster.ownerRole}`,
      `upstream: { host: ${cluster.host}, port: ${cluster.port} }`,
      `credentials: { static: { username: unused, password_file: ${join(dir, 'unused')} } }`,
      `ops: { listen: 127.0.0.1:${port} }`,
    ].join('\n'),
  )
  const healthy = await cli(['healthcheck'], { PGVP_CONFIG: file })
  t.equal(healthy.code, 0, healthy.stdout + healthy.stderr)
  t.match(healthy.stdout, /^healthy: http:\/\/127\.0\.0\.1:\d+\/readyz answered 200/)

  const gone = await freePort()
  const unhealthy = await cli(['healthcheck', '--timeout', '500'], {
    PGVP_CONFIG: file,
    PGVP_OPS_LISTEN: `127.0.0.1:${gone}`,
  })
  t.equal(unhealthy.code, 1, 'Docker reads 1 as unhealthy')
  t.match(unhealthy.stdout, /^unhealthy: .*ECONNREFUSED/)

  const flagWins = await cli(['healthcheck', '--config', join(dir, 'nowhere.yaml')], { PGVP_CONFIG: file })
  t.equal(flagWins.code, 1, '--config wins over PGVP_CONFIG, and an unreadable file is unhealthy')
  t.match(flagWins.stderr, /cannot read config file .*nowhere\.yaml: ENOENT/)

  const badTimeout = await cli(['healthcheck', '--timeout', 'soon'], { PGVP_CONFIG: file })
  t.equal(badTimeout.code, 1)
  t.match(badTimeout.stderr, '--timeout: expected a positive number of milliseconds, got "soon"')
})
