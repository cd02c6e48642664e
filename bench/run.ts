/**
 * Throughput and latency of the proxy against a direct connection and pgbouncer (session mode).
 *
 * One run starts a throwaway PostgreSQL 15 cluster (test/support/pg-cluster.ts), initialises
 * pgbench tables, starts pgbouncer and pg-vault-proxy in front of it (both log in upstream as the
 * same SCRAM user over plain TCP on 127.0.0.1), and a bare Node.js TCP relay (bench/node-relay.ts:
 * what any relay on this runtime costs, with no protocol work), then runs pgbench against each:
 *
 *   c16: pgbench -n -S -M prepared -c 16 -j 2 -T BENCH_SECONDS
 *   c1:  pgbench -n -S -c 1 -T BENCH_SECONDS
 *   c8conn: pgbench -n -S -C -c 8 -j 2 -T BENCH_SECONDS (a new connection, so a new login, per transaction)
 *
 * in BENCH_ROUNDS rounds, rotating the order of the targets each round, and reports the median TPS
 * and average latency per target and mode, the proxy/pgbouncer, proxy/direct and proxy/node-relay ratios, and whether
 * the targets are met (proxy TPS >= 0.9 x pgbouncer's at 16 clients; added single-client latency
 * no worse than pgbouncer's). Missing a target is a result, not a failure: the exit code is 0
 * unless something could not run. Runs disturbed by other work on the machine are repeated, and
 * left out of the medians if they stay disturbed. docs/performance.md has the recorded figures.
 *
 * Environment: BENCH_SECONDS (15), BENCH_ROUNDS (3), BENCH_WARMUP_SECONDS (5), BENCH_SCALE (10),
 * BENCH_RETRIES (2) and BENCH_QUIET_WAIT_SECONDS (60) for disturbed runs, BENCH_MODES (c16,c1,c8conn:
 * the modes to run), BENCH_PROFILE=1 or a mode's id (afterwards, one extra run of the first mode, or
 * that one, against a proxy started with --cpu-prof, and a summary of where the proxy spends its CPU), BENCH_PIN=1 (the intermediaries on the last CPU alone, pgbench and
 * PostgreSQL on the others: what a sidecar with a core of its own sees; the direct connection then
 * has one CPU fewer, so compare the intermediaries with each other), BENCH_JSON=file (also write the results as JSON), PGBOUNCER_BIN
 * (/usr/sbin/pgbouncer), PGVP_PG_BIN (the server binaries, as for the tests).
 */
