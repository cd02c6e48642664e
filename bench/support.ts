/**
 * What the benchmarks (bench/run.ts, bench/rotation.ts) share: environment settings, child
 * processes that are stopped on every exit (Ctrl-C included), running commands, prerequisites,
 * CPU accounting from /proc, and result tables. Importing this module installs the SIGINT/SIGTERM/
 * SIGHUP cleanup, before the cluster harness installs its own hooks (which run on process.exit).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import { mkdtemp } from 'node:fs/promises'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const ROOT = path.dirname(path.dirname(fileURLToPath(import.meta.url)))
export const HOST = '127.0.0.1'

/** An integer setting from the environment, at least `min`. */
export function intEnv(name: string, fallback: number, min = 1): number {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback
  const value = Number(raw)
  if (!Number.isInteger(value) || value < min) throw new Error(`${name} must be an integer >= ${min}, got "${raw}"`)
  return value
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

// ---------------------------------------------------------------------------
// Child processes and cleanup (also on SIGINT/SIGTERM)

export interface Tracked {
  child: ChildProcess
  /** Spawned in its own process group (pgbouncer behind runuser): signal the whole group. */
  group?: boolean
  /** A pid file naming the real daemon, in case the wrapper does not pass signals on. */
  pidFile?: string
}
const tracked = new Set<Tracked>()
const tempDirs = new Set<string>()

export function track(entry: Tracked): Tracked {
  tracked.add(entry)
  entry.child.once('exit', () => tracked.delete(entry))
  return entry
}

export function signalTracked(entry: Tracked, signal: NodeJS.Signals): void {
  const { child, group, pidFile } = entry
  try {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      if (group) process.kill(-child.pid, signal)
      else child.kill(signal)
    }
  } catch {
    // already gone
  }
  if (pidFile) {
    try {
      const pid = Number(readFileSync(pidFile, 'utf8').trim())
      if (pid > 0) process.kill(pid, signal)
    } catch {
      // no pid file, or the daemon is gone
    }
  }
}

export function cleanupSync(): void {
  for (const entry of tracked) signalTracked(entry, 'SIGTERM')
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true })
  tempDirs.clear()
}

function onSignal(signal: NodeJS.Signals): void {
  process.stderr.write(`\nbench: ${signal}, cleaning up\n`)
  cleanupSync()
  // process.exit runs the cluster harness's 'exit' hook, which stops the cluster synchronously.
  process.exit(128 + (os.constants.signals[signal] ?? 0))
}

// Registered at import, before startCluster installs its own hooks, so ours runs first.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, onSignal)

export async function stopChild(entry: Tracked, timeoutMs = 10_000): Promise<void> {
  const { child } = entry
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  signalTracked(entry, 'SIGTERM')
  const timer = setTimeout(() => signalTracked(entry, 'SIGKILL'), timeoutMs)
  await exited
  clearTimeout(timer)
}

/** Stops every child still running (at the end of a run, whatever happened). */
export async function stopAll(timeoutMs = 3_000): Promise<void> {
  for (const entry of [...tracked]) await stopChild(entry, timeoutMs)
}

/** A temporary directory removed on every exit. */
export async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix))
  tempDirs.add(dir)
  return dir
}

// ---------------------------------------------------------------------------
// Running commands

/**
 * PG* variables from the caller's shell must not redirect our clients. No TLS anywhere: the test
 * cluster serves TLS and libpq's default sslmode=prefer would encrypt only the direct connections.
 */
export function clientEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('PG')))
  return { ...env, LC_ALL: 'C', PGCONNECT_TIMEOUT: '10', PGSSLMODE: 'disable', ...extra }
}

export interface RunResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

export function run(file: string, args: string[], env: NodeJS.ProcessEnv): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] })
    const entry = track({ child })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s))
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s))
    child.once('error', (err) => {
      tracked.delete(entry)
      reject(err)
    })
    child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr }))
  })
}

export async function runOk(file: string, args: string[], env: NodeJS.ProcessEnv): Promise<string> {
  const result = await run(file, args, env)
  if (result.code !== 0) {
    throw new Error(
      `${path.basename(file)} ${args.join(' ')} failed (${result.signal ?? `exit ${result.code}`}):\n${result.stderr}${result.stdout}`,
    )
  }
  return result.stdout
}

export function which(binary: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    const candidate = path.join(dir, binary)
    if (dir && existsSync(candidate)) return candidate
  }
  return undefined
}

export function firstLine(file: string, args: string[]): string {
  return execFileSync(file, args, { encoding: 'utf8' }).split('\n')[0]?.trim() ?? ''
}

export function tail(file: string, lines = 40): string {
  try {
    return readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n')
  } catch {
    return '(no log)'
  }
}

// ---------------------------------------------------------------------------
// Prerequisites and readiness

export function ensureClients(): { pgbench: string; psql: string } {
  const pgbench = which('pgbench')
  const psql = which('psql')
  if (!pgbench || !psql) {
    throw new Error('pgbench and psql are needed: `apt-get install -y postgresql-client-15` (or postgresql-15)')
  }
  return { pgbench, psql }
}

/** Uses dist/ as built; `npmScript` (which builds first) is named in the message. */
export function ensureBuilt(npmScript: string): void {
  const main = path.join(ROOT, 'dist', 'cli', 'main.js')
  if (existsSync(main)) {
    console.log(
      `using the proxy build in dist/ (built ${statSync(main).mtime.toISOString()}; \`npm run ${npmScript}\` rebuilds)`,
    )
    return
  }
  console.log('dist/ is missing; running `npm run build`')
  execFileSync('npm', ['run', 'build'], { cwd: ROOT, stdio: 'inherit' })
}

