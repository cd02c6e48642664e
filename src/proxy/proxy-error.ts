import type { ErrorFields, ProxyErrorFields } from '../pgwire/backend-messages.js'
import { errorFields } from '../pgwire/backend-messages.js'

/**
 * A failure the client should hear about as an ErrorResponse. `clientError` is what the client sees:
 * always a real SQLSTATE and a message that says it comes from pg-vault-proxy and what to do.
 * Messages never contain secrets.
 */
export class ProxyError extends Error {
  override name = 'ProxyError'
  readonly clientError: ProxyErrorFields
  /** Stable, greppable reason; also the label used in logs. */
  readonly reason: string

  constructor(
    reason: string,
    clientError: Omit<ProxyErrorFields, 'severity'> & { severity?: 'ERROR' | 'FATAL' },
    options?: ErrorOptions,
  ) {
    super(clientError.message, options)
    this.reason = reason
    this.clientError = { severity: 'FATAL', ...clientError }
  }

  /** The ErrorResponse fields sent to the client. */
  fields(): ErrorFields {
    return errorFields(this.clientError)
  }
}

/**
 * The upstream refused the session with an ErrorResponse during startup. The client gets the
 * upstream's own fields (SQLSTATE, message, routine...), optionally with a hint from the proxy.
 */
export class UpstreamRefusedError extends ProxyError {
  override name = 'UpstreamRefusedError'
  readonly upstreamFields: ErrorFields

  constructor(upstreamFields: ErrorFields, hint?: string) {
    // A server that omits the SQLSTATE broke the protocol; never assume the field exists.
    const sqlState = upstreamFields.get('C') ?? '08P01'
    super('upstream_refused', {
      sqlState,
      message: upstreamFields.get('M') ?? 'the upstream server refused the connection without a message',
      hint,
    })
    this.upstreamFields = new Map(upstreamFields)
    // Every client expects severity, SQLSTATE and message; fill what a broken server left out.
    for (const [code, value] of [
      ['S', 'FATAL'],
      ['V', 'FATAL'],
      ['C', sqlState],
      ['M', this.clientError.message],
    ] as const) {
      if (!this.upstreamFields.has(code)) this.upstreamFields.set(code, value)
    }
    if (hint !== undefined) this.upstreamFields.set('H', hint)
  }

  get sqlState(): string {
    return this.clientError.sqlState
  }

  override fields(): ErrorFields {
    return this.upstreamFields
  }
}