import { execFileSync, spawn } from 'node:child_process'
import { existsSync, openSync, readdirSync, readFileSync } from 'node:fs'
import { mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { freePort } from '../test/support/free-port.js'
import { startCluster, type PgCluster } from '../test/support/pg-cluster.js'
import {
  CLK_TCK,
  HOST,
  ROOT,
  cleanupSync,
  runBenchmark,
  clientEnv,
  ensureBuilt,
  ensureClients,
  firstLine,
  intEnv,
  machineTicks,
  markdownTable,
  median,
  postgresTicks,
  procStat,
  run,
  runOk,
  sleep,
  stopAll,
  stopChild,
  tempDir,
  track,
  waitForQuiet,
  waitReady,
} from './support.js'
import { PGBOUNCER, ensurePgbouncer, startPgbouncer, startProxy, writeProxyConfig, type Started } from './targets.js'

const SECONDS = intEnv('BENCH_SECONDS', 15)
const ROUNDS = intEnv('BENCH_ROUNDS', 3)
const WARMUP_SECONDS = intEnv('BENCH_WARMUP_SECONDS', 5)
const SCALE = intEnv('BENCH_SCALE', 10)
const QUIET_WAIT_SECONDS = intEnv('BENCH_QUIET_WAIT_SECONDS', 60, 0)
/** A run during which other processes used more than this % of the machine is repeated, then left out. */
const OTHER_LIMIT_PCT = 10
const RETRIES = intEnv('BENCH_RETRIES', 2, 0)
const PROFILE = process.env.BENCH_PROFILE !== undefined && process.env.BENCH_PROFILE !== '0'
const JSON_OUT = process.env.BENCH_JSON
/** BENCH_PIN=1: the CPU lists, worked out once in main(). */
let pinned: { load: string; intermediary: string } | undefined

/** The targets the issue sets: 16-client TPS ratio to pgbouncer, and single-client added latency. */
const TPS_RATIO_TARGET = 0.9

type TargetName = 'direct' | 'pgbouncer' | 'proxy' | 'node-relay' | 'node-pooler'
const TARGETS: TargetName[] = ['direct', 'pgbouncer', 'proxy', 'node-relay', 'node-pooler']
/** The minimal Node.js pooler (bench/node-pooler.ts) is the floor for a new connection per transaction only. */
const runsIn = (target: TargetName, mode: Mode['id']): boolean => target !== 'node-pooler' || mode === 'c8conn'

interface Mode {
  id: 'c16' | 'c1' | 'c8conn'
  label: string
  args: string[]
}
const ALL_MODES: Mode[] = [
  { id: 'c16', label: '-S -M prepared -c 16 -j 2', args: ['-S', '-M', 'prepared', '-c', '16', '-j', '2'] },
  { id: 'c1', label: '-S -c 1', args: ['-S', '-c', '1'] },
  // A new connection per transaction (-C): Django's CONN_MAX_AGE = 0, PHP, cron jobs. Every
  // transaction pays the whole login through the intermediary, so this is where pooling shows.
  { id: 'c8conn', label: '-S -C -c 8 -j 2', args: ['-S', '-C', '-c', '8', '-j', '2'] },
]
/** BENCH_MODES=c8conn,c16: only these modes (all by default). */
const MODES: Mode[] = ((): Mode[] => {
  const wanted = process.env.BENCH_MODES?.split(',').filter(Boolean)
  if (!wanted) return ALL_MODES
  const unknown = wanted.filter((id) => !ALL_MODES.some((m) => m.id === id))
  if (unknown.length > 0) throw new Error(`BENCH_MODES: unknown mode ${unknown.join(', ')} (known: c16, c1, c8conn)`)
  return ALL_MODES.filter((m) => wanted.includes(m.id))
})()

interface Target {
  name: TargetName
  port: number
  /** The direct connection and the bare relay need one; both proxies let the client in without. */
  password?: string
  /** The intermediary's process, whose CPU use is reported. */
  pid?: () => number | undefined
}

interface Sample {
  tps: number
  latencyMs: number
  /** pgbench's "average connection time" (reported with -C). */
  connectionMs?: number
  /** CPU used by the intermediary (pgbouncer or the proxy), in % of one core. */
  cpuPct?: number
  /** The same as user and system CPU microseconds per transaction. */
  cpuUserUsPerTx?: number
  cpuSysUsPerTx?: number
  /** How busy the whole machine was, in % of all cores. */
  machineBusyPct: number
  /** CPU used by processes other than the benchmark's own, in % of all cores. */
  otherPct: number
  /** Other work disturbed this run (see OTHER_LIMIT_PCT and waitForQuiet). */
  disturbed: boolean
}

/**
 * BENCH_PIN=1: CPU lists for taskset(1). The intermediary (pgbouncer, the proxy or the bare relay)
 * gets the last CPU to itself; pgbench and PostgreSQL share the others.
 */
function pinning(): { load: string; intermediary: string } {
  const cpus = os.cpus().length
  if (cpus < 2) throw new Error('BENCH_PIN=1 needs at least two CPUs')
  if (!existsSync('/usr/bin/taskset')) throw new Error('BENCH_PIN=1 needs taskset (util-linux)')
  return { load: cpus === 2 ? '0' : `0-${cpus - 2}`, intermediary: String(cpus - 1) }
}

/** Pins a process with all its threads, and its current children, to `cpus`; children forked later inherit it. */
function pin(pid: number | undefined, cpus: string): void {
  if (pid === undefined) return
  const pids = [pid]
  for (const entry of readdirSync('/proc')) {
    if (/^\d+$/.test(entry) && procStat(Number(entry))?.ppid === pid) pids.push(Number(entry))
  }
  for (const p of pids) execFileSync('taskset', ['-a', '-p', '-c', cpus, String(p)], { stdio: 'ignore' })
}

/** The bare Node.js relay (bench/node-relay.ts): the runtime's floor for any relay. */
async function startNodeRelay(psql: string, cluster: PgCluster): Promise<Started> {
  const port = await freePort()
  const logFile = path.join(await tempDir('pgvp-bench-relay-'), 'node-relay.log')
  const out = openSync(logFile, 'a')
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', path.join(ROOT, 'bench', 'node-relay.ts'), String(port), cluster.host, String(cluster.port)],
    { cwd: ROOT, stdio: ['ignore', out, out], env: clientEnv() },
  )
  const entry = track({ child, group: false })
  const { user, password } = cluster.users.scram
  await waitReady(psql, 'node-relay', port, user, child, logFile, password)
  return { entry, port, pid: () => child.pid, logFile }
}

