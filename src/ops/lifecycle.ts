import type { Logger } from 'pino'
import type { ProxyServer } from '../proxy/proxy-server.js'
import { SessionBoundary } from '../proxy/session-boundary.js'
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
  /** The clock that tells a repeated signal from a second request; Date.now outside tests. */
  now?: () => number
}

/** Exit code when a second SIGTERM/SIGINT cuts the drain short. */
export const EXIT_INTERRUPTED = 1
/** Exit code after an error nobody handled outside any client session (sysexits.h EX_SOFTWARE). */
export const EXIT_INTERNAL_ERROR = 70

/**
 * SIGTERM/SIGINT arriving within this long of the first are the same request to stop. A terminal
 * sends Ctrl-C's SIGINT to its whole foreground process group, so a proxy started by a wrapper
 * that passes signals on (npm run, a script) gets the same keypress twice, a few milliseconds apart.
 */
export const SAME_REQUEST_MS = 1000

/**
 * SIGTERM and SIGINT drain and exit 0: no new sessions, open ones end at their next idle point or
 * when shutdown_grace_ms runs out, leases are revoked. Another one within SAME_REQUEST_MS is the
 * same request; one after that exits at once. SIGHUP reloads the configuration for new sessions.
 */
export function handleSignals(options: LifecycleOptions): void {
  const { server, ops, reloader, logger, exit } = options
  const signals = options.signals ?? process
  const now = options.now ?? Date.now
  let stopping = false
  let firstAt = 0

  const stop = (signal: NodeJS.Signals): void => {
    if (stopping && now() - firstAt < SAME_REQUEST_MS) {
      logger.info({ signal }, 'signal repeated within 1 s: the same request to stop')
      return
    }
    if (stopping) {
      logger.warn({ signal }, 'second signal: exiting at once, without waiting for sessions or revoking leases')
      exit(EXIT_INTERRUPTED)
      return
    }
    stopping = true
    firstAt = now()
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

/**
 * Errors nobody handled. One raised by a client session's code, or by a timer or promise that code
 * started, ends that session alone with FATAL XX000 (src/proxy/session-boundary.ts): a bug one
 * client can reach must not take every other session down. Any other is a bug outside the
 * sessions, where the process state cannot be trusted: it is logged and the process exits 70, for
 * its supervisor to restart it (Node.js would exit too, with less said).
 */
export function handleUncaughtErrors(options: {
  logger: Logger
  exit: (code: number) => void
  /** The process itself outside tests. */
  events?: NodeJS.EventEmitter
}): void {
  const { logger, exit } = options
  const events = options.events ?? process
  const handler =
    (kind: string) =>
    (err: unknown): void => {
      const session = SessionBoundary.current()
      if (session) {
        session.fault(err)
        return
      }
      logger.fatal({ err }, `${kind} outside any client session; exiting`)
      exit(EXIT_INTERNAL_ERROR)
    }
  events.on('uncaughtException', handler('uncaught exception'))
  events.on('unhandledRejection', handler('unhandled promise rejection'))
}
