import type { Logger } from 'pino'

type Level = 'debug' | 'info' | 'warn' | 'error'

/**
 * One client session's log: the proxy's logger, with the session's id and client address added
 * to each line it writes. Not a pino child: making a child serialises its bindings and sets up
 * redaction for it, about 5 KB of garbage per connection, and with a new connection per request
 * most sessions write only their audit line, or nothing below the configured level.
 */
export class SessionLog {
  constructor(
    private readonly logger: Logger,
    private readonly session: number,
    private readonly client: string,
  ) {}

  debug(fields: object | string, message?: string): void {
    this.write('debug', fields, message)
  }

  info(fields: object | string, message?: string): void {
    this.write('info', fields, message)
  }

  warn(fields: object | string, message?: string): void {
    this.write('warn', fields, message)
  }

  error(fields: object | string, message?: string): void {
    this.write('error', fields, message)
  }

  /** A line at `level`, if the logger writes that level: nothing is built for a line it drops. */
  write(level: Level, fields: object | string, message?: string): void {
    const { logger } = this
    if (!logger.isLevelEnabled(level)) return
    const line = { session: this.session, client: this.client }
    if (typeof fields === 'string') logger[level](line, fields)
    else logger[level]({ ...line, ...fields }, message)
  }
}
