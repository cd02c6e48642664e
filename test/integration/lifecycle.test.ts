import { spawn } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { createConnection } from 'node:net'
import { join } from 'node:path'
import pg from 'pg'
import t, { type Test } from 'tap'
import { SAME_REQUEST_MS } from '../../src/ops/lifecycle.js'
import { freePort } from '../support/free-port.js'
import { opsGet, sample } from '../support/ops-probe.js'
import { clusterFor } from '../support/pg-cluster.js'
import { clusterUpstreamYaml } from '../support/proxy-config.js'
import { eventually } from '../support/vault-target.js'

// The real executable and its signals: SIGTERM/SIGINT drain, a second signal, SIGHUP reload.
const cluster = await clusterFor(t)
const dir = await mkdtemp(join(tmpdir(), 'pgvp-life-'))
t.teardown(() => rm(dir, { recursive: true, force: true }))
const passwordFile = join(dir, 'password')
await writeFile(passwordFile, cluster.users.scram.password, { mode: 0o600 })

interface Ports {
  listen: number
  ops: number
}

function configYaml(ports: Ports, extra: string[] = [], ownerRole = cluster.ownerRole): string {
  return [
    `listen: 127.0.0.1:${ports.listen}`,
    `owner_role: ${JSON.stringify(ownerRole)}`,
    'ops:',
    `  listen: 127.0.0.1:${ports.ops}`,
    ...clusterUpstreamYaml(cluster, passwordFile),
    ...extra,
  ].join('\n')
}

