import { createRequire } from 'node:module'
import { pino, type Logger, type LevelWithSilent } from 'pino'
import type pinoPretty from 'pino-pretty'

/**
 * pino-pretty and its dependencies are loaded only for a human-readable log: the JSON log, what a
 * deployment writes, does not keep them in memory.
 */
function loadPretty(): typeof pinoPretty {
  return createRequire(import.meta.url)('pino-pretty') as typeof pinoPretty
}

export type LogFormat = 'auto' | 'json' | 'pretty'

/**
 * pino logs on stderr: JSON lines, or human-readable ones on a terminal (`auto`) or on request.
 * Redaction is a second line of defence: code never passes secrets to the logger, but if a
 * credential object slips in, its password does not reach the log.
 */
export function createLogger(
  level: LevelWithSilent = 'info',
  destination: NodeJS.WritableStream = process.stderr,
  format: LogFormat = 'json',
): Logger {
  const options = {
    name: 'pg-vault-proxy',
    level,
    redact: {
      paths: ['password', '*.password', 'credential.password', 'token', '*.token', 'secretKey', '*.secretKey'],
      censor: '[redacted]',
    },
  }
  const isTerminal = (destination as { isTTY?: boolean }).isTTY === true
  if (format === 'pretty' || (format === 'auto' && isTerminal)) {
    return pino(
      options,
      loadPretty()({
        destination,
        colorize: isTerminal,
        sync: true,
        translateTime: 'SYS:HH:MM:ss.l',
        ignore: 'pid,hostname,name',
      }),
    )
  }
  return pino(options, destination)
}

export type { Logger }