/**
 * The minimal Node.js session pooler (bench/node-pooler.ts): the runtime's floor for a new
 * connection per transaction, where the bare relay logs in afresh every time.
 */
async function startNodePooler(psql: string, cluster: PgCluster): Promise<Started> {
  const port = await freePort()
  const logFile = path.join(await tempDir('pgvp-bench-pooler-'), 'node-pooler.log')
  const out = openSync(logFile, 'a')
  const { user, password } = cluster.users.scram
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      path.join(ROOT, 'bench', 'node-pooler.ts'),
      String(port),
      cluster.host,
      String(cluster.port),
      user,
      'appdb',
    ],
    { cwd: ROOT, stdio: ['ignore', out, out], env: clientEnv({ PGVP_BENCH_PASSWORD: password }) },
  )
  const entry = track({ child, group: false })
  await waitReady(psql, 'node-pooler', port, user, child, logFile)
  return { entry, port, pid: () => child.pid, logFile }
}

// ---------------------------------------------------------------------------
// Measuring

/** [utime, stime] of a process, in clock ticks. */
function cpuTicks(pid: number | undefined): [number, number] | undefined {
  if (pid === undefined) return undefined
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return [Number(fields[11]), Number(fields[12])]
  } catch {
    return undefined
  }
}

/**
 * CPU ticks used so far by everything the benchmark runs: this process and its reaped children
 * (pgbench, psql), the postmaster with its live and reaped children (the backends), and the
 * intermediaries (`pids`). The rest of the machine's busy time is other work.
 */
function ourTicks(postmasterPid: number, pids: (number | undefined)[]): number {
  const self = procStat('self')
  let ticks = (self ? self.own + self.reaped : 0) + postgresTicks(postmasterPid)
  for (const pid of pids) if (pid !== undefined) ticks += procStat(pid)?.own ?? 0
  return ticks
}

function parsePgbench(output: string): { tps: number; latencyMs: number; connectionMs?: number } {
  const tps = /^tps = ([\d.]+)/m.exec(output)
  const latency = /^latency average = ([\d.]+) ms/m.exec(output)
  const connection = /^average connection time = ([\d.]+) ms/m.exec(output)
  const failed = /^number of failed transactions: (\d+)/m.exec(output)
  if (!tps?.[1] || !latency?.[1]) throw new Error(`could not parse pgbench output:\n${output}`)
  if (failed?.[1] && Number(failed[1]) > 0) throw new Error(`pgbench reported failed transactions:\n${output}`)
  const parsed = { tps: Number(tps[1]), latencyMs: Number(latency[1]) }
  return connection?.[1] ? { ...parsed, connectionMs: Number(connection[1]) } : parsed
}

/** What `pgbench` needs to tell the benchmark's own CPU use from other work's. */
interface Ours {
  postmasterPid: number
  /** The intermediaries' pids, whichever is being measured. */
  pids: () => (number | undefined)[]
}

async function pgbench(
  pgbenchBin: string,
  target: Target,
  mode: Mode,
  seconds: number,
  user: string,
  ours: Ours,
): Promise<Sample> {
  // prettier-ignore
  const args = [
    '-n', ...mode.args, '-T', String(seconds),
    '-h', HOST, '-p', String(target.port), '-U', user, 'appdb',
  ]
  const env = clientEnv(target.password !== undefined ? { PGPASSWORD: target.password } : {})
  const pid = target.pid?.()
  const cpuBefore = cpuTicks(pid)
  const oursBefore = ourTicks(ours.postmasterPid, ours.pids())
  const [busyBefore, totalBefore] = machineTicks()
  const started = process.hrtime.bigint()
  const result = pinned
    ? await run('taskset', ['-c', pinned.load, pgbenchBin, ...args], env)
    : await run(pgbenchBin, args, env)
  const elapsedS = Number(process.hrtime.bigint() - started) / 1e9
  const cpuAfter = cpuTicks(pid)
  const [busyAfter, totalAfter] = machineTicks()
  const oursAfter = ourTicks(ours.postmasterPid, ours.pids())
  if (result.code !== 0) {
    throw new Error(
      `pgbench against ${target.name} (${mode.label}) failed (${result.signal ?? `exit ${result.code}`}):\n${result.stderr}${result.stdout}`,
    )
  }
  const totalTicks = Math.max(1, totalAfter - totalBefore)
  const otherPct = (100 * Math.max(0, busyAfter - busyBefore - (oursAfter - oursBefore))) / totalTicks
  const sample: Sample = {
    ...parsePgbench(result.stdout),
    machineBusyPct: (100 * (busyAfter - busyBefore)) / totalTicks,
    otherPct,
    disturbed: otherPct > OTHER_LIMIT_PCT,
  }
  if (cpuBefore !== undefined && cpuAfter !== undefined) {
    // Includes connection setup; pgbench's own figures exclude it, but for a -T run it is small.
    const userS = (cpuAfter[0] - cpuBefore[0]) / CLK_TCK
    const sysS = (cpuAfter[1] - cpuBefore[1]) / CLK_TCK
    sample.cpuPct = (100 * (userS + sysS)) / elapsedS
    const transactions = sample.tps * seconds
    sample.cpuUserUsPerTx = (1e6 * userS) / transactions
    sample.cpuSysUsPerTx = (1e6 * sysS) / transactions
  }
  return sample
}