export async function portAccepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: HOST, port })
    socket.once('connect', () => {
      socket.destroy()
      resolve(true)
    })
    socket.once('error', () => resolve(false))
  })
}

/** Waits until `psql` can run a query through the port; fails early if `child` exits. */
export async function waitReady(
  psql: string,
  name: string,
  port: number,
  user: string,
  child: ChildProcess,
  logFile: string,
  /** For a target that passes the client's login through to PostgreSQL. */
  password?: string,
): Promise<void> {
  const deadline = Date.now() + 30_000
  let last = ''
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${name} exited (${child.signalCode ?? child.exitCode}) while starting. Log:\n${tail(logFile)}`)
    }
    if (await portAccepts(port)) {
      const result = await run(
        psql,
        ['-X', '-At', '-h', HOST, '-p', String(port), '-U', user, '-d', 'appdb', '-c', 'SELECT 1'],
        clientEnv(password !== undefined ? { PGPASSWORD: password } : {}),
      )
      if (result.code === 0 && result.stdout.trim() === '1') return
      last = result.stderr.trim()
    }
    await sleep(200)
  }
  throw new Error(`${name} did not answer a query on port ${port} within 30 s: ${last}\nLog:\n${tail(logFile)}`)
}

// ---------------------------------------------------------------------------
// CPU accounting

export const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100
  } catch {
    return 100
  }
})()

export interface ProcStat {
  ppid: number
  user: number
  sys: number
  /** utime + stime */
  own: number
  /** cutime + cstime: children that have exited and been waited for */
  reaped: number
}

export function procStat(pid: number | 'self'): ProcStat | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const f = stat
      .slice(stat.lastIndexOf(')') + 2)
      .split(' ')
      .map(Number)
    const [user, sys] = [f[11] ?? 0, f[12] ?? 0]
    return { ppid: f[1] ?? 0, user, sys, own: user + sys, reaped: (f[13] ?? 0) + (f[14] ?? 0) }
  } catch {
    return undefined
  }
}

/** CPU ticks of the postmaster and its backends, live and exited. */
export function postgresTicks(postmasterPid: number): number {
  const tree = processTreeTicks(postmasterPid)
  return tree ? tree.user + tree.sys : 0
}

/**
 * [user, sys] clock ticks of a process and its children, live and exited: the postmaster and its
 * backends, or an intermediary and any process it forked.
 */
export function processTreeTicks(pid: number): { user: number; sys: number } | undefined {
  const top = procStat(pid)
  if (!top) return undefined
  // Exited children's time is known only as a sum; it is counted as user time.
  const ticks = { user: top.user + top.reaped, sys: top.sys }
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    const st = procStat(Number(entry))
    if (st?.ppid !== pid) continue
    ticks.user += st.user + st.reaped
    ticks.sys += st.sys
  }
  return ticks
}

/** [busy, total] jiffies of all CPUs. */
export function machineTicks(): [number, number] {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? ''
  const values = line.trim().split(/\s+/).slice(1, 9).map(Number)
  const total = values.reduce((a, b) => a + b, 0)
  const idle = (values[3] ?? 0) + (values[4] ?? 0)
  return [total - idle, total]
}

/**
 * Other work on the machine (a test run, a build) skews every figure, most of all single-client
 * latency. Before each run, wait until the machine has been nearly idle for a second, for at most
 * `waitSeconds`; returns the busy % seen if it never settled.
 */
export async function waitForQuiet(waitSeconds: number): Promise<number | undefined> {
  const deadline = Date.now() + waitSeconds * 1000
  let warned = false
  while (waitSeconds > 0) {
    const [busy0, total0] = machineTicks()
    await sleep(1000)
    const [busy1, total1] = machineTicks()
    const busy = (100 * (busy1 - busy0)) / Math.max(1, total1 - total0)
    if (busy < 15) return undefined
    if (Date.now() >= deadline) {
      console.log(`  the machine is still ${busy.toFixed(0)}% busy with other work; measuring anyway (marked *)`)
      return busy
    }
    if (!warned) {
      console.log(
        `  the machine is ${busy.toFixed(0)}% busy with other work; waiting up to ${waitSeconds} s for it to settle`,
      )
      warned = true
    }
  }
  return undefined
}

// ---------------------------------------------------------------------------
// Results

/** A Markdown table with padded columns; `right` marks right-aligned ones. */
export function markdownTable(rows: string[][], right: boolean[]): string[] {
  const widths = (rows[0] ?? []).map((_, c) => Math.max(3, ...rows.map((r) => (r[c] ?? '').length)))
  const line = (cells: string[]): string =>
    `| ${cells.map((cell, c) => (right[c] ? cell.padStart(widths[c] ?? 0) : cell.padEnd(widths[c] ?? 0))).join(' | ')} |`
  const rule = `| ${widths.map((w, c) => (right[c] ? `${'-'.repeat(w - 1)}:` : '-'.repeat(w))).join(' | ')} |`
  const [head, ...body] = rows
  return [line(head ?? []), rule, ...body.map(line)]
}

export function median(values: number[]): number {
  if (values.length === 0) return NaN
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2
}

/** Runs a benchmark's main(): exit 0 when it ran, 1 (with the error and its cause) when something could not run. */
export function runBenchmark(main: () => Promise<void>): void {
  main().then(
    () => process.exit(0),
    (err: unknown) => {
      cleanupSync()
      process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
      if (err instanceof Error && err.cause instanceof Error) process.stderr.write(`cause: ${err.cause.message}\n`)
      process.exit(1)
    },
  )
}
