import { ConfigError, loadConfig, type Config } from '../config/load-config.js'
import { ConfigReloader } from '../ops/config-reload.js'
import { handleSignals, handleUncaughtErrors } from '../ops/lifecycle.js'
import { createLogger } from '../ops/logger.js'
import { startOpsServer } from '../ops/ops-server.js'
import { createProxyServer } from '../proxy/create-proxy-server.js'
import { CheckFailure, runCheck } from './check-command.js'
import { runExec } from './exec-command.js'
import { ExecRouteError } from './exec-config.js'
import { runHealthcheck } from './healthcheck-command.js'
import {
  buildProgram,
  type CheckFlags,
  type ConfigFlags,
  type ExecFlags,
  type HealthcheckFlags,
} from './program.js'

// Exit codes: 0 clean stop, 1 bad usage or configuration, 2 failure at start or in a check step.
const EXIT_CONFIG = 1
const EXIT_START = 2

/** Loads the configuration from the file, PGVP_* and flags, or exits 1 naming every problem. */
async function configFrom(flags: ConfigFlags): Promise<Config> {
  try {
    return await loadConfigFrom(flags)
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err
    const hint = flags.config === undefined ? '\n  (no --config given: pass one, or set PGVP_* variables)' : ''
    process.stderr.write(`pg-vault-proxy: ${err.message}${hint}\n`)
    process.exit(EXIT_CONFIG)
  }
}

/** The same load at start and at every SIGHUP. */
function loadConfigFrom(flags: ConfigFlags): Promise<Config> {
  return loadConfig(flags.config, { listen: flags.listen, logLevel: flags.logLevel, logFormat: flags.logFormat })
}

function loggerFor(config: Config, overrides: { level?: string } = {}): ReturnType<typeof createLogger> {
  return createLogger((overrides.level ?? config.log.level) as 'info', process.stderr, config.log.format)
}

async function run(flags: ConfigFlags): Promise<void> {
  const config = await configFrom(flags)
  const logger = loggerFor(config)
  handleUncaughtErrors({ logger, exit: (code) => process.exit(code) })
  let server, ops
  try {
    server = createProxyServer(config, logger)
    ops = await startOpsServer(config, server, logger)
    await server.start()
  } catch (err) {
    logger.fatal({ err: (err as Error).message }, 'could not start')
    process.stderr.write(`pg-vault-proxy: ${(err as Error).message}\n`)
    process.exit(EXIT_START)
  }
  logger.info(
    { port: server.port, ownerRole: config.owner_role, upstream: `${config.upstream.host}:${config.upstream.port}` },
    'pg-vault-proxy ready',
  )

  const reloader = new ConfigReloader(config, { server, logger, load: () => loadConfigFrom(flags) })
  handleSignals({ server, ops, reloader, logger, exit: (code) => process.exit(code) })
}

async function check(flags: CheckFlags): Promise<void> {
  const config = await configFrom(flags)
  // The report goes to stdout; the log only carries warnings, unless asked for more.
  const logger = loggerFor(config, { level: flags.logLevel ?? 'warn' })
  try {
    await runCheck(config, flags.database, logger, process.stdout)
    process.exit(0)
  } catch (err) {
    process.stdout.write(`FAIL ${err instanceof CheckFailure ? err.message : String(err)}\n`)
    process.exit(EXIT_START)
  }
}

async function exec(command: string[], flags: ExecFlags): Promise<void> {
  const config = await configFrom(flags)
  const logger = loggerFor(config, { level: flags.logLevel ?? 'warn' })
  try {
    process.exit(await runExec(config, command, { database: flags.database, route: flags.route }, logger))
  } catch (err) {
    if (!(err instanceof ExecRouteError)) throw err
    process.stderr.write(`pg-vault-proxy: ${err.message}\n`)
    process.exit(EXIT_CONFIG)
  }
}

/** Docker reads exit 0 as healthy and 1 as unhealthy (2 is reserved), so every failure here is 1. */
async function healthcheck(flags: HealthcheckFlags): Promise<void> {
  const config = await configFrom(flags)
  const timeoutMs = Number(flags.timeout)
  if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) {
    process.stderr.write(
      `pg-vault-proxy: --timeout: expected a positive number of milliseconds, got "${flags.timeout}"\n`,
    )
    process.exit(EXIT_CONFIG)
  }
  const result = await runHealthcheck(config, timeoutMs)
  process.stdout.write(`${result.healthy ? 'healthy' : 'unhealthy'}: ${result.detail}\n`)
  process.exit(result.healthy ? 0 : 1)
}

buildProgram({ run, check, exec, healthcheck })
  .parseAsync(process.argv)
  .catch((err: unknown) => {
    process.stderr.write(`pg-vault-proxy: ${err instanceof Error ? err.message : String(err)}\n`)
    process.exit(EXIT_START)
  })
