// `npm run demo`: a throwaway PostgreSQL 15, the dev Vault configured through its HTTP API (the same
// setup script as the tests), and pg-vault-proxy logging in with short-lived Vault credentials.
// The banner comes once the proxy is ready, with the port it really listens on. Ctrl-C stops
// everything in order: the proxy (it revokes its lease), then Vault, then PostgreSQL.
import { spawn } from 'node:child_process'
import { mkdir, writeFile } from 'node:fs/promises'
import net from 'node:net'
import { join } from 'node:path'
import pg from 'pg'
import { DevVault } from '../dev-vault/dev-vault-server.js'
import { setupDatabase } from '../dev-vault/setup-database.js'
import { SAME_REQUEST_MS } from '../src/ops/lifecycle.js'
import { freePort } from '../test/support/free-port.js'
import { startCluster } from '../test/support/pg-cluster.js'
import { vaultAdminFor } from '../test/support/vault-target.js'

const DEFAULT_PORT = 6432
const { port, instead } = await choosePort()
const opsPort = await freePort()
const cluster = await startCluster()
const vault = new DevVault()
await vault.start(Number(process.env.PGVP_DEMO_VAULT_PORT ?? 0))
const work = join(cluster.dataDir, '..', 'demo')
await mkdir(work, { recursive: true })

// Vault's management login, and a user for the static role, as docs/vault.md describes.
const admin = await vaultAdminFor(cluster)
await cluster.query(`CREATE ROLE app_static LOGIN IN ROLE ${pg.escapeIdentifier(cluster.ownerRole)}`)
const approle = await setupDatabase(
  { address: vault.address, token: vault.rootToken },
  {
    mount: 'database',
    dbName: 'appdb',
    connectionUrl: `postgresql://{{username}}:{{password}}@127.0.0.1:${cluster.port}/${cluster.database}`,
    username: admin.user,
    password: admin.password,
    ownerRole: cluster.ownerRole,
    dynamicRole: 'app',
    staticRole: 'app-static',
    staticUsername: 'app_static',
    defaultTtl: '2m',
    maxTtl: '10m',
    rotationPeriod: '1h',
    approleMount: 'approle',
    approleName: 'proxy',
    policyName: 'proxy',
    tokenTtl: '20m',
    tokenMaxTtl: '1h',
  },
)
const secretIdFile = join(work, 'secret-id')
await writeFile(secretIdFile, approle.secretId, { mode: 0o600 })
const configFile = join(work, 'proxy.yaml')
await writeFile(
  configFile,
  `# Written by scripts/demo.ts; every key is in docs/configuration.md
listen: 127.0.0.1:${port}
socket_dir: ${join(work, 'socket')}
owner_role: ${cluster.ownerRole}
ops:
  listen: 127.0.0.1:${opsPort}
upstream:
  host: localhost
  port: ${cluster.port}
  sslmode: verify-full
  sslrootcert: ${cluster.tls.caFile}
vault:
  address: ${vault.address}
  auth:
    method: approle
    role_id: ${approle.roleId}
    secret_id_file: ${secretIdFile}
credentials:
  vault:
    role: app
`,
)

// The built executable, as users run it (npm run demo builds first); the sources when asked (tests).
const cli = process.env.PGVP_DEMO_FROM_SOURCE
  ? [process.execPath, '--import', 'tsx', 'src/cli/main.ts']
  : [process.execPath, 'bin/pg-vault-proxy.js']
