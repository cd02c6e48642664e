import { pino, type Logger, type LevelWithSilent } from 'pino'

/**
 * pino JSON logs on stderr. Redaction is a second line of defence: code never passes secrets to the
 * logger, but if a credential object slips in, its password does not reach the log.
 */
export function createLogger(
  level: LevelWithSilent = 'info',
  destination: NodeJS.WritableStream = process.stderr,
): Logger {
  return pino(
    {
      name: 'pg-vault-proxy',
      level,
      redact: {
        paths: ['password', '*.password', 'credential.password', 'token', '*.token', 'secretKey', '*.secretKey'],
        censor: '[redacted]',
      },
    },
    destination,
  )
}

export type { Logger }
