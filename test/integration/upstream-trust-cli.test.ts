import { spawn } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { freePort } from '../support/free-port.js'
import { runClient } from '../support/run-client.js'
import { acceptAndForge, selfSignedCertificate, startSpoofUpstream } from '../support/spoof-upstream.js'

// The real executable (src/cli/main.ts run) in front of a spoofed TLS upstream, with psql: under
// channel_binding require the spoof learns nothing and psql says why; sslrootcert "system" with a
// weaker sslmode is refused at start and on SIGHUP, naming the key. No PostgreSQL needed.

const PASSWORD = 'spoof-must-never-see-this-4711'
const dir = await mkdtemp(join(tmpdir(), 'pgvp-trust-'))
t.teardown(() => rm(dir, { recursive: true, force: true }))
const passwordFile = join(dir, 'password')
await writeFile(passwordFile, PASSWORD, { mode: 0o600 })

function configYaml(listen: number, upstream: string[]): string {
  return [
    `listen: 127.0.0.1:${listen}`,
    'owner_role: app_owner',
    'ops: { enabled: false }',
    'log: { format: json }',
    'upstream:',
    ...upstream.map((line) => `  ${line}`),
    'credentials:',
    `  static: { username: app_login, password_file: ${passwordFile} }`,
  ].join('\n')
}

interface Run {
  output(): string
  exit: Promise<number | null>
  signal(name: NodeJS.Signals): void
  /** Waits until a JSON log line with this msg appears, and returns it. */
  logged(msg: string): Promise<Record<string, unknown>>
}

function run(file: string): Run {
  const child = spawn(process.execPath, ['--import=tsx', 'src/cli/main.ts', 'run', '--config', file], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  const waiters = new Set<() => void>()
  const onData = (d: Buffer): void => {
    output += d.toString()
    for (const wake of waiters) wake()
  }
  child.stdout.on('data', onData)
  child.stderr.on('data', onData)
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  t.teardown(() => void child.kill('SIGKILL'))
  const find = (msg: string): Record<string, unknown> | undefined =>
    output
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as Record<string, unknown>)
      .find((line) => line.msg === msg)
  return {
    output: () => output,
    exit,
    signal: (name) => void child.kill(name),
    async logged(msg) {
      const deadline = Date.now() + 20_000
      for (let line = find(msg); ; line = find(msg)) {
        if (line) return line
        if (Date.now() > deadline) throw new Error(`no log line "${msg}" in:\n${output}`)
        await new Promise<void>((resolve) => {
          const wake = (): void => {
            clearTimeout(timer)
            waiters.delete(wake)
            resolve()
          }
          const timer = setTimeout(wake, 200)
          waiters.add(wake)
        })
      }
    },
  }
}

void t.test(
  'channel_binding require through the executable: psql gets the reason, the spoof gets nothing',
  async (t) => {
    const spoof = await startSpoofUpstream(t, acceptAndForge, await selfSignedCertificate())
    const listen = await freePort()
    const file = join(dir, 'require.yaml')
    await writeFile(
      file,
      configYaml(listen, ['host: 127.0.0.1', `port: ${spoof.port}`, 'sslmode: require', 'channel_binding: require']),
    )
    const proxy = run(file)
    await proxy.logged('pg-vault-proxy ready')
    const psql = await runClient('psql', [
      '-X',
      '-At',
      '-h',
      '127.0.0.1',
      '-p',
      String(listen),
      '-U',
      'app',
      '-d',
      'appdb',
      '-c',
      'select 1',
    ])
    t.not(psql.code, 0, psql.out)
    t.match(psql.stderr, /FATAL: +pg-vault-proxy: channel binding is required \(upstream\.channel_binding: require\)/)
    t.notMatch(psql.stdout, /forged/)
    t.same(
      spoof.connections.flatMap((c) => c.messages.map((m) => m.type)),
      [],
      'no password, hash or query reached the spoof',
    )
    t.ok(spoof.connections[0]?.tls, 'over TLS')

    // SIGHUP with sslrootcert "system" and sslmode require: refused, the running configuration stays.
    await writeFile(file, configYaml(listen, ['host: db.example.com', 'sslmode: require', 'sslrootcert: system']))
    proxy.signal('SIGHUP')
    const refused = await proxy.logged('configuration reload refused; the running configuration stays in force')
    t.match(refused.problems, [/^upstream\.sslrootcert: "system" trusts every public CA for any host name/])
    t.notOk(proxy.output().includes(PASSWORD), 'the password is never logged')
    proxy.signal('SIGTERM')
    t.equal(await proxy.exit, 0)
  },
)

void t.test('sslrootcert system with sslmode verify-ca: the executable refuses to start, naming the key', async (t) => {
  const file = join(dir, 'system.yaml')
  await writeFile(
    file,
    configYaml(await freePort(), ['host: db.example.com', 'sslmode: verify-ca', 'sslrootcert: system']),
  )
  const proxy = run(file)
  t.equal(await proxy.exit, 1)
  t.match(proxy.output(), /upstream\.sslrootcert: "system" trusts every public CA .* not verify-ca/)
})