// In a process group of its own: a terminal's Ctrl-C reaches this script (and npm, tsx) but not the
// proxy, which gets exactly one request to stop, from stop() below, when Vault is still up.
const proxy = spawn(cli[0] as string, [...cli.slice(1), 'run', '--config', configFile], {
  stdio: 'inherit',
  detached: true,
})
const exited = new Promise<number | null>((resolve) => proxy.on('exit', resolve))
let stopRequestedAt: number | undefined
const stop = (): void => {
  const now = Date.now()
  if (stopRequestedAt === undefined) {
    stopRequestedAt = now
    proxy.kill('SIGTERM')
  } else if (now - stopRequestedAt >= SAME_REQUEST_MS) {
    // Ctrl-C again, later: the proxy stops waiting for sessions (and leaves its lease to expire).
    proxy.kill('SIGINT')
  }
}
// Only the cluster harness's handlers (they would stop PostgreSQL before the proxy could revoke its
// lease). tsx keeps a handler of its own that process.listeners() hides; it tells tsx's parent
// process that this one got the signal, so that tsx does not pass it on again or kill this one.
for (const signal of ['SIGINT', 'SIGTERM'] as const)
  for (const listener of process.listeners(signal)) process.off(signal, listener)
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, stop)
process.on('exit', () => {
  if (proxy.exitCode === null && proxy.signalCode === null) proxy.kill('SIGTERM')
})

if (await proxyReady()) {
  const connect = `host=127.0.0.1 port=${port} dbname=${cluster.database} user=anyone`
  const cmd = cli.map((part) => (part === process.execPath ? 'node' : part)).join(' ')
  process.stdout.write(
    `
pg-vault-proxy is listening on 127.0.0.1:${port}${instead ? ` (${instead} was taken)` : ''}; PostgreSQL 15 on port ${cluster.port}; dev Vault at ${vault.address}
Connect without a password, from another terminal:
  psql "${connect}"
  select current_user, session_user;   -- ${cluster.ownerRole} | v-approle-app-…
The tour in README.md starts with:
  export PGHOST=127.0.0.1 PGPORT=${port} PGDATABASE=${cluster.database} PGUSER=anyone
The proxy's configuration, to try check and exec with:
  ${cmd} check --config ${configFile} --database ${cluster.database}
  ${cmd} exec --config ${configFile} --database ${cluster.database} -- psql -c 'select current_user'
Metrics: http://127.0.0.1:${opsPort}/metrics   Ctrl-C here stops everything; the proxy revokes its lease first.

`,
  )
}
const code = await exited
const left = await cluster.query<{ rolname: string }>("select rolname from pg_roles where rolname like 'v-%'")
process.stdout.write(
  left.length === 0
    ? 'demo: no Vault-issued login role left in pg_roles\n'
    : `demo: Vault-issued login roles left in pg_roles: ${left.map((r) => r.rolname).join(', ')}\n`,
)
await vault.stop()
await cluster.stop()
process.exit(code ?? 0)

/** PGVP_DEMO_PORT if set (and free), else 6432, else any free port `instead` of 6432. */
async function choosePort(): Promise<{ port: number; instead?: number }> {
  const asked = process.env.PGVP_DEMO_PORT
  if (asked !== undefined && asked !== '') {
    const wanted = Number(asked)
    if (!Number.isInteger(wanted) || wanted < 1 || wanted > 65535 || !(await isFree(wanted))) {
      process.stderr.write(
        `demo: PGVP_DEMO_PORT=${asked} is not a free TCP port on 127.0.0.1; unset it to let the demo pick one\n`,
      )
      process.exit(1)
    }
    return { port: wanted }
  }
  return (await isFree(DEFAULT_PORT)) ? { port: DEFAULT_PORT } : { port: await freePort(), instead: DEFAULT_PORT }
}

function isFree(candidate: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.createServer()
    probe.once('error', () => resolve(false))
    probe.listen(candidate, '127.0.0.1', () => probe.close(() => resolve(true)))
  })
}

/** Waits for the proxy's /readyz (listening, with a credential); false if it exited first. */
async function proxyReady(): Promise<boolean> {
  for (;;) {
    if (proxy.exitCode !== null || proxy.signalCode !== null) return false
    try {
      if ((await fetch(`http://127.0.0.1:${opsPort}/readyz`)).status === 200) return true
    } catch {
      // Not listening yet.
    }
    await new Promise((r) => setTimeout(r, 100))
  }
}