// ---------------------------------------------------------------------------
// CPU profile summary (BENCH_PROFILE=1)

interface ProfileNode {
  id: number
  callFrame: { functionName: string; url: string; lineNumber: number }
  children?: number[]
}
interface CpuProfile {
  nodes: ProfileNode[]
  samples: number[]
  timeDeltas: number[]
}

function frameKey(node: ProfileNode): string {
  const { functionName, url, lineNumber } = node.callFrame
  const name = functionName || '(anonymous)'
  if (!url) return name
  const short = url.startsWith('file://')
    ? path.relative(ROOT, fileURLToPath(url)).replace(/^node_modules\//, 'nm/')
    : url.replace(/^node:/, '')
  return `${name} ${short}:${lineNumber + 1}`
}

function frameCategory(node: ProfileNode): string {
  const { functionName, url } = node.callFrame
  if (!url) return functionName.startsWith('(') ? functionName : 'native/V8 builtins'
  if (url.startsWith('node:')) return 'node core (JS)'
  if (url.includes('/node_modules/')) return `node_modules/${url.split('/node_modules/')[1]?.split('/')[0] ?? '?'}`
  if (url.includes('/dist/')) return 'pg-vault-proxy (dist/)'
  return 'other JS'
}

function summariseProfile(profile: CpuProfile): string {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]))
  const parent = new Map<number, number>()
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id)
  const self = new Map<string, number>()
  const inclusive = new Map<string, number>()
  const categories = new Map<string, number>()
  let total = 0
  let idle = 0
  profile.samples.forEach((id, i) => {
    const us = profile.timeDeltas[i] ?? 0
    const node = byId.get(id)
    if (!node) return
    total += us
    if (node.callFrame.functionName === '(idle)') {
      idle += us
      return
    }
    self.set(frameKey(node), (self.get(frameKey(node)) ?? 0) + us)
    categories.set(frameCategory(node), (categories.get(frameCategory(node)) ?? 0) + us)
    const seen = new Set<string>()
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const n = byId.get(cur)
      if (!n || n.callFrame.functionName === '(root)') continue
      const key = frameKey(n)
      if (seen.has(key)) continue
      seen.add(key)
      inclusive.set(key, (inclusive.get(key) ?? 0) + us)
    }
  })
  const busy = total - idle
  const pct = (us: number): string => `${((100 * us) / Math.max(1, busy)).toFixed(1).padStart(5)}%`
  const top = (map: Map<string, number>, n: number, filter: (k: string) => boolean = () => true): string[] =>
    [...map]
      .filter(([k]) => filter(k))
      .sort((a, b) => b[1] - a[1])
      .slice(0, n)
      .map(([k, us]) => `  ${pct(us)}  ${k}`)
  return [
    `profiled ${(total / 1e6).toFixed(1)} s, of which the proxy's thread was busy ${(busy / 1e6).toFixed(1)} s (${((100 * busy) / Math.max(1, total)).toFixed(0)}%); percentages are of busy time`,
    'by category (self time):',
    ...top(categories, 12),
    'top functions by self time:',
    ...top(self, 25),
    'pg-vault-proxy functions by inclusive time:',
    ...top(inclusive, 15, (k) => k.includes(' dist/')),
  ].join('\n')
}

