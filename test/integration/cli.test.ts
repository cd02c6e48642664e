import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import t from 'tap'
import { freePort } from '../support/free-port.js'
import { clusterFor } from '../support/pg-cluster.js'
import { clusterUpstreamYaml } from '../support/proxy-config.js'

// The real executable: `pg-vault-proxy run --config FILE`, run from source with tsx.
const cluster = await clusterFor(t)
const dir = await mkdtemp(join(tmpdir(), 'pgvp-cli-'))
t.teardown(() => rm(dir, { recursive: true, force: true }))
const passwordFile = join(dir, 'password')
await writeFile(passwordFile, cluster.users.scram.password, { mode: 0o600 })

function configYaml(extra = ''): string {
  return [
    `socket_dir: ${dir}`,
    `owner_role: ${cluster.ownerRole}`,
    ...clusterUpstreamYaml(cluster, passwordFile),
    extra,
  ].join('\n')
}

async function writeConfig(name: string, text: string): Promise<string> {
  const file = join(dir, name)
  await writeFile(file, text)
  return file
}

function start(args: string[]): { child: ChildProcess; output: () => string; exit: Promise<number | null> } {
  const child = spawn(process.execPath, ['--import=tsx', 'src/cli/main.ts', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()))
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()))
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  t.teardown(() => void child.kill('SIGKILL'))
  return { child, output: () => output, exit }
}

/** A liveness guard, not a speed check: a loaded CI machine can take many seconds to start tsx. */
async function waitFor(check: () => boolean, what: string, output: () => string): Promise<void> {
  const until = Date.now() + 60_000
  while (Date.now() < until) {
    if (check()) return
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`timed out waiting for ${what}; it printed:\n${output()}`)
}

void t.test('run --config with --listen overriding the file; SIGTERM stops it with exit 0', async (t) => {
  const port = await freePort()
  const file = await writeConfig('ok.yaml', configYaml('listen: 127.0.0.1:1'))
  const proc = start(['run', '--config', file, '--listen', `127.0.0.1:${port}`])
  await waitFor(() => proc.output().includes('pg-vault-proxy ready'), 'the proxy to start', proc.output)
  const client = new pg.Client({ host: '127.0.0.1', port, user: 'x', database: cluster.database })
  await client.connect()
  t.equal((await client.query<{ u: string }>('select current_user as u')).rows[0]?.u, 'app_owner')
  const ended = new Promise<Error>((resolve) => client.on('error', resolve))
  proc.child.kill('SIGTERM')
  t.equal(await proc.exit, 0)
  const err = (await ended) as Error & { code?: string }
  t.equal(err.code, '57P01', 'the open session was told the proxy is shutting down')
  t.notMatch(proc.output(), cluster.users.scram.password, 'the password never reaches the log')
})

void t.test('a bad config is refused with every problem named by its key', async (t) => {
  const file = await writeConfig(
    'bad.yaml',
    configYaml('listen: not-an-address\nupstream_typo: 1').replace('  port:', '  port: 70000\n  unused_port:'),
  )
  const proc = start(['run', '--config', file])
  t.equal(await proc.exit, 1)
  t.match(proc.output(), /listen: expected host:port/)
  t.match(proc.output(), /upstream_typo: unknown key/)
  t.match(proc.output(), /upstream\.unused_port: unknown key/)
})

void t.test('a non-loopback listen address is refused unless allow_remote is set', async (t) => {
  const file = await writeConfig('remote.yaml', configYaml('listen: 0.0.0.0:0'))
  const proc = start(['run', '--config', file])
  t.equal(await proc.exit, 2)
  t.match(proc.output(), /refusing to listen on 0\.0\.0\.0.*allow_remote: true/)
})
