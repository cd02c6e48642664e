// `npm run demo`: a throwaway PostgreSQL 15, the dev Vault configured through its HTTP API (the same
// setup script as the tests), and pg-vault-proxy logging in with short-lived Vault credentials.
// Ctrl-C stops everything and removes the cluster.
import { spawn } from 'node:child_process'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import pg from 'pg'
import { DevVault } from '../dev-vault/dev-vault-server.js'
import { setupDatabase } from '../dev-vault/setup-database.js'
import { startCluster } from '../test/support/pg-cluster.js'
import { vaultAdminFor } from '../test/support/vault-target.js'

const port = Number(process.env.PGVP_DEMO_PORT ?? 6432)
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
process.stdout.write(
  `\nPostgreSQL 15 on port ${cluster.port}; dev Vault at ${vault.address} (root token: ${vault.rootToken}); proxy config: ${configFile}\n` +
    `Connect without a password:\n  psql "host=127.0.0.1 port=${port} dbname=${cluster.database} user=anyone"\n` +
    `and try: select current_user, session_user;   (Ctrl-C here stops everything)\n\n`,
)
// The built executable, as users run it (npm run demo builds first); the sources when asked (tests).
const entry = process.env.PGVP_DEMO_FROM_SOURCE ? ['--import', 'tsx', 'src/cli/main.ts'] : ['bin/pg-vault-proxy.js']
const proxy = spawn(process.execPath, [...entry, 'run', '--config', configFile], { stdio: 'inherit' })
const stop = (): void => void proxy.kill('SIGTERM')
// Orderly: the proxy first (it revokes its leases through Vault), then Vault, then PostgreSQL;
// the cluster harness's own signal handlers would stop PostgreSQL first.
process.removeAllListeners('SIGINT')
process.removeAllListeners('SIGTERM')
process.on('SIGINT', stop)
process.on('SIGTERM', stop)
const code = await new Promise<number | null>((resolve) => proxy.on('exit', resolve))
await vault.stop()
await cluster.stop()
process.exit(code ?? 0)
