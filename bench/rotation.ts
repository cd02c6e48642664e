/**
 * Live sessions under credential rotation: pgbench through the proxy while the dev Vault issues
 * short-lived credentials, beside the same runs on a long-lived credential.
 *
 * One run starts a throwaway PostgreSQL 15 cluster (test/support/pg-cluster.ts) and the in-process
 * dev Vault (dev-vault/), configures Vault's database engine against the cluster with two dynamic
 * roles and an AppRole for the proxy (through dev-vault/setup-database.ts, i.e. the HTTP API):
 *
 *   bench-steady:   default_ttl = max_ttl = 1h: no rotation during a run ("steady")
 *   bench-rotating: default_ttl = max_ttl = BENCH_TTL_SECONDS (10): a new credential every few
 *                   seconds, and revocation statements that terminate the old user's backends
 *                   and drop it ("rotating")
 *
 * Both roles create users that inherit the owner role, and both use the terminate-and-drop
 * revocation statements (TERMINATE_AND_DROP_STATEMENTS), so a session still on a credential when
 * Vault revokes it is cut. pgbench -i runs once, directly, with tables owned by the owner role the
 * proxy's sessions act as. Then, for each workload
 *
 *   tpcb-like:        pgbench -n -c 8 -j 2 -T BENCH_SECONDS            (the default script)
 *   select-prepared:  pgbench -n -S -M prepared -c 8 -j 2 -T BENCH_SECONDS
 *
 * it runs pgbench through a fresh pg-vault-proxy (the built dist/, logging in with the AppRole and
 * rotation.* at its defaults) on the steady role and on the rotating role. Never with -C: the 8
 * sessions stay connected for the whole run, so under rotation each must move ("swap") to a fresh
 * credential at an idle point before its lease ends (docs/rotation.md), or be reconnected after
 * Vault's revocation terminates its backend. The proxy's /metrics is scraped before and after each
 * run for credentials issued, session moves by kind and outcome, and sessions ended by reason.
 *
 * It prints, per workload and mode: TPS, the rotating/steady TPS ratio, failed transactions and
 * aborted clients (pgbench's), credentials issued, swaps, reconnects, sessions closed, backends
 * Vault's revocation terminated, and the CPU time per transaction of the proxy, PostgreSQL and the
 * dev Vault (steadier than TPS when other work shares the machine); and whether the target is
 * met: 0 failed transactions (pgbench's count plus one per aborted client) and rotating TPS >=
 * 0.9 x steady. Missing the target is a result, not a failure: the exit code is 0 unless something
 * could not run. After each run it also prints what went wrong, if anything: pgbench's errors, the
 * proxy's warnings, the server's ERROR/FATAL lines, slow or failed Vault requests. Every run's
 * proxy log (at BENCH_LOG_LEVEL, default info), pgbench output, server log (statements over
 * 250 ms and lock waits are logged) and final /metrics are kept in a directory named at the end.
 *
 * Environment: BENCH_SECONDS (60), BENCH_ROUNDS (1; with more, the order of the modes alternates
 * and TPS is the median), BENCH_WARMUP_SECONDS (5, per workload, steady), BENCH_SCALE (10),
 * BENCH_CLIENTS (8), BENCH_TTL_SECONDS (10), BENCH_WORKLOADS (tpcb-like,select-prepared),
 * BENCH_QUIET_WAIT_SECONDS (60: how long to wait for other work on the machine to settle before
 * each run), BENCH_LOG_LEVEL (info), BENCH_JSON=file (also write the results as JSON),
 * PGVP_PG_BIN (the server binaries, as for the tests).
 */
import { spawn } from 'node:child_process'
import { openSync, readFileSync, statSync } from 'node:fs'
import { mkdtemp, readFile, writeFile, appendFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import pg from 'pg'
import { DevVault } from '../dev-vault/dev-vault-server.js'
import {
  createAppRole,
  createDynamicRole,
  enableDatabaseEngine,
  TERMINATE_AND_DROP_STATEMENTS,
  writeConnection,
  type AppRoleCredentials,
  type VaultAccess,
} from '../dev-vault/setup-database.js'
import { freePort } from '../test/support/free-port.js'
import { startCluster, type PgCluster } from '../test/support/pg-cluster.js'
import { vaultAdminFor } from '../test/support/vault-target.js'
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
  processTreeTicks,
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
  type Tracked,
} from './support.js'

const SECONDS = intEnv('BENCH_SECONDS', 60)
const ROUNDS = intEnv('BENCH_ROUNDS', 1)
const WARMUP_SECONDS = intEnv('BENCH_WARMUP_SECONDS', 5, 0)
const SCALE = intEnv('BENCH_SCALE', 10)
const CLIENTS = intEnv('BENCH_CLIENTS', 8)
const TTL_SECONDS = intEnv('BENCH_TTL_SECONDS', 10)
const QUIET_WAIT_SECONDS = intEnv('BENCH_QUIET_WAIT_SECONDS', 60, 0)
const LOG_LEVEL = process.env.BENCH_LOG_LEVEL || 'info'
const JSON_OUT = process.env.BENCH_JSON
/** A run during which other processes used more than this % of the machine is marked. */
const OTHER_LIMIT_PCT = 10

