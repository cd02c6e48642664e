import { serialize } from 'pg-protocol'
import type { ErrorFields } from '../pgwire/backend-messages.js'
import { decodeErrorFields, decodeParameterStatus } from '../pgwire/backend-messages.js'
import { BackendCode } from '../pgwire/codes.js'
import { ReplyScanner } from '../pgwire/reply-scanner.js'
import { quoteLiteral } from '../pgwire/sql-text.js'
import type { StartupParameter } from '../pgwire/startup-packet.js'
import { linkableName } from './linkable-parameters.js'
import { UpstreamRefusedError } from './proxy-error.js'
import type { UpstreamSession } from './upstream-connector.js'

/** The answer is a DataRow, a CommandComplete, a few ParameterStatus and a ReadyForQuery: far less than this. */
const MAX_LINK_BYTES = 64 * 1024
const LINK_TIMEOUT_MS = 5_000
/** Zero bytes, shared. */
const NO_BYTES = Buffer.alloc(0)

/**
 * The linkable parameters a client sent that its pooled connection does not have yet, as one
 * `SELECT set_config(...)` (name, value) list, in the client's order; the last of several values for
 * a name wins, as at login. client_encoding goes last: an error about another parameter stops the
 * statement before it, so the error arrives in the connection's encoding, not the client's. A value
 * the connection reports exactly is skipped; any other is set, even when it only spells the current
 * one differently (`utf8` for `UTF8`): setting it again is harmless, and the server's answer gives
 * the spelling a fresh login would have reported.
 */
export function linkSettings(
  parameters: ReadonlyMap<string, string>,
  forwarded: readonly StartupParameter[],
): Array<[string, string]> {
  const wanted = new Map<string, string>()
  for (const [name, value] of forwarded) {
    const reported = linkableName(name)
    if (reported === undefined) continue
    wanted.delete(reported)
    wanted.set(reported, value)
  }
  const encoding = wanted.get('client_encoding')
  if (encoding !== undefined) {
    wanted.delete('client_encoding')
    wanted.set('client_encoding', encoding)
  }
  return [...wanted].filter(([name, value]) => parameters.get(name) !== value)
}

/** What linking a pooled connection to a client came to. */
export type LinkOutcome =
  /** The connection now has the client's values; its parameters map says so. */
  | { linked: true }
  /** The server refused a value (its ErrorResponse): a fresh login would have been refused the same way. */
  | { linked: false; refusal: ErrorFields }
  /** The connection broke, lost its login role, said too much, was too slow, or cannot be linked: it is destroyed. */
  | { linked: false; refusal: undefined; why: string }

/**
 * Gives a pooled connection (reset, idle) the linkable startup parameters of its new client with
 * one simple Query of set_config() calls (https://www.postgresql.org/docs/15/functions-admin.html#FUNCTIONS-ADMIN-SET),
 * with `check` first checking that it still runs as its login role (the pool's reset checked that
 * too; pool.server_check_delay_ms says when that check is too old). With nothing to set and nothing
 * to check it sends nothing at all. set_config, unlike `SET name TO 'value'`, takes the value as the startup packet does, a list
 * (search_path) included. The ParameterStatus messages that answer update `session.parameters`, so
 * the client's greeting carries its own values. One statement runs in one implicit transaction: if
 * any value is refused none is applied, and the connection is idle and unchanged afterwards.
 */
export function linkServer(
  session: UpstreamSession,
  forwarded: readonly StartupParameter[],
  check: boolean,
): Promise<LinkOutcome> {
  const settings = linkSettings(session.parameters, forwarded)
  if (!check && settings.length === 0) return Promise.resolve({ linked: true })
  const encoding = session.parameters.get('client_encoding')
  if (encoding !== 'UTF8' && encoding !== 'SQL_ASCII' && settings.some(([, value]) => !isAscii(value))) {
    // The query text is UTF-8, and the server would convert it from another client_encoding.
    return Promise.resolve(
      broken(session, `a non-ASCII value cannot be sent while client_encoding is ${encoding ?? 'unknown'}`),
    )
  }
  // First, whether the connection's login role still exists: a lease revoked behind the proxy's
  // back (`vault lease revoke`) drops the role without ending its sessions, and such a session
  // fails later with "invalid role OID" (GetUserNameFromId, src/backend/utils/init/miscinit.c).
  const statements = check ? ['SELECT session_user'] : []
  if (settings.length > 0)
    statements.push(
      `SELECT ${settings.map(([name, value]) => `pg_catalog.set_config(${quoteLiteral(name)}, ${quoteLiteral(value)}, false)`).join(', ')}`,
    )
  const sql = statements.join('; ')
  const { socket } = session
  let refusal: ErrorFields | undefined
  let checked = !check
  let why: string | undefined
  const scanner = new ReplyScanner(MAX_LINK_BYTES, (code, body) => {
    if (code === BackendCode.ErrorResponse) {
      const fields = decodeErrorFields(body)
      if (!checked) why ??= `its login role is gone: ${fields.get('M') ?? 'no message'}`
      refusal ??= fields
    } else if (code === BackendCode.CommandComplete) checked = true
    else if (code === BackendCode.ParameterStatus) {
      const reported = decodeParameterStatus(body)
      if (reported) session.parameters.set(...reported)
    } else if (code === BackendCode.ReadyForQuery) {
      if (body[0] !== 0x49) why ??= `the server is not idle afterwards (status ${String.fromCharCode(body[0] ?? 0)})`
      return true
    }
    return false
  })
  return new Promise<LinkOutcome>((resolve) => {
    let ended = false
    const end = (outcome: LinkOutcome): void => {
      ended = true
      clearTimeout(timer)
      socket.off('data', onData)
      socket.off('close', onClose)
      socket.off('error', onClose)
      socket.pause()
      resolve(outcome)
    }
    const onData = (chunk: Buffer): void => {
      let rest: Buffer | undefined
      try {
        rest = scanner.push(chunk)
      } catch (err) {
        end(broken(session, (err as Error).message))
        return
      }
      if (rest === undefined) return
      session.pending = rest
      if (why !== undefined) end(broken(session, why))
      else end(refusal ? { linked: false, refusal } : { linked: true })
    }
    const onClose = (): void => end(broken(session, 'the server closed the connection'))
    const timer = setTimeout(() => end(broken(session, `no answer within ${LINK_TIMEOUT_MS} ms`)), LINK_TIMEOUT_MS)
    socket.on('data', onData)
    socket.on('close', onClose)
    socket.on('error', onClose)
    socket.write(serialize.query(sql))
    // Bytes read after the reset (a notice, a ParameterStatus) come before the answer.
    const { pending } = session
    session.pending = NO_BYTES
    if (pending.length > 0) onData(pending)
    if (!ended) socket.resume()
  })
}

function broken(session: UpstreamSession, why: string): LinkOutcome {
  session.socket.destroy()
  return { linked: false, refusal: undefined, why }
}

function isAscii(text: string): boolean {
  for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) > 0x7f) return false
  return true
}

/**
 * The refusal a client gets when its value was refused on link: the server's own fields, as FATAL,
 * with the detail the connector adds to a refused login, so it reads as a fresh login's refusal.
 */
export function linkRefusedError(refusal: ErrorFields, upstreamAddress: string): UpstreamRefusedError {
  const fields = new Map(refusal)
  fields.set('S', 'FATAL')
  fields.set('V', 'FATAL')
  if (!fields.has('D')) fields.set('D', `Reported to pg-vault-proxy by the upstream server at ${upstreamAddress}.`)
  return new UpstreamRefusedError(fields)
}
