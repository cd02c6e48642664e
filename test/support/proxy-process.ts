import { spawn } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import { freePort } from './free-port.js'
import { opsGet, sample } from './ops-probe.js'
import type { PgCluster } from './pg-cluster.js'
import { clusterUpstreamYaml } from './proxy-config.js'
import { eventually } from './vault-target.js'

interface Teardown {
  teardown(fn: () => unknown): void
}

/** The proxy as its own process (`pg-vault-proxy run`), in front of the test cluster. */
export interface ProxyProcess {
  port: number
  opsPort: number
  /** The process's exit code, once it exited; undefined while it runs. */
  exitCode(): number | null | undefined
  logs(): Array<Record<string, unknown>>
  output(): string
  /** A connected node-postgres client (closed at teardown). */
  client(): Promise<pg.Client>
  /** GET /metrics, and one sample of it. */
  metric(name: string, labels?: Record<string, string>): Promise<number | undefined>
  /** Resolves with the first log line whose msg is `msg` (and that matches `where`). */
  logged(msg: string, where?: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>>
  stop(): Promise<void>
}

/**
 * Runs the real CLI in a child process, from the sources (as the other CLI tests do, so it never
 * runs a stale build). `imports` are extra modules loaded first (--import), e.g. a fault injector.
 */
export async function startProxyProcess(
  t: Teardown,
  cluster: PgCluster,
  options: { imports?: string[]; extraYaml?: string[] } = {},
): Promise<ProxyProcess> {
  const dir = await mkdtemp(join(tmpdir(), 'pgvp-proc-'))
  const passwordFile = join(dir, 'password')
  await writeFile(passwordFile, cluster.users.scram.password, { mode: 0o600 })
  const port = await freePort()
  const opsPort = await freePort()
  const file = join(dir, 'proxy.yaml')
  await writeFile(
    file,
    [
      `listen: 127.0.0.1:${port}`,
      `owner_role: ${JSON.stringify(cluster.ownerRole)}`,
      'ops:',
      `  listen: 127.0.0.1:${opsPort}`,
      ...clusterUpstreamYaml(cluster, passwordFile),
      ...(options.extraYaml ?? []),
    ].join('\n'),
  )
  const imports = (options.imports ?? []).map((path) => `--import=${path}`)
  const child = spawn(process.execPath, ['--import=tsx', ...imports, 'src/cli/main.ts', 'run', '--config', file], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  child.stdout.on('data', (d: Buffer) => (output += d.toString()))
  child.stderr.on('data', (d: Buffer) => (output += d.toString()))
  let exitCode: number | null | undefined
  const exited = new Promise<void>((resolve) =>
    child.on('exit', (code) => {
      exitCode = code
      resolve()
    }),
  )
  const clients: pg.Client[] = []
  const stop = async (): Promise<void> => {
    await Promise.all(clients.splice(0).map((c) => c.end().catch(() => undefined)))
    if (exitCode === undefined) {
      child.kill('SIGKILL')
      await exited
    }
    await rm(dir, { recursive: true, force: true })
  }
  t.teardown(stop)
  const logs = (): Array<Record<string, unknown>> =>
    output
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as Record<string, unknown>)
  const proxy: ProxyProcess = {
    port,
    opsPort,
    exitCode: () => exitCode,
    logs,
    output: () => output,
    async client() {
      const client = new pg.Client({ host: '127.0.0.1', port, user: 'app', database: cluster.database })
      client.on('error', () => {})
      await client.connect()
      clients.push(client)
      return client
    },
    async metric(name, labels = {}) {
      return sample((await opsGet(opsPort, '/metrics')).body, name, labels)
    },
    async logged(msg, where = () => true) {
      let line: Record<string, unknown> | undefined
      const found = await eventually(20, async () => {
        line = logs().find((l) => l.msg === msg && where(l))
        return line !== undefined || exitCode !== undefined
      })
      if (!found || !line) throw new Error(`no log line "${msg}" in:\n${output}`)
      return line
    },
    stop,
  }
  await proxy.logged('pg-vault-proxy ready')
  return proxy
}