/** The issue's targets: no failed transactions, and rotating TPS within 10% of steady. */
const TPS_RATIO_TARGET = 0.9

/** The Vault side of the two modes. */
const MOUNT = 'database'
const STEADY_TTL = '1h'
type ModeName = 'steady' | 'rotating'
const MODES: Record<ModeName, { role: string; ttl: string }> = {
  steady: { role: 'bench-steady', ttl: STEADY_TTL },
  rotating: { role: 'bench-rotating', ttl: `${TTL_SECONDS}s` },
}
/** rotation.* as the proxy runs it (the defaults, written out). */
const ROTATION = { swap_before_end_ms: 30_000, reconnect: true, strict: false }

interface Workload {
  id: string
  label: string
  args: string[]
}
const ALL_WORKLOADS: Workload[] = [
  { id: 'tpcb-like', label: 'tpcb-like', args: [] },
  { id: 'select-prepared', label: '-S -M prepared', args: ['-S', '-M', 'prepared'] },
]
const WORKLOADS = (() => {
  const wanted = (process.env.BENCH_WORKLOADS || ALL_WORKLOADS.map((w) => w.id).join(',')).split(',')
  const unknown = wanted.filter((id) => !ALL_WORKLOADS.some((w) => w.id === id.trim()))
  if (unknown.length > 0) {
    throw new Error(
      `BENCH_WORKLOADS: unknown ${unknown.join(', ')}; known: ${ALL_WORKLOADS.map((w) => w.id).join(', ')}`,
    )
  }
  return ALL_WORKLOADS.filter((w) => wanted.some((id) => id.trim() === w.id))
})()

// ---------------------------------------------------------------------------
// Vault

/** The client user name pgbench and psql give the proxy; any name gets the owner role's session. */
const CLIENT_USER = 'bench'

interface VaultSetup {
  vault: DevVault
  approle: AppRoleCredentials
}

/** The database engine against the cluster, the two dynamic roles, and an AppRole for the proxy. */
async function setupVault(cluster: PgCluster, logFile: string): Promise<VaultSetup> {
  const vault = new DevVault({
    log: (line) => void appendFile(logFile, `${new Date().toISOString()} ${line}\n`).catch(() => undefined),
  })
  await vault.start(0)
  const access: VaultAccess = { address: vault.address, token: vault.rootToken }
  const admin = await vaultAdminFor(cluster)
  await enableDatabaseEngine(access, MOUNT)
  await writeConnection(access, {
    mount: MOUNT,
    name: 'appdb',
    connectionUrl: `postgresql://{{username}}:{{password}}@${cluster.host}:${cluster.port}/${cluster.database}`,
    username: admin.user,
    password: admin.password,
    allowedRoles: Object.values(MODES).map((m) => m.role),
  })
  for (const mode of Object.values(MODES)) {
    await createDynamicRole(access, {
      mount: MOUNT,
      name: mode.role,
      dbName: 'appdb',
      ownerRole: cluster.ownerRole,
      defaultTtl: mode.ttl,
      maxTtl: mode.ttl,
      revocationStatements: TERMINATE_AND_DROP_STATEMENTS,
    })
  }
  const policy = [
    ...Object.values(MODES).map((m) => `path "${MOUNT}/creds/${m.role}" { capabilities = ["read"] }`),
    `path "sys/leases/renew" { capabilities = ["update"] }`,
    `path "sys/leases/revoke" { capabilities = ["update"] }`,
    `path "sys/leases/lookup" { capabilities = ["update"] }`,
    '',
  ].join('\n')
  const approle = await createAppRole(access, {
    roleName: 'bench-proxy',
    policyName: 'bench-proxy',
    policy,
    tokenTtl: '2h',
    tokenMaxTtl: '24h',
  })
  return { vault, approle }
}

// ---------------------------------------------------------------------------
// The proxy

interface RunningProxy {
  entry: Tracked
  port: number
  opsPort: number
  pid: () => number | undefined
  logFile: string
}

async function startProxy(
  psql: string,
  cluster: PgCluster,
  setup: VaultSetup,
  mode: ModeName,
  logDir: string,
  name: string,
): Promise<RunningProxy> {
  const dir = await tempDir('pgvp-bench-rot-')
  const [port, opsPort] = [await freePort(), await freePort()]
  const secretIdFile = path.join(dir, 'secret-id')
  await writeFile(secretIdFile, `${setup.approle.secretId}\n`, { mode: 0o600 })
  const config = path.join(dir, 'proxy.yaml')
  await writeFile(
    config,
    [
      `listen: ${HOST}:${port}`,
      `owner_role: ${cluster.ownerRole}`,
      'max_client_connections: 100',
      'upstream:',
      `  host: ${cluster.host}`,
      `  port: ${cluster.port}`,
      '  sslmode: disable',
      'vault:',
      `  address: ${setup.vault.address}`,
      '  auth:',
      '    method: approle',
      `    role_id: ${setup.approle.roleId}`,
      `    secret_id_file: ${secretIdFile}`,
      'credentials:',
      '  vault:',
      `    mount: ${MOUNT}`,
      `    role: ${MODES[mode].role}`,
      'rotation:',
      ...Object.entries(ROTATION).map(([key, value]) => `  ${key}: ${value}`),
      'ops:',
      `  listen: ${HOST}:${opsPort}`,
      'log:',
      '  format: json',
      '',
    ].join('\n'),
  )
  const logFile = path.join(logDir, `${name}.proxy.log`)
  const out = openSync(logFile, 'a')
  const child = spawn(
    process.execPath,
    [path.join(ROOT, 'bin', 'pg-vault-proxy.js'), 'run', '--config', config, '--log-level', LOG_LEVEL],
    { cwd: ROOT, stdio: ['ignore', out, out], env: clientEnv() },
  )
  const entry = track({ child })
  await waitReady(psql, 'pg-vault-proxy', port, CLIENT_USER, child, logFile)
  return { entry, port, opsPort, pid: () => child.pid, logFile }
}

