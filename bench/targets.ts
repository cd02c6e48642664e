/**
 * The intermediaries the benchmarks put in front of PostgreSQL: pgbouncer (session mode, trust for
 * clients, SCRAM upstream) and pg-vault-proxy with static SCRAM credentials, both on 127.0.0.1.
 */
import { execFileSync, spawn } from 'node:child_process'
import { existsSync, openSync, readFileSync } from 'node:fs'
import { chown, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { freePort } from '../test/support/free-port.js'
import type { PgCluster } from '../test/support/pg-cluster.js'
import { clusterUpstreamYaml } from '../test/support/proxy-config.js'
import { HOST, ROOT, clientEnv, tempDir, track, waitReady, type Tracked } from './support.js'

export const PGBOUNCER = process.env.PGBOUNCER_BIN ?? '/usr/sbin/pgbouncer'
const isRoot = process.getuid?.() === 0
const RUNUSER = ['/usr/sbin/runuser', '/sbin/runuser', '/usr/bin/runuser'].find((p) => existsSync(p))

export function ensurePgbouncer(): void {
  if (existsSync(PGBOUNCER)) return
  const how = 'apt-get update && apt-get install -y pgbouncer'
  if (!isRoot) throw new Error(`pgbouncer not found at ${PGBOUNCER}. Install it as root: \`${how}\` (Debian/Ubuntu).`)
  console.log(`pgbouncer not found at ${PGBOUNCER}; installing: ${how}`)
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  try {
    execFileSync('apt-get', ['update'], { stdio: 'inherit', env })
    execFileSync('apt-get', ['install', '-y', 'pgbouncer'], { stdio: 'inherit', env })
  } catch (err) {
    throw new Error(`installing pgbouncer failed; install it by hand: \`${how}\``, { cause: err })
  }
  if (!existsSync(PGBOUNCER)) throw new Error(`pgbouncer still missing at ${PGBOUNCER} after installing the package`)
}

export interface Started {
  entry: Tracked
  port: number
  pid: () => number | undefined
  logFile: string
}

/** pgbouncer in session mode in front of `cluster`; `maxClients` is its max_client_conn. */
export async function startPgbouncer(psql: string, cluster: PgCluster, maxClients = 100): Promise<Started> {
  const dir = await tempDir('pgvp-bench-pgb-')
  const port = await freePort()
  const { user, password } = cluster.users.scram
  const logFile = path.join(dir, 'pgbouncer.log')
  const pidFile = path.join(dir, 'pgbouncer.pid')
  const ini = path.join(dir, 'pgbouncer.ini')
  const userlist = path.join(dir, 'userlist.txt')
  // Clients get in without a password (trust), as with the proxy; pgbouncer itself logs in
  // upstream as the SCRAM user with the password from the connection string, over plain TCP.
  await writeFile(
    ini,
    [
      '[databases]',
      `appdb = host=${cluster.host} port=${cluster.port} dbname=${cluster.database} user=${user} password=${password}`,
      '',
      '[pgbouncer]',
      `listen_addr = ${HOST}`,
      `listen_port = ${port}`,
      `unix_socket_dir = ${dir}`,
      'auth_type = trust',
      `auth_file = ${userlist}`,
      'pool_mode = session',
      `max_client_conn = ${maxClients}`,
      'default_pool_size = 40',
      'server_tls_sslmode = disable',
      `logfile = ${logFile}`,
      `pidfile = ${pidFile}`,
      'log_connections = 0',
      'log_disconnections = 0',
      'log_pooler_errors = 1',
      '',
    ].join('\n'),
    { mode: 0o600 },
  )
  await writeFile(userlist, `"${user}" ""\n`, { mode: 0o600 })
  let file = PGBOUNCER
  let args = [ini]
  if (isRoot) {
    // pgbouncer refuses to run as root.
    if (!RUNUSER) throw new Error('running as root but runuser (util-linux) is missing to run pgbouncer as `postgres`')
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim())
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim())
    for (const p of [dir, ini, userlist]) await chown(p, uid, gid)
    file = RUNUSER
    args = ['-u', 'postgres', '--', PGBOUNCER, ini]
  }
  const out = openSync(path.join(dir, 'stdout.log'), 'a')
  const child = spawn(file, args, { cwd: dir, detached: true, stdio: ['ignore', out, out], env: clientEnv() })
  const entry = track({ child, group: true, pidFile })
  await waitReady(psql, 'pgbouncer', port, user, child, logFile)
  const pid = (): number | undefined => {
    try {
      return Number(readFileSync(pidFile, 'utf8').trim()) || undefined
    } catch {
      return undefined
    }
  }
  return { entry, port, pid, logFile }
}

/**
 * A proxy configuration in front of `cluster` with static SCRAM credentials; `maxClients` is
 * max_client_connections, and pool.max_server_connections too (each client session holds a server
 * connection: a lower limit would make the idle-memory benchmark's clients wait, then get 53300).
 */
export async function writeProxyConfig(
  cluster: PgCluster,
  maxClients = 100,
): Promise<{ config: string; port: number }> {
  const dir = await tempDir('pgvp-bench-proxy-')
  const port = await freePort()
  const passwordFile = path.join(dir, 'password')
  await writeFile(passwordFile, `${cluster.users.scram.password}\n`, { mode: 0o600 })
  const config = path.join(dir, 'proxy.yaml')
  await writeFile(
    config,
    [
      `listen: ${HOST}:${port}`,
      `owner_role: ${cluster.ownerRole}`,
      `max_client_connections: ${maxClients}`,
      'pool:',
      `  max_server_connections: ${maxClients}`,
      // BENCH_SERVER_CHECK_DELAY_MS: measure the trade pool.server_check_delay_ms offers (default 0).
      ...(process.env.BENCH_SERVER_CHECK_DELAY_MS
        ? [`  server_check_delay_ms: ${Number(process.env.BENCH_SERVER_CHECK_DELAY_MS)}`]
        : []),
      ...clusterUpstreamYaml(cluster, passwordFile),
      'log:',
      '  level: warn',
      '',
    ].join('\n'),
  )
  return { config, port }
}

/**
 * Node flags the proxy runs with in production (bin/pg-vault-proxy.js's shebang, the Dockerfile's
 * ENTRYPOINT); BENCH_PROXY_NODE_FLAGS (space-separated) replaces them, to measure another trade.
 */
export const PROXY_NODE_FLAGS = process.env.BENCH_PROXY_NODE_FLAGS?.split(' ').filter(Boolean) ?? [
  '--max-semi-space-size=1',
]

export async function startProxy(
  psql: string,
  cluster: PgCluster,
  config: { config: string; port: number },
  nodeFlags: string[] = [],
): Promise<Started> {
  const logFile = path.join(path.dirname(config.config), `proxy-${Date.now()}.log`)
  const out = openSync(logFile, 'a')
  const child = spawn(
    process.execPath,
    [
      ...PROXY_NODE_FLAGS,
      ...nodeFlags,
      path.join(ROOT, 'bin', 'pg-vault-proxy.js'),
      'run',
      '--config',
      config.config,
      '--log-level',
      'warn',
    ],
    { cwd: ROOT, stdio: ['ignore', out, out], env: clientEnv() },
  )
  const entry = track({ child, group: false })
  await waitReady(psql, 'pg-vault-proxy', config.port, cluster.users.scram.user, child, logFile)
  return { entry, port: config.port, pid: () => child.pid, logFile }
}
