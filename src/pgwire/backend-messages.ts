import { BackendCode, type TransactionStatus } from './codes.js'

// Encoders for the backend messages the proxy itself sends to clients, and a bounded decoder for
// ErrorResponse/NoticeResponse fields. pg-protocol only serializes frontend messages, so these are ours.

/** A whole backend message: type byte, length, body. */
export function encodeMessage(code: number, body: Buffer): Buffer {
  const out = Buffer.allocUnsafe(5 + body.length)
  out[0] = code
  out.writeUInt32BE(4 + body.length, 1)
  body.copy(out, 5)
  return out
}

function cstring(value: string): Buffer {
  return Buffer.from(`${value}\0`, 'utf8')
}

/**
 * A ParameterStatus body: the name and value, each NUL-terminated; undefined when either
 * terminator is missing.
 */
export function decodeParameterStatus(body: Buffer): [name: string, value: string] | undefined {
  const nameEnd = body.indexOf(0)
  const valueEnd = nameEnd < 0 ? -1 : body.indexOf(0, nameEnd + 1)
  if (valueEnd < 0) return undefined
  return [body.toString('utf8', 0, nameEnd), body.toString('utf8', nameEnd + 1, valueEnd)]
}

export function encodeAuthenticationOk(): Buffer {
  const body = Buffer.alloc(4) // code 0
  return encodeMessage(BackendCode.Authentication, body)
}

export function encodeParameterStatus(name: string, value: string): Buffer {
  return encodeMessage(BackendCode.ParameterStatus, Buffer.concat([cstring(name), cstring(value)]))
}

export function encodeBackendKeyData(processId: number, secretKey: Buffer): Buffer {
  const body = Buffer.allocUnsafe(4 + secretKey.length)
  body.writeUInt32BE(processId, 0)
  secretKey.copy(body, 4)
  return encodeMessage(BackendCode.BackendKeyData, body)
}

export function encodeReadyForQuery(status: TransactionStatus): Buffer {
  return encodeMessage(BackendCode.ReadyForQuery, Buffer.from(status, 'latin1'))
}

/** What a client is sent once its session is ready (protocol docs, "Start-up"). */
export interface Greeting {
  /** NegotiateProtocolVersion, when the client asked for a newer minor version or unknown options. */
  negotiate?: Buffer | undefined
  parameters: ReadonlyMap<string, string>
  processId: number
  secretKey: Buffer
  /** Whole NoticeResponse messages the server sent during the login. */
  notices: readonly Buffer[]
  status: TransactionStatus
}

/**
 * AuthenticationOk, the ParameterStatus set, BackendKeyData, any notices and ReadyForQuery, in
 * one buffer written in one call: a new connection per request makes this the proxy's most
 * frequent message, so it is not built from a buffer per message and a concat.
 */
export function encodeGreeting(greeting: Greeting): Buffer {
  const { negotiate, parameters, secretKey, notices } = greeting
  let size = (negotiate?.length ?? 0) + 9 + 9 + secretKey.length + 6
  for (const [name, value] of parameters) size += 7 + Buffer.byteLength(name) + Buffer.byteLength(value)
  for (const notice of notices) size += notice.length
  const out = Buffer.allocUnsafe(size)
  let at = negotiate ? negotiate.copy(out, 0) : 0
  out[at] = BackendCode.Authentication
  out.writeUInt32BE(8, at + 1)
  out.writeUInt32BE(0, at + 5)
  at += 9
  for (const [name, value] of parameters) {
    const start = at
    out[at] = BackendCode.ParameterStatus
    at += 5
    at += out.write(name, at, 'utf8')
    out[at++] = 0
    at += out.write(value, at, 'utf8')
    out[at++] = 0
    out.writeUInt32BE(at - start - 1, start + 1)
  }
  out[at] = BackendCode.BackendKeyData
  out.writeUInt32BE(8 + secretKey.length, at + 1)
  out.writeUInt32BE(greeting.processId, at + 5)
  at += 9 + secretKey.copy(out, at + 9)
  for (const notice of notices) at += notice.copy(out, at)
  out[at] = BackendCode.ReadyForQuery
  out.writeUInt32BE(5, at + 1)
  out.write(greeting.status, at + 5, 'latin1')
  return out
}

/** NegotiateProtocolVersion: the newest minor version we speak and the `_pq_.` options we did not recognise. */
export function encodeNegotiateProtocolVersion(minorVersion: number, unrecognisedOptions: readonly string[]): Buffer {
  const head = Buffer.allocUnsafe(8)
  head.writeUInt32BE((3 << 16) | minorVersion, 0)
  head.writeUInt32BE(unrecognisedOptions.length, 4)
  return encodeMessage(BackendCode.NegotiateProtocolVersion, Buffer.concat([head, ...unrecognisedOptions.map(cstring)]))
}

/**
 * Error and notice fields by their one-letter codes (protocol docs, "Error and Notice Message Fields"):
 * S severity, V severity (not localised), C SQLSTATE, M message, D detail, H hint, R routine, ...
 */
export type ErrorFields = Map<string, string>

export interface ProxyErrorFields {
  severity: 'ERROR' | 'FATAL'
  sqlState: string
  message: string
  detail?: string | undefined
  hint?: string | undefined
}

export function errorFields(error: ProxyErrorFields): ErrorFields {
  const fields: ErrorFields = new Map([
    ['S', error.severity],
    ['V', error.severity],
    ['C', error.sqlState],
    ['M', error.message],
  ])
  if (error.detail !== undefined) fields.set('D', error.detail)
  if (error.hint !== undefined) fields.set('H', error.hint)
  return fields
}

export function encodeErrorResponse(fields: ErrorFields): Buffer {
  return encodeMessage(BackendCode.ErrorResponse, encodeFields(fields))
}

export function encodeNoticeResponse(fields: ErrorFields): Buffer {
  return encodeMessage(BackendCode.NoticeResponse, encodeFields(fields))
}

function encodeFields(fields: ErrorFields): Buffer {
  const parts: Buffer[] = []
  for (const [code, value] of fields) parts.push(Buffer.from(code, 'latin1'), cstring(value))
  parts.push(Buffer.from([0]))
  return Buffer.concat(parts)
}

/**
 * Decodes ErrorResponse/NoticeResponse fields from an untrusted peer. Field order and unknown fields are
 * kept, so a relayed error stays as the server sent it. Never assume `C` exists (pgbouncer CVE-2026-6666).
 */
export function decodeErrorFields(body: Buffer): ErrorFields {
  const fields: ErrorFields = new Map()
  let offset = 0
  while (offset < body.length && body[offset] !== 0) {
    const code = String.fromCharCode(body[offset] as number)
    const end = body.indexOf(0, offset + 1)
    if (end < 0) break // unterminated field: keep what was well formed
    fields.set(code, body.toString('utf8', offset + 1, end))
    offset = end + 1
  }
  return fields
}