async function profileProxy(
  pgbenchBin: string,
  psql: string,
  cluster: PgCluster,
  config: { config: string; port: number },
  running: Started,
  postmasterPid: number,
): Promise<string> {
  await stopChild(running.entry)
  const keep = await mkdtemp(path.join(os.tmpdir(), 'pgvp-bench-profile-')) // kept for inspection
  const profiled = await startProxy(psql, cluster, config, ['--cpu-prof', `--cpu-prof-dir=${keep}`])
  const target: Target = { name: 'proxy', port: profiled.port, pid: profiled.pid }
  // BENCH_PROFILE=c8conn (or another mode's id) profiles that mode; 1, the first mode.
  const mode = MODES.find((m) => m.id === process.env.BENCH_PROFILE) ?? MODES[0]
  if (!mode) throw new Error('no benchmark mode to profile')
  const ours: Ours = { postmasterPid, pids: () => [profiled.pid()] }
  const sample = await pgbench(pgbenchBin, target, mode, SECONDS, cluster.users.scram.user, ours)
  await stopChild(profiled.entry) // SIGTERM: a clean exit writes the profile
  const files = (await readdir(keep)).filter((f) => f.endsWith('.cpuprofile'))
  if (files.length === 0) throw new Error(`the profiled proxy wrote no .cpuprofile to ${keep}`)
  const file = path.join(keep, files[0] as string)
  const profile = JSON.parse(await readFile(file, 'utf8')) as CpuProfile
  return [
    `profiled run (${mode.label}, -T ${SECONDS}, proxy under --cpu-prof): ${sample.tps.toFixed(0)} tps, proxy CPU ${sample.cpuPct?.toFixed(0) ?? '?'}% of a core, other work ${sample.otherPct.toFixed(0)}% of the machine`,
    `profile: ${file}`,
    summariseProfile(profile),
  ].join('\n')
}

// ---------------------------------------------------------------------------
// Main