interface Running {
  ports: Ports
  file: string
  kill(signal: NodeJS.Signals): void
  exit: Promise<number | null>
  logs(): Array<Record<string, unknown>>
  output(): string
  /** Resolves with the first log line whose msg is `msg` (and that matches `where`). */
  logged(msg: string, where?: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>>
  client(): Promise<pg.Client>
  ready: () => Promise<boolean>
}

async function start(t: Test, name: string, extra: string[] = []): Promise<Running> {
  const ports = { listen: await freePort(), ops: await freePort() }
  const file = join(dir, `${name}.yaml`)
  await writeFile(file, configYaml(ports, extra))
  const child = spawn(process.execPath, ['--import=tsx', 'src/cli/main.ts', 'run', '--config', file], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  child.stdout.on('data', (d: Buffer) => (output += d.toString()))
  child.stderr.on('data', (d: Buffer) => (output += d.toString()))
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  t.teardown(() => void child.kill('SIGKILL'))
  const logs = (): Array<Record<string, unknown>> =>
    output
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as Record<string, unknown>)
  const running: Running = {
    ports,
    file,
    kill: (signal) => void child.kill(signal),
    exit,
    logs,
    output: () => output,
    async logged(msg, where = () => true) {
      let line: Record<string, unknown> | undefined
      const found = await eventually(20, async () => {
        line = logs().find((l) => l.msg === msg && where(l))
        return line !== undefined
      })
      if (!found || !line) throw new Error(`no log line "${msg}" in:\n${output}`)
      return line
    },
    async client() {
      const client = new pg.Client({ host: '127.0.0.1', port: ports.listen, user: 'app', database: cluster.database })
      client.on('error', () => {})
      await client.connect()
      t.teardown(() => client.end().catch(() => undefined))
      return client
    },
    ready: async () => (await opsGet(ports.ops, '/readyz')).status === 200,
  }
  await running.logged('pg-vault-proxy ready')
  return running
}

const errorOf = (client: pg.Client): Promise<{ code?: string; message?: string }> =>
  new Promise((resolve) => client.on('error', (e) => resolve(e as { code?: string })))

const connectError = (port: number): Promise<{ code?: string; message?: string } | undefined> => {
  const client = new pg.Client({ host: '127.0.0.1', port, user: 'late', database: cluster.database })
  return client.connect().then(
    async () => {
      await client.end()
      return undefined
    },
    (e: unknown) => e as { code?: string },
  )
}

const currentUser = async (client: pg.Client): Promise<string | undefined> =>
  (await client.query<{ u: string }>('select current_user as u')).rows[0]?.u

void t.test('SIGTERM drains: not ready, no new sessions, an open transaction commits, then exit 0', async (t) => {
  await cluster.query(`create table drain_probe (x int); grant all on drain_probe to ${cluster.ownerRole}`)
  const proxy = await start(t, 'drain', ['shutdown_grace_ms: 60000'])
  t.ok(await eventually(10, proxy.ready), 'ready before the signal')
  const client = await proxy.client()
  const ended = errorOf(client)
  await client.query('begin')
  await client.query('insert into drain_probe values (1)')
  proxy.kill('SIGTERM')
  t.match(await proxy.logged('shutting down'), { signal: 'SIGTERM', graceMs: 60000 })
  t.ok(await eventually(10, async () => !(await proxy.ready())), 'not ready while draining')
  const refused = await connectError(proxy.ports.listen)
  t.equal(refused?.code, '57P03', 'a new client is refused')

  await client.query('insert into drain_probe values (2)')
  await client.query('commit')
  t.equal((await ended).code, '57P01', 'the session is closed once its transaction is done')
  t.equal(await proxy.exit, 0, 'exit 0')
  t.same(await cluster.query('select x from drain_probe order by x'), [{ x: 1 }, { x: 2 }], 'the transaction committed')
  t.ok(proxy.logs().some((l) => l.msg === 'stopped'))
  t.notOk(proxy.output().includes(cluster.users.scram.password), 'no password in the log')
})

void t.test('the grace period runs out: a session still in its transaction gets 57P01; exit 0', async (t) => {
  const proxy = await start(t, 'grace', ['shutdown_grace_ms: 300'])
  const client = await proxy.client()
  const ended = errorOf(client)
  await client.query('begin')
  proxy.kill('SIGTERM')
  const err = await ended
  t.equal(err.code, '57P01')
  t.match(err.message, /pg-vault-proxy is shutting down/)
  t.equal(await proxy.exit, 0)
  t.match(await proxy.logged('shutdown grace period over; ending the sessions still busy'), { sessions: 1 })
})

void t.test('a signal repeated within 1 s is the same request; a second one after that exits at once', async (t) => {
  const proxy = await start(t, 'twice', ['shutdown_grace_ms: 600000'])
  const client = await proxy.client()
  await client.query('begin')
  // What a terminal's Ctrl-C under `npm start` looks like: npm passes the keypress on again.
  proxy.kill('SIGTERM')
  proxy.kill('SIGINT')
  await proxy.logged('shutting down')
  await proxy.logged('signal repeated within 1 s: the same request to stop')
  await new Promise((r) => setTimeout(r, SAME_REQUEST_MS))
  proxy.kill('SIGINT')
  t.equal(await proxy.exit, 1, 'exit 1, without waiting for the open transaction')
  t.match(await proxy.logged('second signal: exiting at once, without waiting for sessions or revoking leases'), {
    signal: 'SIGINT',
  })
})

void t.test(
  'SIGHUP: new sessions get the new settings, open ones keep theirs; an invalid file changes nothing',
  async (t) => {
    const proxy = await start(t, 'reload')
    const old = await proxy.client()
    t.equal(await currentUser(old), cluster.ownerRole)

    const otherPort = await freePort()
    await writeFile(
      proxy.file,
      configYaml({ ...proxy.ports, listen: otherPort }, ['log:', '  level: debug'], cluster.mixedCaseOwnerRole),
    )
    proxy.kill('SIGHUP')
    t.match(await proxy.logged('configuration reloaded; new sessions use it, open sessions keep theirs'), {
      changed: ['log.level', 'owner_role'],
    })
    t.match(
      await proxy.logged(
        'configuration reload: these settings take effect only after a restart; their running values stay',
      ),
      { keys: ['listen.port'] },
    )
    const fresh = await proxy.client()
    t.equal(await currentUser(fresh), cluster.mixedCaseOwnerRole, 'a new session acts as the new owner role')
    t.equal(await currentUser(old), cluster.ownerRole, 'the open session keeps working as before')
    // A connection that closes before its startup packet is audited at debug level only.
    const probe = createConnection({ host: '127.0.0.1', port: proxy.ports.listen })
    probe.on('connect', () => probe.end())
    await proxy.logged('session ended', (l) => l.level === 20 && l.reason === 'client_left_during_startup')
    t.pass('the new log level applies')
    const status = JSON.parse((await opsGet(proxy.ports.ops, '/status')).body) as {
      ownerRole: string
      configuration: { generation: number }
    }
    t.equal(status.ownerRole, cluster.mixedCaseOwnerRole)
    t.equal(status.configuration.generation, 2)

    await writeFile(proxy.file, `${configYaml(proxy.ports)}\nbogus_key: 1\nshutdown_grace_ms: -5\n`)
    proxy.kill('SIGHUP')
    const refused = await proxy.logged('configuration reload refused; the running configuration stays in force')
    const problems = refused.problems as string[]
    t.ok(
      problems.some((p) => /^bogus_key: unknown key/.test(p)),
      'the unknown key is named',
    )
    t.ok(
      problems.some((p) => /^shutdown_grace_ms: /.test(p)),
      'the bad value is named',
    )
    const after = await proxy.client()
    t.equal(await currentUser(after), cluster.mixedCaseOwnerRole, 'the last good configuration stays')
    const metrics = (await opsGet(proxy.ports.ops, '/metrics')).body
    t.equal(sample(metrics, 'pg_vault_proxy_config_reloads_total', { outcome: 'applied' }), 1)
    t.equal(sample(metrics, 'pg_vault_proxy_config_reloads_total', { outcome: 'refused' }), 1)

    proxy.kill('SIGTERM')
    t.equal(await proxy.exit, 0)
  },
)
