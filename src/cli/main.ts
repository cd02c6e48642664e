import { ConfigError, loadConfig } from '../config/load-config.js'
import { createLogger } from '../ops/logger.js'
import { createProxyServer } from '../proxy/create-proxy-server.js'
import { buildProgram, type RunOptions } from './program.js'

// Exit codes: 0 clean stop, 1 bad usage or configuration, 2 failure at start.
const EXIT_CONFIG = 1
const EXIT_START = 2

async function run(options: RunOptions): Promise<void> {
  let config
  try {
    config = await loadConfig(options.config, { listen: options.listen })
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`pg-vault-proxy: ${err.message}\n`)
      process.exit(EXIT_CONFIG)
    }
    throw err
  }
  const logger = createLogger((options.logLevel ?? config.log.level) as 'info')
  let server
  try {
    server = createProxyServer(config, logger)
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

  let stopping = false
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) process.exit(1) // a second signal: leave at once
    stopping = true
    logger.info({ signal }, 'shutting down')
    server
      .close()
      .then(() => process.exit(0))
      .catch((err: unknown) => {
        logger.error({ err }, 'error during shutdown')
        process.exit(1)
      })
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}

buildProgram({ run })
  .parseAsync(process.argv)
  .catch((err: unknown) => {
    process.stderr.write(`pg-vault-proxy: ${err instanceof Error ? err.message : String(err)}\n`)
    process.exit(EXIT_START)
  })