// ---------------------------------------------------------------------------
// /metrics

/** One sample per series, keyed by name and labels as the exposition prints them. */
type Scrape = Map<string, { name: string; labels: Record<string, string>; value: number }>

/** /metrics, parsed; `saveTo` also keeps the text. */
async function scrape(opsPort: number, saveTo?: string): Promise<Scrape> {
  const response = await fetch(`http://${HOST}:${opsPort}/metrics`)
  if (!response.ok) throw new Error(`/metrics answered ${response.status}`)
  const text = await response.text()
  if (saveTo !== undefined) await writeFile(saveTo, text)
  const samples: Scrape = new Map()
  for (const line of text.split('\n')) {
    if (!line.startsWith('pg_vault_proxy_')) continue
    const match = /^([a-z_:][\w:]*)(?:\{(.*)\})? (\S+)$/i.exec(line)
    if (!match?.[1] || match[3] === undefined) continue
    const labels: Record<string, string> = {}
    for (const [, key, value] of (match[2] ?? '').matchAll(/\b(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      if (key !== undefined && value !== undefined) labels[key] = value
    }
    samples.set(`${match[1]}{${match[2] ?? ''}}`, { name: match[1], labels, value: Number(match[3]) })
  }
  return samples
}

/** after - before, summed over the series of `name` whose labels include `match`. */
function delta(before: Scrape, after: Scrape, name: string, match: Record<string, string> = {}): number {
  let total = 0
  for (const [key, sample] of after) {
    if (sample.name !== name) continue
    if (!Object.entries(match).every(([k, v]) => sample.labels[k] === v)) continue
    total += sample.value - (before.get(key)?.value ?? 0)
  }
  return total
}

interface VaultRequests {
  count: number
  errors: number
  over250ms: number
  over1s: number
}

/**
 * Vault requests during the run, by path: how many, how many failed, and how many took longer
 * than 0.25 s and 1 s (from the request duration histogram). A slow credential request delays
 * the next credential, and so every session's move.
 */
function vaultRequests(before: Scrape, after: Scrape): Record<string, VaultRequests> {
  const name = 'pg_vault_proxy_vault_request_duration_seconds'
  const out: Record<string, VaultRequests> = {}
  const paths = new Set([...after.values()].filter((s) => s.name === `${name}_count`).map((s) => s.labels.path ?? '?'))
  for (const path of paths) {
    const count = delta(before, after, `${name}_count`, { path })
    if (count === 0) continue
    const within = (le: string): number => delta(before, after, `${name}_bucket`, { path, le })
    const errors = delta(before, after, 'pg_vault_proxy_vault_request_errors_total', { path })
    out[path] = { count, errors, over250ms: count - within('0.25'), over1s: count - within('1') }
  }
  return out
}

/** Per-label-value deltas of one counter, leaving out zeros. */
function deltaBy(before: Scrape, after: Scrape, name: string, label: string): Record<string, number> {
  const out: Record<string, number> = {}
  for (const [key, sample] of after) {
    if (sample.name !== name) continue
    const value = sample.value - (before.get(key)?.value ?? 0)
    const labelValue = sample.labels[label] ?? '?'
    if (value !== 0) out[labelValue] = (out[labelValue] ?? 0) + value
  }
  return out
}

// ---------------------------------------------------------------------------
// CPU per part

/** CPU ticks used so far by each part of the benchmark. */
interface CpuParts {
  proxy: number
  /** The postmaster and its backends, live and exited. */
  postgres: number
  /** This process: the dev Vault and the harness. */
  vault: number
  /** Reaped children of this process: pgbench (and psql). */
  pgbench: number
}

function cpuParts(postmasterPid: number, proxyPid: number | undefined): CpuParts {
  const postgres = postgresTicks(postmasterPid)
  const proxy = proxyPid === undefined ? undefined : processTreeTicks(proxyPid)
  const self = procStat('self')
  return {
    proxy: proxy ? proxy.user + proxy.sys : 0,
    postgres,
    vault: self?.own ?? 0,
    pgbench: self?.reaped ?? 0,
  }
}

const cpuSum = (c: CpuParts): number => c.proxy + c.postgres + c.vault + c.pgbench

// ---------------------------------------------------------------------------
// Logs

/** Bytes of `file` from `offset` on. */
async function readFrom(file: string, offset: number): Promise<string> {
  try {
    return (await readFile(file)).subarray(offset).toString('utf8')
  } catch {
    return ''
  }
}

function sizeOf(file: string): number {
  try {
    return statSync(file).size
  } catch {
    return 0
  }
}

/** ERROR/FATAL lines of the server log, counted by message. */
function serverErrors(log: string): Record<string, number> {
  const out: Record<string, number> = {}
  for (const line of log.split('\n')) {
    const match = /\b(ERROR|FATAL|PANIC):\s+(\S.*)$/.exec(line)
    if (!match) continue
    const key = `${match[1]}: ${match[2]}`.replace(/"v-[^"]*"/g, '"v-…"')
    out[key] = (out[key] ?? 0) + 1
  }
  return out
}

/** The proxy's warn-and-worse log lines, counted by message (and `why`/`err` when present). */
function proxyWarnings(log: string): Record<string, number> {
  const out: Record<string, number> = {}
  for (const line of log.split('\n')) {
    if (!line.startsWith('{')) continue
    let entry: { level?: number; msg?: string; why?: string; err?: unknown; reason?: string }
    try {
      entry = JSON.parse(line) as typeof entry
    } catch {
      continue
    }
    if ((entry.level ?? 0) < 40) continue
    const err = typeof entry.err === 'string' ? entry.err : undefined
    const key = [entry.msg, entry.reason, entry.why, err].filter(Boolean).join(' | ')
    out[key] = (out[key] ?? 0) + 1
  }
  return out
}

// ---------------------------------------------------------------------------
// One measured run

interface Sample {
  workload: string
  mode: ModeName
  round: number
  tps: number
  latencyMs: number
  transactions: number
  /** pgbench's "number of failed transactions". */
  failedTx: number
  abortedClients: number
  exit: string
  /** Distinct pgbench error lines (client aborts and the like), with counts. */
  pgbenchErrors: Record<string, number>
  credentialsIssued: number
  swaps: Record<string, number>
  reconnects: Record<string, number>
  sessionEnds: Record<string, number>
  /** Sessions that ended otherwise than by the client's Terminate at the end of the run. */
  sessionsClosed: number
  refused: Record<string, number>
  /** Vault requests by path: count, failures, slow ones. */
  vaultRequests: Record<string, VaultRequests>
  /** Backends PostgreSQL logged as terminated by an administrator command (Vault's revocation). */
  backendsTerminated: number
  /**
   * Transactions the server ran beyond pgbench's: the proxy's state probes and replays, and this
   * harness's pg_stat_activity samples (one a second, in both modes).
   */
  extraServerXacts: number
  serverErrors: Record<string, number>
  proxyWarnings: Record<string, number>
  /** Distinct login users seen serving the run in pg_stat_activity (sampled each second). */
  upstreamUsers: number
  /** Most client backends of proxy logins seen at once (above the client count during swaps). */
  maxBackends: number
  /** The longest event-loop stall of this process (the dev Vault's) during the run. */
  vaultLoopDelayMaxMs: number
  /** CPU per transaction, in microseconds, of each part (see CpuParts). */
  cpuUsPerTx: CpuParts
  otherPct: number
  disturbed: boolean
}

function parsePgbench(
  stdout: string,
  stderr: string,
): Pick<Sample, 'tps' | 'latencyMs' | 'transactions' | 'failedTx' | 'abortedClients' | 'pgbenchErrors'> {
  const tps = /^tps = ([\d.]+)/m.exec(stdout)
  const latency = /^latency average = ([\d.]+) ms/m.exec(stdout)
  const processed = /^number of transactions actually processed: (\d+)/m.exec(stdout)
  const failed = /^number of failed transactions: (\d+)/m.exec(stdout)
  const aborted = new Set<string>()
  const errors: Record<string, number> = {}
  for (const line of `${stderr}\n${stdout}`.split('\n')) {
    const abort = /\bclient (\d+) (?:script \d+ )?aborted\b/.exec(line)
    if (abort?.[1] !== undefined) aborted.add(abort[1])
    if (abort || /\b(?:error|FATAL|ERROR):/.test(line)) {
      const key = line.replace(/\bclient \d+/, 'client N').trim()
      errors[key] = (errors[key] ?? 0) + 1
    }
  }
  return {
    tps: tps?.[1] ? Number(tps[1]) : NaN,
    latencyMs: latency?.[1] ? Number(latency[1]) : NaN,
    transactions: processed?.[1] ? Number(processed[1]) : 0,
    failedTx: failed?.[1] ? Number(failed[1]) : 0,
    abortedClients: aborted.size,
    pgbenchErrors: errors,
  }
}

interface RunContext {
  pgbench: string
  psql: string
  cluster: PgCluster
  setup: VaultSetup
  postmasterPid: number
  logDir: string
  /** A superuser connection for sampling pg_stat_activity. */
  monitor: pg.Client
  /** Login users that are not the proxy's (the harness's and Vault's own). */
  notProxyUsers: string[]
}

/** Transactions committed and rolled back in the database so far (pg_stat_database). */
async function serverTransactions(ctx: RunContext): Promise<number> {
  const { rows } = await ctx.monitor.query<{ n: string }>(
    'SELECT xact_commit + xact_rollback AS n FROM pg_stat_database WHERE datname = $1',
    [ctx.cluster.database],
  )
  return Number(rows[0]?.n ?? 0)
}

/** Waits (at most 10 s) until no backend of a proxy login is left, then a little more. */
async function backendsGone(ctx: RunContext): Promise<void> {
  const deadline = Date.now() + 10_000
  while (Date.now() < deadline) {
    const { rows } = await ctx.monitor.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM pg_stat_activity
       WHERE backend_type = 'client backend' AND datname = $1 AND usename <> ALL($2::text[])`,
      [ctx.cluster.database, ctx.notProxyUsers],
    )
    if ((rows[0]?.n ?? 0) === 0) break
    await sleep(100)
  }
  await sleep(300)
}

/**
 * Resets what tpcb-like changes (as pgbench does without -n, and pgbench_accounts too), so every run
 * starts alike: otherwise the dead rows of earlier runs make autovacuum visit pgbench_accounts
 * during whichever run comes later.
 */
async function resetTables(cluster: PgCluster): Promise<void> {
  for (const table of ['pgbench_branches', 'pgbench_tellers', 'pgbench_accounts'])
    await cluster.query(`VACUUM ${table}`)
  await cluster.query('TRUNCATE pgbench_history')
  await cluster.query('CHECKPOINT')
}

async function measure(
  ctx: RunContext,
  workload: Workload,
  mode: ModeName,
  round: number,
  seconds: number,
  name: string,
): Promise<Sample> {
  const { cluster } = ctx
  await resetTables(cluster)
  await waitForQuiet(QUIET_WAIT_SECONDS)
  const proxy = await startProxy(ctx.psql, cluster, ctx.setup, mode, ctx.logDir, name)
  try {
    const pgLogOffset = sizeOf(cluster.logFile)
    const before = await scrape(proxy.opsPort)
    const xactsBefore = await serverTransactions(ctx)
    // Login users serving the run, sampled each second while pgbench runs.
    const users = new Set<string>()
    let maxBackends = 0
    let sampling = true
    const sampler = (async () => {
      while (sampling) {
        const { rows } = await ctx.monitor.query<{ usename: string; n: number }>(
          `SELECT usename, count(*)::int AS n FROM pg_stat_activity
           WHERE backend_type = 'client backend' AND datname = $1 AND usename <> ALL($2::text[]) GROUP BY 1`,
          [cluster.database, ctx.notProxyUsers],
        )
        for (const row of rows) users.add(row.usename)
        maxBackends = Math.max(
          maxBackends,
          rows.reduce((n, row) => n + row.n, 0),
        )
        await sleep(1000)
      }
    })().catch((err: Error) => console.log(`  (sampling pg_stat_activity failed: ${err.message})`))
    // prettier-ignore
    const args = [
      '-n', ...workload.args, '-c', String(CLIENTS), '-j', '2', '-T', String(seconds), '-P', '5',
      '-h', HOST, '-p', String(proxy.port), '-U', CLIENT_USER, 'appdb',
    ]
    const cpuBefore = cpuParts(ctx.postmasterPid, proxy.pid())
    // The dev Vault answers from this process: a stalled event loop here is a slow Vault.
    const loopDelay = monitorEventLoopDelay({ resolution: 10 })
    loopDelay.enable()
    const [busyBefore, totalBefore] = machineTicks()
    const result = await run(ctx.pgbench, args, clientEnv())
    sampling = false
    await sampler
    // The sessions' backends exit after pgbench: count their CPU once the postmaster has reaped
    // them (a backend reaped while cpuParts reads /proc would be missed). This also lets the
    // proxy see the clients' Terminates and count the session ends.
    await backendsGone(ctx)
    const [busyAfter, totalAfter] = machineTicks()
    const cpuAfter = cpuParts(ctx.postmasterPid, proxy.pid())
    loopDelay.disable()
    const after = await scrape(proxy.opsPort, path.join(ctx.logDir, `${name}.metrics.txt`))
    const serverXacts = (await serverTransactions(ctx)) - xactsBefore
    const pgLog = await readFrom(cluster.logFile, pgLogOffset)
    await writeFile(
      path.join(ctx.logDir, `${name}.pgbench.log`),
      `$ pgbench ${args.join(' ')}\n# exit ${result.signal ?? result.code}\n${result.stdout}\n# stderr\n${result.stderr}`,
    )
    await writeFile(path.join(ctx.logDir, `${name}.postgres.log`), pgLog)
    const parsed = parsePgbench(result.stdout, result.stderr)
    const sessionEnds = deltaBy(before, after, 'pg_vault_proxy_session_ends_total', 'reason')
    const otherPct =
      (100 * Math.max(0, busyAfter - busyBefore - (cpuSum(cpuAfter) - cpuSum(cpuBefore)))) /
      Math.max(1, totalAfter - totalBefore)
    const usPerTx = (part: keyof CpuParts): number =>
      parsed.transactions > 0 ? (1e6 * (cpuAfter[part] - cpuBefore[part])) / CLK_TCK / parsed.transactions : NaN
    const moves = (kind: string): Record<string, number> => {
      const out: Record<string, number> = {}
      for (const outcome of ['moved', 'blocked', 'failed', 'declined']) {
        const n = delta(before, after, 'pg_vault_proxy_session_moves_total', { kind, outcome })
        if (n !== 0) out[outcome] = n
      }
      return out
    }
    await stopChild(proxy.entry)
    return {
      workload: workload.id,
      mode,
      round,
      ...parsed,
      exit: result.signal ?? String(result.code),
      credentialsIssued: delta(before, after, 'pg_vault_proxy_credentials_issued_total'),
      swaps: moves('swap'),
      reconnects: moves('reconnect'),
      sessionEnds,
      sessionsClosed: Object.entries(sessionEnds)
        .filter(([reason]) => reason !== 'client_terminated')
        .reduce((n, [, v]) => n + v, 0),
      vaultRequests: vaultRequests(before, after),
      refused: deltaBy(before, after, 'pg_vault_proxy_session_failures_total', 'reason'),
      extraServerXacts: serverXacts - parsed.transactions,
      backendsTerminated: (pgLog.match(/terminating connection due to administrator command/g) ?? []).length,
      serverErrors: serverErrors(pgLog),
      proxyWarnings: proxyWarnings(await readFrom(proxy.logFile, 0)),
      upstreamUsers: users.size,
      maxBackends,
      vaultLoopDelayMaxMs: loopDelay.max / 1e6,
      cpuUsPerTx: {
        proxy: usPerTx('proxy'),
        postgres: usPerTx('postgres'),
        vault: usPerTx('vault'),
        pgbench: usPerTx('pgbench'),
      },
      otherPct,
      disturbed: otherPct > OTHER_LIMIT_PCT,
    }
  } finally {
    await stopChild(proxy.entry)
  }
}

// ---------------------------------------------------------------------------
// Reporting

const fmt = (value: number, digits = 0): string => (Number.isNaN(value) ? '-' : value.toFixed(digits))
/** `{moved: 3, failed: 1}` as "3 moved, 1 failed"; "0" when empty. */
const outcomes = (values: Record<string, number>): string =>
  Object.keys(values).length === 0
    ? '0'
    : Object.entries(values)
        .map(([k, v]) => `${v} ${k}`)
        .join(', ')

/** Failed transactions as the target counts them: pgbench's count plus one per aborted client. */
const failures = (s: Sample): number => s.failedTx + s.abortedClients

function oneLine(s: Sample): string {
  return [
    `${fmt(s.tps).padStart(6)} tps`,
    `${fmt(s.latencyMs, 3)} ms`,
    `failed ${s.failedTx}`,
    `aborted ${s.abortedClients}`,
    `exit ${s.exit}`,
    `issued ${s.credentialsIssued}`,
    `swaps ${outcomes(s.swaps)}`,
    `reconnects ${outcomes(s.reconnects)}`,
    `ends ${outcomes(s.sessionEnds)}`,
    `backends terminated ${s.backendsTerminated}`,
    `users ${s.upstreamUsers}`,
    `max backends ${s.maxBackends}`,
    `extra server xacts ${s.extraServerXacts}`,
    `dev Vault loop delay max ${fmt(s.vaultLoopDelayMaxMs)} ms`,
    `CPU us/tx: proxy ${fmt(s.cpuUsPerTx.proxy, 1)}, postgres ${fmt(s.cpuUsPerTx.postgres, 1)}, vault+harness ${fmt(s.cpuUsPerTx.vault, 1)}, pgbench ${fmt(s.cpuUsPerTx.pgbench, 1)}`,
    `other work ${s.otherPct.toFixed(0)}%${s.disturbed ? ' *' : ''}`,
  ].join(', ')
}

function details(s: Sample): string[] {
  const lines: string[] = []
  const list = (title: string, values: Record<string, number>): void => {
    const entries = Object.entries(values).sort((a, b) => b[1] - a[1])
    if (entries.length === 0) return
    lines.push(`    ${title}:`)
    for (const [text, n] of entries.slice(0, 8)) lines.push(`      ${String(n).padStart(5)} x ${text.slice(0, 300)}`)
    if (entries.length > 8) lines.push(`      ... ${entries.length - 8} more`)
  }
  list('pgbench errors', s.pgbenchErrors)
  const slowVault = Object.entries(s.vaultRequests).filter(([, v]) => v.errors + v.over250ms > 0)
  if (slowVault.length > 0) {
    lines.push("    slow or failed Vault requests (the proxy's vault_request_duration_seconds):")
    for (const [p, v] of slowVault) {
      lines.push(`      ${p}: ${v.count} requests, ${v.errors} failed, ${v.over250ms} took > 0.25 s, ${v.over1s} > 1 s`)
    }
  }
  list('refused at login (session_failures_total)', s.refused)
  list('proxy warnings', s.proxyWarnings)
  list('server ERROR/FATAL lines', s.serverErrors)
  return lines
}

// ---------------------------------------------------------------------------
// Main

async function main(): Promise<void> {
  const { pgbench, psql } = ensureClients()
  ensureBuilt('bench:rotation')
  const logDir = await mkdtemp(path.join(os.tmpdir(), 'pgvp-bench-rotation-')) // kept for inspection

  console.log('starting a PostgreSQL 15 cluster and the dev Vault ...')
  // Statements slower than 250 ms and lock waits are logged (kept with each run's logs): a slow
  // CREATE ROLE from Vault delays every session's move.
  const cluster = await startCluster({
    extraConf: ['shared_buffers = 256MB', 'log_min_duration_statement = 250', 'log_lock_waits = on'],
  })
  let setup: VaultSetup | undefined
  let monitor: pg.Client | undefined
  try {
    const { user, password } = cluster.users.scram
    const [serverVersion] = await cluster.query<{ server_version: string }>('SHOW server_version')
    const cpus = os.cpus()
    const machine = [
      `machine: ${cpus.length} x ${cpus[0]?.model.trim() ?? '?'}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${os.type()} ${os.release()}`,
      `node ${process.version}; PostgreSQL ${serverVersion?.server_version ?? '?'}; ${firstLine(pgbench, ['--version'])}`,
    ]
    console.log(machine.join('\n'))
    setup = await setupVault(cluster, path.join(logDir, 'dev-vault.log'))
    console.log(
      `dev Vault at ${setup.vault.address}: roles ${MODES.steady.role} (TTL ${MODES.steady.ttl}) and ${MODES.rotating.role} (default_ttl = max_ttl = ${MODES.rotating.ttl}), terminate-and-drop revocation`,
    )

    // Tables owned by the owner role, which the proxy's sessions act as (as in bench/run.ts).
    console.log(`pgbench -i -s ${SCALE} (as ${user}, role ${cluster.ownerRole}) ...`)
    await runOk(
      pgbench,
      ['-i', '-q', '-s', String(SCALE), '-h', HOST, '-p', String(cluster.port), '-U', user, 'appdb'],
      clientEnv({ PGPASSWORD: password, PGOPTIONS: `-c role=${cluster.ownerRole}` }),
    )

    monitor = new pg.Client({ host: cluster.socketDir, port: cluster.port, user: 'postgres', database: 'appdb' })
    await monitor.connect()
    const postmasterPid = Number(readFileSync(path.join(cluster.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0])
    const ctx: RunContext = {
      pgbench,
      psql,
      cluster,
      setup,
      postmasterPid,
      logDir,
      monitor,
      notProxyUsers: ['postgres', 'vault_admin', user],
    }

    // Both modes reach the tables as the owner role, on a login from Vault.
    for (const mode of ['steady', 'rotating'] as const) {
      const proxy = await startProxy(psql, cluster, setup, mode, logDir, `check-${mode}`)
      const out = await runOk(
        psql,
        [
          ...['-X', '-At', '-h', HOST, '-p', String(proxy.port), '-U', CLIENT_USER, '-d', 'appdb', '-c'],
          'SELECT session_user, current_user, count(*) FROM pgbench_branches',
        ],
        clientEnv(),
      )
      await stopChild(proxy.entry)
      console.log(`  ${mode.padEnd(8)} session_user|current_user|branches = ${out.trim()}`)
      if (out.trim().split('|')[2] !== String(SCALE)) throw new Error(`${mode}: unexpected answer ${out.trim()}`)
    }

    const total = WORKLOADS.length * ROUNDS * 2
    console.log(
      `measuring: ${WORKLOADS.length} workloads x ${ROUNDS} round(s) x 2 modes x ${SECONDS} s, ${CLIENTS} clients (~${Math.ceil((total * (SECONDS + 6) + WORKLOADS.length * WARMUP_SECONDS) / 60)} min)`,
    )
    const samples: Sample[] = []
    let done = 0
    for (const workload of WORKLOADS) {
      if (WARMUP_SECONDS > 0) {
        console.log(`warm-up: ${workload.label}, ${WARMUP_SECONDS} s, steady`)
        await measure(ctx, workload, 'steady', 0, WARMUP_SECONDS, `${workload.id}-warmup`)
      }
      for (let round = 1; round <= ROUNDS; round++) {
        // Alternate which mode runs first, so neither always runs on a cache the other warmed.
        const order: ModeName[] = round % 2 === 1 ? ['steady', 'rotating'] : ['rotating', 'steady']
        for (const mode of order) {
          done++
          const sample = await measure(ctx, workload, mode, round, SECONDS, `${workload.id}-${mode}-r${round}`)
          samples.push(sample)
          console.log(`  [${done}/${total}] ${workload.id} ${mode.padEnd(8)} round ${round}: ${oneLine(sample)}`)
          for (const line of details(sample)) console.log(line)
        }
      }
    }

    // Results
    const rows: string[][] = [
      [
        'workload',
        'mode',
        'TPS',
        'rotating/steady',
        'failed tx',
        'aborted clients',
        'credentials issued',
        'swaps',
        'reconnects',
        'sessions closed',
        'backends terminated',
        'CPU us/tx',
      ],
    ]
    const verdicts: string[] = []
    for (const workload of WORKLOADS) {
      const of = (mode: ModeName): Sample[] => samples.filter((s) => s.workload === workload.id && s.mode === mode)
      const tps = (mode: ModeName): number => median(of(mode).map((s) => s.tps))
      const ratio = tps('rotating') / tps('steady')
      /** CPU per transaction of what serves it: the proxy, PostgreSQL, and the dev Vault (not pgbench). */
      const cpu = (mode: ModeName): number =>
        median(of(mode).map((s) => s.cpuUsPerTx.proxy + s.cpuUsPerTx.postgres + s.cpuUsPerTx.vault))
      for (const mode of ['steady', 'rotating'] as const) {
        const list = of(mode)
        const sum = (f: (s: Sample) => number): number => list.reduce((n, s) => n + f(s), 0)
        const merged = (f: (s: Sample) => Record<string, number>): Record<string, number> => {
          const out: Record<string, number> = {}
          for (const s of list) for (const [k, v] of Object.entries(f(s))) out[k] = (out[k] ?? 0) + v
          return out
        }
        const closed = merged((s) => s.sessionEnds)
        delete closed.client_terminated
        rows.push([
          workload.label,
          mode,
          `${fmt(tps(mode))}${ROUNDS > 1 ? ` (${list.map((s) => fmt(s.tps)).join(' ')})` : ''}`,
          mode === 'rotating' ? fmt(ratio, 3) : '',
          String(sum((s) => s.failedTx)),
          String(sum((s) => s.abortedClients)),
          String(sum((s) => s.credentialsIssued)),
          outcomes(merged((s) => s.swaps)),
          outcomes(merged((s) => s.reconnects)),
          Object.keys(closed).length === 0 ? '0' : outcomes(closed),
          String(sum((s) => s.backendsTerminated)),
          `${fmt(cpu(mode), 1)}${mode === 'rotating' ? ` (${fmt(cpu('rotating') / cpu('steady'), 3)}x)` : ''}`,
        ])
      }
      const failed = samples.filter((s) => s.workload === workload.id).reduce((n, s) => n + failures(s), 0)
      const badExit = samples.filter((s) => s.workload === workload.id && s.exit !== '0').length
      const met = failed === 0 && badExit === 0 && ratio >= TPS_RATIO_TARGET
      verdicts.push(
        `target (0 failed transactions, rotating TPS >= ${TPS_RATIO_TARGET} x steady) for ${workload.label}: ${met ? 'MET' : 'MISSED'} (${failed} failed transaction(s) incl. aborted clients${badExit > 0 ? `, ${badExit} pgbench run(s) exited non-zero` : ''}; ratio ${fmt(ratio, 3)})`,
      )
    }
    const lines = [
      '',
      ...machine,
      `pgbench -n <workload> -c ${CLIENTS} -j 2 -T ${SECONDS} through pg-vault-proxy, scale ${SCALE}, ${ROUNDS} round(s); steady: Vault TTL ${STEADY_TTL}; rotating: Vault default_ttl = max_ttl = ${TTL_SECONDS} s, revocation terminates backends; rotation.* = ${JSON.stringify(ROTATION)}`,
      '',
      ...markdownTable(rows, [false, false, true, true, true, true, true, false, false, false, true, true]),
      '',
      'TPS: pgbench, median over rounds. failed tx: pgbench "number of failed transactions"; aborted clients: pgbench "client N aborted" (each also fails a transaction).',
      'credentials issued, swaps, reconnects, sessions closed: deltas of the proxy /metrics over the run (credentials_issued_total; session_moves_total{kind="swap"|"reconnect"} by outcome; session_ends_total by reason other than client_terminated).',
      'backends terminated: PostgreSQL\'s "terminating connection due to administrator command" lines, i.e. backends Vault\'s revocation ended under a session.',
      'CPU us/tx: CPU time of the proxy, PostgreSQL (all backends) and the dev Vault (this process) per transaction, median over rounds; less sensitive to other work on the machine than TPS.',
    ]
    const disturbed = samples.filter((s) => s.disturbed).length
    if (disturbed > 0) {
      lines.push(`${disturbed} run(s) were disturbed by other work on the machine (> ${OTHER_LIMIT_PCT}% of its CPU).`)
    }
    lines.push('', ...verdicts, `logs: ${logDir}`)
    console.log(lines.join('\n'))

    if (JSON_OUT) {
      await writeFile(
        JSON_OUT,
        `${JSON.stringify({ machine, seconds: SECONDS, rounds: ROUNDS, scale: SCALE, clients: CLIENTS, ttlSeconds: TTL_SECONDS, rotation: ROTATION, samples }, null, 2)}\n`,
      )
      console.log(`results written to ${JSON_OUT}`)
    }
  } finally {
    await stopAll()
    await monitor?.end().catch(() => undefined)
    await setup?.vault.stop().catch(() => undefined)
    await cluster.stop()
    cleanupSync()
  }
}

runBenchmark(main)
