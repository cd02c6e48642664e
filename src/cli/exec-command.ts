import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Logger } from 'pino'
import type { Config } from '../config/load-config.js'
import { createProxyServer } from '../proxy/create-proxy-server.js'

/**
 * `pg-vault-proxy exec -- CMD …`: a proxy for one command. It listens on a free loopback port (most
 * drivers and DATABASE_URL parsers need TCP) and a private Unix socket directory, runs the command
 * with libpq's variables pointing at it, and on exit revokes its lease. Returns the command's status.
 */
export async function runExec(
  config: Config,
  command: string[],
  database: string | undefined,
  logger: Logger,
): Promise<number> {
  const socketDir = await mkdtemp(join(tmpdir(), 'pg-vault-proxy-exec-'))
  const server = createProxyServer(
    { ...config, listen: { host: '127.0.0.1', port: 0 }, socket_dir: socketDir, socket_mode: '0700' },
    logger,
  )
  try {
    await server.start()
    const dbName = database ?? config.upstream.database ?? 'postgres'
    const env = {
      ...process.env,
      PGHOST: '127.0.0.1',
      PGPORT: String(server.port),
      PGDATABASE: dbName,
      PGUSER: 'pg-vault-proxy',
      PGSSLMODE: 'disable',
      DATABASE_URL: `postgresql://pg-vault-proxy@127.0.0.1:${server.port}/${encodeURIComponent(dbName)}?sslmode=disable`,
    }
    const [file, ...args] = command
    if (file === undefined) throw new Error('exec: no command given')
    const child = spawn(file, args, { stdio: 'inherit', env })
    // The job decides how to end on a signal; the proxy outlives it to serve its last statements.
    const forward = (signal: NodeJS.Signals): void => void child.kill(signal)
    process.on('SIGINT', forward)
    process.on('SIGTERM', forward)
    const status = await new Promise<number>((resolve) => {
      child.on('error', (err) => {
        logger.error({ command: file, err: err.message }, 'could not run the command')
        resolve(127)
      })
      child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 + signalNumber(signal) : 1)))
    })
    process.off('SIGINT', forward)
    process.off('SIGTERM', forward)
    return status
  } finally {
    await server.close()
    await rm(socketDir, { recursive: true, force: true })
  }
}

function signalNumber(signal: NodeJS.Signals): number {
  return ({ SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15 } as Record<string, number>)[signal] ?? 0
}
