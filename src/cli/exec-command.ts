import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { constants, tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Logger } from 'pino'
import type { Config } from '../config/load-config.js'
import { createProxyServer } from '../proxy/create-proxy-server.js'
import { execConfig } from './exec-config.js'
import { execEnvironment } from './exec-environment.js'

/** Signals a terminal sends to its whole foreground process group: the command gets its own copy. */
const LEFT_TO_THE_COMMAND: readonly NodeJS.Signals[] = ['SIGINT', 'SIGQUIT']
/** Signals sent to exec alone (kill, a supervisor, a closed terminal): passed on to the command. */
const FORWARDED: readonly NodeJS.Signals[] = ['SIGTERM', 'SIGHUP']

/**
 * `pg-vault-proxy exec -- CMD …`: a proxy for one command. It listens on a free loopback port (most
 * drivers and DATABASE_URL parsers need TCP) and a private Unix socket directory, runs the command
 * with libpq's variables pointing at it and without the proxy's secrets, and on exit revokes its
 * lease. Returns the command's status (128 + the signal's number when a signal ended it).
 *
 * Ctrl-C reaches the command straight from the terminal, so exec does not pass SIGINT or SIGQUIT
 * on, as POSIX system() ignores them while its command runs: one keypress is one interrupt, and
 * exec stays up to serve the command's last statements and revoke the lease after it. A signal
 * that arrives before the command started means it is not started at all.
 */
export async function runExec(
  config: Config,
  command: string[],
  options: { database?: string | undefined; route?: string | undefined },
  logger: Logger,
): Promise<number> {
  const [file, ...args] = command
  if (file === undefined) throw new Error('exec: no command given')
  const socketDir = await mkdtemp(join(tmpdir(), 'pg-vault-proxy-exec-'))
  let child: ChildProcess | undefined
  let stopBeforeStart: NodeJS.Signals | undefined
  const onSignal = (signal: NodeJS.Signals): void => {
    if (child === undefined) {
      stopBeforeStart ??= signal
      logger.info({ signal }, 'signal before the command started: it will not be run')
    } else if (FORWARDED.includes(signal)) child.kill(signal)
  }
  for (const signal of [...LEFT_TO_THE_COMMAND, ...FORWARDED]) process.on(signal, onSignal)
  try {
    const served = execConfig(config, socketDir, options.route)
    const server = createProxyServer(served, logger)
    try {
      await server.start()
      if (stopBeforeStart !== undefined) return 128 + constants.signals[stopBeforeStart]
      const database = options.database ?? served.upstream.database ?? 'postgres'
      const env = execEnvironment(process.env, { port: server.port, database })
      const running = spawn(file, args, { stdio: 'inherit', env })
      child = running
      return await new Promise<number>((resolve) => {
        running.on('error', (err) => {
          logger.error({ command: file, err: err.message }, 'could not run the command')
          resolve(127)
        })
        running.on('exit', (code, signal) => resolve(code ?? (signal ? 128 + constants.signals[signal] : 1)))
      })
    } finally {
      await server.close()
    }
  } finally {
    await rm(socketDir, { recursive: true, force: true })
    for (const signal of [...LEFT_TO_THE_COMMAND, ...FORWARDED]) process.off(signal, onSignal)
  }
}