async function main(): Promise<void> {
  const { pgbench: pgbenchBin, psql } = ensureClients()
  ensurePgbouncer()
  if (process.env.BENCH_PIN === '1') pinned = pinning()
  ensureBuilt('bench')

  console.log('starting a PostgreSQL 15 cluster ...')
  // The pgbench tables (~160 MB at scale 10) stay in shared buffers for every target alike.
  const cluster = await startCluster({ extraConf: ['shared_buffers = 256MB'] })
  try {
    const { user, password } = cluster.users.scram
    const [serverVersion] = await cluster.query<{ server_version: string }>('SHOW server_version')
    const cpus = os.cpus()
    const machine = [
      `machine: ${cpus.length} x ${cpus[0]?.model.trim() ?? '?'}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${os.type()} ${os.release()}`,
      `node ${process.version}; PostgreSQL ${serverVersion?.server_version ?? '?'}; ${firstLine(PGBOUNCER, ['--version'])}; ${firstLine(pgbenchBin, ['--version'])}`,
    ]
    console.log(machine.join('\n'))

    // Tables owned by the owner role, so every target can read them: the proxy's sessions act as
    // app_owner, the direct and pgbouncer sessions as scram_user (a member of app_owner).
    console.log(`pgbench -i -s ${SCALE} (as ${user}, role ${cluster.ownerRole}) ...`)
    await runOk(
      pgbenchBin,
      ['-i', '-q', '-s', String(SCALE), '-h', HOST, '-p', String(cluster.port), '-U', user, 'appdb'],
      clientEnv({ PGPASSWORD: password, PGOPTIONS: `-c role=${cluster.ownerRole}` }),
    )

    console.log('starting pgbouncer, pg-vault-proxy and the bare Node.js relay ...')
    const proxyConfig = await writeProxyConfig(cluster)
    const [bouncer, proxy, relay, pooler] = await Promise.all([
      startPgbouncer(psql, cluster),
      startProxy(psql, cluster, proxyConfig),
      startNodeRelay(psql, cluster),
      startNodePooler(psql, cluster),
    ])
    const postmasterPid = Number(readFileSync(path.join(cluster.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0])
    if (pinned) {
      const { load, intermediary } = pinned
      pin(postmasterPid, load)
      for (const pid of [bouncer.pid(), proxy.pid(), relay.pid(), pooler.pid()]) pin(pid, intermediary)
      console.log(`pinned: pgbench and PostgreSQL on CPU ${load}, each intermediary alone on CPU ${intermediary}`)
    }
    const ours: Ours = { postmasterPid, pids: () => [bouncer.pid(), proxy.pid(), relay.pid(), pooler.pid()] }
    const targets: Target[] = [
      { name: 'direct', port: cluster.port, password },
      { name: 'pgbouncer', port: bouncer.port, pid: bouncer.pid },
      { name: 'proxy', port: proxy.port, pid: proxy.pid },
      { name: 'node-relay', port: relay.port, password, pid: relay.pid },
      { name: 'node-pooler', port: pooler.port, pid: pooler.pid },
    ]

    // Every target reaches the same tables, as the expected role.
    for (const target of targets) {
      const env = clientEnv(target.password !== undefined ? { PGPASSWORD: target.password } : {})
      const sql = 'SELECT current_user, count(*) FROM pgbench_branches'
      const out = await runOk(
        psql,
        ['-X', '-At', '-h', HOST, '-p', String(target.port), '-U', user, '-d', 'appdb', '-c', sql],
        env,
      )
      console.log(`  ${target.name.padEnd(10)} port ${target.port}: current_user|branches = ${out.trim()}`)
      if (out.trim().split('|')[1] !== String(SCALE)) throw new Error(`${target.name}: unexpected answer ${out.trim()}`)
    }

    if (WARMUP_SECONDS > 0) {
      console.log(`warm-up: ${WARMUP_SECONDS} s per target ...`)
      for (const target of targets) {
        // -c 16 whatever BENCH_MODES says: the check below counts its connections.
        const running = pgbench(pgbenchBin, target, ALL_MODES[0] as Mode, WARMUP_SECONDS, user, ours)
        // Meanwhile, make sure no server connection uses TLS (the intermediaries' neither).
        await sleep((WARMUP_SECONDS * 1000) / 2)
        const [tls] = await cluster.query<{ total: string; tls: string }>(
          `SELECT count(*) AS total, count(*) FILTER (WHERE s.ssl) AS tls FROM pg_stat_activity a
           JOIN pg_stat_ssl s USING (pid) WHERE a.backend_type = 'client backend' AND a.usename = $1`,
          [user],
        )
        await running
        if (!tls || Number(tls.total) < 16 || Number(tls.tls) !== 0) {
          throw new Error(`${target.name}: expected 16+ plain server connections, got ${JSON.stringify(tls)}`)
        }
      }
    }

    const samples = new Map<string, Sample[]>()
    const key = (t: TargetName, m: Mode['id']): string => `${t}/${m}`
    const total = ROUNDS * MODES.reduce((n, m) => n + targets.filter((t) => runsIn(t.name, m.id)).length, 0)
    let done = 0
    console.log(
      `measuring: ${ROUNDS} rounds x ${MODES.length} modes x ${targets.length - 1} targets (+ node-pooler with -C) x ${SECONDS} s (~${Math.ceil((total * (SECONDS + 2)) / 60)} min)`,
    )
    for (let round = 0; round < ROUNDS; round++) {
      for (const mode of MODES) {
        // Rotate the order each round, so no target always runs first (or right after another).
        const here = targets.filter((t) => runsIn(t.name, mode.id))
        const order = here.map((_, i) => here[(i + round) % here.length] as Target)
        if (round % 2 === 1) order.reverse()
        for (const target of order) {
          done++
          for (let attempt = 0; ; attempt++) {
            const busyBefore = await waitForQuiet(QUIET_WAIT_SECONDS)
            const sample = await pgbench(pgbenchBin, target, mode, SECONDS, user, ours)
            if (busyBefore !== undefined) sample.disturbed = true
            const cpu =
              sample.cpuPct !== undefined
                ? `, ${target.name} CPU ${sample.cpuPct.toFixed(0)}% = ${((sample.cpuUserUsPerTx ?? 0) + (sample.cpuSysUsPerTx ?? 0)).toFixed(1)} us/tx`
                : ''
            console.log(
              `  [${String(done).padStart(2)}/${total}] round ${round + 1} ${mode.id.padEnd(3)} ${target.name.padEnd(10)} ${sample.tps.toFixed(0).padStart(7)} tps  ${sample.latencyMs.toFixed(3)} ms  (machine busy ${sample.machineBusyPct.toFixed(0)}%, other work ${sample.otherPct.toFixed(0)}%${cpu})${sample.disturbed ? ' *' : ''}`,
            )
            if (!sample.disturbed || attempt >= RETRIES) {
              const list = samples.get(key(target.name, mode.id)) ?? []
              list.push(sample)
              samples.set(key(target.name, mode.id), list)
              break
            }
            console.log(`  other work disturbed that run; repeating it (${attempt + 1}/${RETRIES})`)
          }
        }
      }
    }

    // Results: medians over the undisturbed runs (over all runs where every one was disturbed).
    const counted = (t: TargetName, m: Mode['id']): Sample[] => {
      const list = samples.get(key(t, m)) ?? []
      const clean = list.filter((s) => !s.disturbed)
      return clean.length > 0 ? clean : list
    }
    const med = (t: TargetName, m: Mode['id'], f: (s: Sample) => number | undefined): number => {
      const values = counted(t, m)
        .map(f)
        .filter((v): v is number => v !== undefined)
      return values.length ? median(values) : NaN
    }
    const fmt = (value: number, digits: number, suffix = ''): string =>
      Number.isNaN(value) ? '-' : `${value.toFixed(digits)}${suffix}`
    const mark = (s: Sample): string => (s.disturbed ? '*' : '')
    const rows: string[][] = [
      [
        'target',
        'mode',
        'TPS',
        'avg latency ms',
        'runs: TPS',
        'runs: latency ms',
        'avg connect ms',
        'its CPU',
        'its CPU us/tx (user+sys)',
      ],
    ]
    for (const mode of MODES) {
      for (const t of TARGETS) {
        if (!runsIn(t, mode.id)) continue
        const list = samples.get(key(t, mode.id)) ?? []
        const tpsMedian = med(t, mode.id, (s) => s.tps)
        const latencyMedian = med(t, mode.id, (s) => s.latencyMs)
        const cpuMedian = med(t, mode.id, (s) => s.cpuPct)
        const user = med(t, mode.id, (s) => s.cpuUserUsPerTx)
        const sys = med(t, mode.id, (s) => s.cpuSysUsPerTx)
        rows.push([
          t,
          mode.label,
          fmt(tpsMedian, 0),
          fmt(latencyMedian, 3),
          list.map((s) => `${s.tps.toFixed(0)}${mark(s)}`).join(' '),
          list.map((s) => `${s.latencyMs.toFixed(3)}${mark(s)}`).join(' '),
          fmt(
            med(t, mode.id, (s) => s.connectionMs),
            3,
          ),
          fmt(cpuMedian, 0, '%'),
          Number.isNaN(user) ? '-' : `${(user + sys).toFixed(1)} (${user.toFixed(1)}+${sys.toFixed(1)})`,
        ])
      }
    }
    const pinnedNote = pinned
      ? ` (BENCH_PIN: pgbench and PostgreSQL on CPU ${pinned.load}, the intermediary alone on CPU ${pinned.intermediary})`
      : ''
    const lines: string[] = [
      '',
      ...machine,
      `pgbench -n <mode> -T ${SECONDS}, scale ${SCALE}, ${ROUNDS} rounds${pinnedNote}:`,
      '',
    ]
    lines.push(...markdownTable(rows, [false, false, true, true, false, false, true, true, true]))
    lines.push('')
    lines.push('TPS and latency: medians of the runs listed, leaving out those marked * (see below).')
    lines.push(
      '"its CPU": the intermediary process (pgbouncer, the proxy or the bare relay), in % of one core and per transaction.',
    )
    const disturbed = [...samples.values()].flat().filter((s) => s.disturbed).length
    if (disturbed > 0) {
      lines.push(
        `* ${disturbed} run(s) disturbed by other work on the machine (> ${OTHER_LIMIT_PCT}% of its CPU, even after ${RETRIES} repeat(s)): left out of the medians.`,
      )
    }
    const tps = (t: TargetName, m: Mode['id']): number => med(t, m, (s) => s.tps)
    const lat = (t: TargetName): number => med(t, 'c1', (s) => s.latencyMs)
    const ratioBouncer16 = tps('proxy', 'c16') / tps('pgbouncer', 'c16')
    const ratioDirect16 = tps('proxy', 'c16') / tps('direct', 'c16')
    const addedProxy = lat('proxy') - lat('direct')
    const addedBouncer = lat('pgbouncer') - lat('direct')
    const addedRelay = lat('node-relay') - lat('direct')
    const ratioRelay16 = tps('proxy', 'c16') / tps('node-relay', 'c16')
    const cpuPerTx = (t: TargetName): number =>
      med(t, 'c16', (s) => s.cpuUserUsPerTx) + med(t, 'c16', (s) => s.cpuSysUsPerTx)
    const met = (ok: boolean): string => (ok ? 'MET' : 'MISSED')
    const ratioBouncerConn = tps('proxy', 'c8conn') / tps('pgbouncer', 'c8conn')
    const connect = (t: TargetName): number => med(t, 'c8conn', (s) => s.connectionMs)
    lines.push('')
    lines.push(
      `16 clients: proxy/pgbouncer TPS = ${ratioBouncer16.toFixed(3)}, proxy/direct TPS = ${ratioDirect16.toFixed(3)}`,
    )
    lines.push(
      `1 client:   proxy/pgbouncer TPS = ${(tps('proxy', 'c1') / tps('pgbouncer', 'c1')).toFixed(3)}, proxy/direct TPS = ${(tps('proxy', 'c1') / tps('direct', 'c1')).toFixed(3)}`,
    )
    lines.push(
      `1 client added latency: proxy ${(addedProxy * 1000).toFixed(1)} us, pgbouncer ${(addedBouncer * 1000).toFixed(1)} us, node-relay ${(addedRelay * 1000).toFixed(1)} us (each minus direct)`,
    )
    lines.push(
      `runtime floor: proxy/node-relay TPS at 16 clients = ${ratioRelay16.toFixed(3)}; CPU per transaction: proxy ${cpuPerTx('proxy').toFixed(1)} us, node-relay ${cpuPerTx('node-relay').toFixed(1)} us, pgbouncer ${cpuPerTx('pgbouncer').toFixed(1)} us`,
    )
    lines.push(
      `new connection per transaction (-C -c 8): proxy/pgbouncer TPS = ${ratioBouncerConn.toFixed(3)}; mean connection time: proxy ${connect('proxy').toFixed(3)} ms, pgbouncer ${connect('pgbouncer').toFixed(3)} ms, direct ${connect('direct').toFixed(3)} ms`,
    )
    const cpuConn = (t: TargetName): number =>
      med(t, 'c8conn', (s) => (s.cpuUserUsPerTx ?? NaN) + (s.cpuSysUsPerTx ?? NaN))
    lines.push(
      `runtime floor with -C: proxy/node-pooler TPS = ${(tps('proxy', 'c8conn') / tps('node-pooler', 'c8conn')).toFixed(3)}, node-pooler/pgbouncer TPS = ${(tps('node-pooler', 'c8conn') / tps('pgbouncer', 'c8conn')).toFixed(3)}; CPU per connection: proxy ${cpuConn('proxy').toFixed(0)} us, node-pooler ${cpuConn('node-pooler').toFixed(0)} us, pgbouncer ${cpuConn('pgbouncer').toFixed(0)} us; mean connection time node-pooler ${connect('node-pooler').toFixed(3)} ms`,
    )
    lines.push(
      `target: proxy TPS >= ${TPS_RATIO_TARGET} x pgbouncer at 16 clients: ${met(ratioBouncer16 >= TPS_RATIO_TARGET)} (${ratioBouncer16.toFixed(3)})`,
    )
    lines.push(
      `target: added 1-client latency no worse than pgbouncer's: ${met(addedProxy <= addedBouncer)} (${(addedProxy * 1000).toFixed(1)} us vs ${(addedBouncer * 1000).toFixed(1)} us)`,
    )
    lines.push(
      `target (#12, server connections reused): proxy TPS >= 1.0 x pgbouncer with a new connection per transaction: ${met(ratioBouncerConn >= 1)} (${ratioBouncerConn.toFixed(3)}); mean connection time no worse: ${met(connect('proxy') <= connect('pgbouncer'))}`,
    )
    console.log(lines.join('\n'))

    if (JSON_OUT) {
      const json = {
        machine,
        seconds: SECONDS,
        pinned: pinned !== undefined,
        rounds: ROUNDS,
        scale: SCALE,
        samples: Object.fromEntries(samples),
        ratios: {
          proxyPgbouncerTps16: ratioBouncer16,
          proxyDirectTps16: ratioDirect16,
          proxyNodeRelayTps16: ratioRelay16,
          proxyPgbouncerTpsNewConnection: ratioBouncerConn,
        },
        addedLatencyMs: { proxy: addedProxy, pgbouncer: addedBouncer, nodeRelay: addedRelay },
      }
      await writeFile(JSON_OUT, `${JSON.stringify(json, null, 2)}\n`)
      console.log(`results written to ${JSON_OUT}`)
    }

    if (PROFILE) {
      console.log('\nprofiling the proxy ...')
      console.log(await profileProxy(pgbenchBin, psql, cluster, proxyConfig, proxy, postmasterPid))
    }

    await Promise.all([
      stopChild(bouncer.entry),
      stopChild(proxy.entry),
      stopChild(relay.entry),
      stopChild(pooler.entry),
    ])
  } finally {
    await stopAll()
    await cluster.stop()
    cleanupSync()
  }
}

runBenchmark(main)
