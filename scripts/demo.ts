// `npm run demo`: a throwaway PostgreSQL 15 cluster and pg-vault-proxy in front of it, so the proxy
// can be tried on a fresh machine. Ctrl-C stops both and removes the cluster.
import { spawn } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { startCluster } from '../test/support/pg-cluster.js'

const port = Number(process.env.PGVP_DEMO_PORT ?? 6432)
const cluster = await startCluster()
const passwordFile = join(cluster.dataDir, '..', 'proxy-password')
await writeFile(passwordFile, cluster.users.scram.password, { mode: 0o600 })
const configFile = join(cluster.dataDir, '..', 'proxy.yaml')
await writeFile(
  configFile,
  `# Written by scripts/demo.ts: see docs/configuration.md
listen: 127.0.0.1:${port}
socket_dir: ${join(cluster.dataDir, '..', 'proxy-socket')}
owner_role: ${cluster.ownerRole}
upstream:
  host: localhost
  port: ${cluster.port}
  sslmode: verify-full
  sslrootcert: ${cluster.tls.caFile}
credentials:
  static:
    username: ${cluster.users.scram.user}
    password_file: ${passwordFile}
`,
)
process.stdout.write(
  `\nPostgreSQL 15 is running on port ${cluster.port}; pg-vault-proxy config: ${configFile}\n` +
    `Connect without a password:\n  psql "host=127.0.0.1 port=${port} dbname=${cluster.database} user=anyone"\n` +
    `and try: select current_user, session_user;   (Ctrl-C here stops everything)\n\n`,
)
const proxy = spawn(process.execPath, ['bin/pg-vault-proxy.js', 'run', '--config', configFile], { stdio: 'inherit' })
const stop = (): void => void proxy.kill('SIGTERM')
process.on('SIGINT', stop)
process.on('SIGTERM', stop)
const code = await new Promise<number | null>((resolve) => proxy.on('exit', resolve))
await cluster.stop()
process.exit(code ?? 0)
