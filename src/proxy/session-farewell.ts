import { encodeErrorResponse, errorFields, type ErrorFields } from '../pgwire/backend-messages.js'
import type { UpstreamLoss } from './upstream-loss.js'

// The FATALs pg-vault-proxy writes to a client whose session it ends. The relay writes the
// bytes; the words are the session's. SQLSTATEs as PostgreSQL uses them (src/backend/utils/errcodes.txt).

/** The upstream closed without a word (a socket error, a killed server) and the session was not reconnected. */
export function lostUpstreamFarewell(errorCode: string | undefined, why: string | undefined): Buffer {
  return encodeErrorResponse(
    errorFields({
      severity: 'FATAL',
      sqlState: '08006',
      message: `pg-vault-proxy lost the connection to the upstream server${errorCode ? ` (${errorCode})` : ''}`,
      detail: why,
      hint: 'The server may have restarted or the network failed; reconnect.',
    }),
  )
}

/**
 * A side broke the protocol (`what`: the framer's words). The client's fault is 08P01
 * protocol_violation, as PostgreSQL answers it; an upstream's is, to the client, a lost connection.
 */
export function violationFarewell(side: 'client' | 'upstream', what: string): Buffer {
  return encodeErrorResponse(
    side === 'client'
      ? errorFields({ severity: 'FATAL', sqlState: '08P01', message: what })
      : errorFields({
          severity: 'FATAL',
          sqlState: '08006',
          message: `pg-vault-proxy lost the connection to the upstream server: it sent an ${what}`,
        }),
  )
}

/** The proxy ends the session as it shuts down: 57P01 admin_shutdown, as a backend does at a fast shutdown (ProcessInterrupts in src/backend/tcop/postgres.c). */
export function shutdownFarewell(): Buffer {
  return encodeErrorResponse(
    errorFields({
      severity: 'FATAL',
      sqlState: '57P01',
      message: 'terminating connection: pg-vault-proxy is shutting down',
    }),
  )
}

/** The client sat idle longer than idle_client_timeout_ms: 57P05, as PostgreSQL's idle_session_timeout says it. */
export function idleTimeoutFarewell(timeoutMs: number): Buffer {
  return encodeErrorResponse(
    errorFields({
      severity: 'FATAL',
      sqlState: '57P05',
      message: `terminating connection due to idle-session timeout (pg-vault-proxy idle_client_timeout_ms = ${timeoutMs})`,
      hint: 'Reconnect; raise or unset idle_client_timeout_ms in the proxy configuration to keep idle clients longer.',
    }),
  )
}

/** The session failed inside the proxy (XX000 internal_error); the error itself is only in the log. */
export function internalErrorFarewell(sessionId: number): Buffer {
  return encodeErrorResponse(
    errorFields({
      severity: 'FATAL',
      sqlState: 'XX000',
      message: `pg-vault-proxy internal error (session ${sessionId}); see the proxy log`,
      hint: 'Reconnect. Other sessions are not affected; please report the log line to the proxy maintainers.',
    }),
  )
}

/**
 * The session's credential ends and the session could not move to a new one: `held` names what
 * kept it (a temporary table...), else `reason` says why (busy, or rotation.strict).
 */
export function credentialEndedFarewell(origin: string, held: string | undefined, reason: string): Buffer {
  return encodeErrorResponse(
    errorFields({
      severity: 'FATAL',
      sqlState: '57P01',
      message: `terminating connection: its upstream credential (${origin}) ends, and pg-vault-proxy could not move the session to a new one because ${held !== undefined ? `it held ${held}` : reason}`,
      hint:
        held !== undefined
          ? 'Reconnect. Sessions that hold temporary tables, WITH HOLD cursors or advisory locks cannot move to a new credential; see docs/rotation.md.'
          : 'Reconnect. rotation.strict is on, so sessions still busy when their credential ends are closed; see docs/rotation.md.',
    }),
  )
}

/** The upstream was lost at an idle point and the reconnect failed (`why`). */
export function reconnectFailedFarewell(loss: UpstreamLoss, why: string): Buffer {
  return encodeErrorResponse(
    errorFields({
      severity: 'FATAL',
      sqlState: loss.sqlState ?? '08006',
      message: `pg-vault-proxy lost the connection to the upstream server (${loss.announced ?? loss.errorCode ?? 'closed'}) and could not reconnect: ${why}`,
      hint: 'Reconnect.',
    }),
  )
}

/**
 * The upstream died while a probe or move talked to it and the session is not reconnected: the
 * server's FATAL if it sent one, else the socket's error, with `why` added to the detail.
 */
export function lostWhileMovingFarewell(
  fatal: ErrorFields | undefined,
  error: string,
  why: string | undefined,
): Buffer {
  const fields =
    fatal ??
    errorFields({
      severity: 'FATAL',
      sqlState: '08006',
      message: `pg-vault-proxy lost the connection to the upstream server: ${error}`,
    })
  return encodeErrorResponse(explainedFatal(fields, why ?? ''))
}

/** The server's FATAL with the proxy's reason for not keeping the session added to its Detail. */
export function explainedFatal(fields: ErrorFields, why: string): ErrorFields {
  const explained = new Map(fields)
  // The server's words stay; the proxy's follow.
  explained.set('D', [fields.get('D'), why].filter(Boolean).join(' '))
  return explained
}
