import type { Logger } from 'pino'
import type { ProxyServer } from '../proxy/proxy-server.js'
import type { ConfigReloader } from './config-reload.js'
import type { OpsServer } from './ops-server.js'

export interface LifecycleOptions {
  server: ProxyServer
  ops: OpsServer | undefined
  reloader: ConfigReloader
  logger: Logger
  exit: (code: number) => void
  /** Where signals arrive; the process itself outside tests. */
  signals?: NodeJS.EventEmitter
}

/** Exit code when a second SIGTERM/SIGINT cuts the drain short. */
export const EXIT_INTERRUPTED = 1

/**
 * SIGTERM and SIGINT drain and exit 0: no new sessions, open ones end at their next idle point or
 * when shutdown_grace_ms runs out, leases are revoked. A second one exits at once. SIGHUP reloads
 * the configuration for new sessions.
 */
export function handleSignals(options: LifecycleOptions): void {
  const { server, ops, reloader, logger, exit } = options
  const signals = options.signals ?? process
  let stopping = false

  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: exiting at once, without waiting for sessions or revoking leases')
      exit(EXIT_INTERRUPTED)
      return
    }
    stopping = true
    const graceMs = reloader.config.shutdown_grace_ms
    logger.info({ signal, graceMs }, 'shutting down')
    server
      .drain(graceMs)
      // The ops server stays up to the end, so probes see the drain (readyz 503), not a refused port.
      .then(() => ops?.close())
      .then(() => {
        logger.info('stopped')
        exit(0)
      })
      .catch((err: unknown) => {
        logger.error({ err }, 'error during shutdown')
        exit(1)
      })
  }

  signals.on('SIGTERM', stop)
  signals.on('SIGINT', stop)
  signals.on('SIGHUP', () => {
    if (stopping) {
      logger.info('SIGHUP ignored: shutting down')
      return
    }
    logger.info({ signal: 'SIGHUP' }, 'reloading the configuration')
    void reloader.reload()
  })
}
