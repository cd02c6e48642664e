/**
 * Vault's HTTP bodies: the success envelope (Go's logical.HTTPResponse, fields in struct order),
 * the auth block (logical.HTTPAuth) and the `{"errors":[…]}` error body, encoded the way Go's
 * json.Encoder does it (map keys sorted, HTML characters escaped, a trailing newline).
 */

/** An error that ends a request with a Vault error body. */
export class VaultError extends Error {
  override name = 'VaultError'
  constructor(
    readonly status: number,
    readonly errors: readonly string[],
  ) {
    super(errors.join('; ') || `status ${status}`)
  }
}

/** A handler returned `logical.ErrorResponse(...)`: the text goes out unwrapped, 400 unless coded. */
export function respondError(message: string, status = 400): VaultError {
  return new VaultError(status, [message])
}

/** A handler returned a plain Go error: core wraps it with go-multierror, 500 unless coded. */
export function goError(message: string, status = 500): VaultError {
  return new VaultError(status, [multierrorText([message])])
}

/** go-multierror's ListFormatFunc. */
export function multierrorText(messages: readonly string[]): string {
  const head = messages.length === 1 ? '1 error occurred:' : `${messages.length} errors occurred:`
  return `${head}\n\t${messages.map((m) => `* ${m}`).join('\n\t')}\n\n`
}

/** A read or list that found nothing: 404 with an empty errors list. */
export function notFound(): VaultError {
  return new VaultError(404, [])
}

/** logical.HTTPAuth, in Go field order; token_policies/identity_policies are omitempty. */
export interface HttpAuth {
  client_token: string
  accessor: string
  policies: string[]
  token_policies?: string[]
  metadata: Record<string, string> | null
  lease_duration: number
  renewable: boolean
  entity_id: string
  token_type: string
  orphan: boolean
  mfa_requirement: null
  num_uses: number
}

export interface EnvelopeFields {
  requestId: string
  leaseId?: string
  renewable?: boolean
  leaseDurationSeconds?: number
  data?: Record<string, unknown> | null
  warnings?: readonly string[]
  auth?: HttpAuth | null
  /** Vault only: the type of the mount that answered; undefined leaves the field out (OpenBao). */
  mountType: string | undefined
}

/** The success body of every logical endpoint, in logical.HTTPResponse field order. */
export function envelope(fields: EnvelopeFields): Record<string, unknown> {
  return goStruct({
    request_id: fields.requestId,
    lease_id: fields.leaseId ?? '',
    renewable: fields.renewable ?? false,
    lease_duration: fields.leaseDurationSeconds ?? 0,
    data: fields.data ?? null,
    wrap_info: null,
    // A Go nil slice: never [], always null when there is nothing to say.
    warnings: fields.warnings !== undefined && fields.warnings.length > 0 ? [...fields.warnings] : null,
    auth: fields.auth ? goStruct(fields.auth) : null,
    mount_type: fields.mountType,
  })
}

export function errorBody(errors: readonly string[]): string {
  return encodeJson(goStruct({ errors }))
}

const STRUCT = Symbol('go struct')

/**
 * Marks an object as a Go struct: its fields are encoded in insertion order. Every other object is
 * a Go map, whose keys encoding/json sorts (bytewise, so "10" before "2", unlike a JS object).
 */
export function goStruct<T extends object>(value: T): T {
  Object.defineProperty(value, STRUCT, { value: true, enumerable: false })
  return value
}

/** JSON as Go's json.Encoder writes it, with its trailing newline. */
export function encodeJson(value: unknown): string {
  return marshalJson(value) + '\n'
}

/** JSON as Go's json.Marshal writes it (logical.RespondWithStatusCode bodies have no newline). */
export function marshalJson(value: unknown): string {
  if (value === null || value === undefined) return 'null'
  if (typeof value === 'string') return escapeHtml(JSON.stringify(value))
  if (typeof value === 'number' || typeof value === 'boolean') return JSON.stringify(value)
  if (Array.isArray(value)) return `[${value.map((v: unknown) => marshalJson(v)).join(',')}]`
  if (typeof value === 'object') {
    const record = value as Record<string | symbol, unknown>
    const keys = Object.keys(record).filter((k) => record[k] !== undefined)
    if (record[STRUCT] !== true) keys.sort(compareBytes)
    return `{${keys.map((k) => `${escapeHtml(JSON.stringify(k))}:${marshalJson(record[k])}`).join(',')}}`
  }
  throw new TypeError(`cannot encode ${typeof value} as JSON`)
}

function compareBytes(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b))
}

/** Go escapes <, > and & (and U+2028/9) inside JSON strings by default. */
function escapeHtml(json: string): string {
  return json.replace(/[<>&\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
}
