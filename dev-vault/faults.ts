/**
 * Fault switches: ways to make the dev Vault misbehave like a real one on a bad day. They are
 * not part of Vault's API; tests flip them in-process (DevVault.setFaults) or, from another
 * process, through POST /v1/sys/dev/faults (see docs/dev-vault.md).
 */

export interface Faults {
  /** Added before every answer, in milliseconds. */
  latencyMs: number
  /** Answer 500 instead of handling the request. */
  serverErrors: boolean
  /** Limits serverErrors to paths starting with one of these (after /v1/); empty = every path. */
  serverErrorPaths: string[]
  /** Stop listening: connects are refused (ECONNREFUSED) and open connections are dropped. */
  refuseConnections: boolean
  /** Every path but sys/health and sys/seal-status answers 503 "Vault is sealed"; no reaping, no rotation. */
  sealed: boolean
  /**
   * A standby node: sys/health reports it (429 unless standbyok). Its other requests are served
   * as if forwarded to the active node, unless standbyForwarding is off.
   */
  standby: boolean
  /**
   * Whether a standby forwards requests to the active node (true, the default, as Vault does) or,
   * as one whose forwarding fails or is refused, redirects them (307 to activeAddress) or, with no
   * activeAddress, answers 503 "no active Vault instance found".
   */
  standbyForwarding: boolean
  /** The active node's API address ("http://127.0.0.1:8200") a standby redirects to; "" = none known. */
  activeAddress: string
}

export function noFaults(): Faults {
  return {
    latencyMs: 0,
    serverErrors: false,
    serverErrorPaths: [],
    refuseConnections: false,
    sealed: false,
    standby: false,
    standbyForwarding: true,
    activeAddress: '',
  }
}

/** Checks a JSON body from the control path; returns the changes or a list of problems. */
export function parseFaultChanges(
  body: unknown,
): { changes: Partial<Faults>; refuseForMs: number } | { problems: string[] } {
  if (body === null || typeof body !== 'object' || Array.isArray(body))
    return { problems: ['body must be a JSON object'] }
  const input = body as Record<string, unknown>
  const changes: Partial<Faults> = {}
  const problems: string[] = []
  const known = new Set([...Object.keys(noFaults()), 'refuseConnectionsMs'])
  for (const key of Object.keys(input)) if (!known.has(key)) problems.push(`unknown fault ${JSON.stringify(key)}`)
  for (const key of ['serverErrors', 'refuseConnections', 'sealed', 'standby', 'standbyForwarding'] as const) {
    const value = input[key]
    if (value === undefined) continue
    if (typeof value !== 'boolean') problems.push(`${key} must be true or false`)
    else changes[key] = value
  }
  if (input.latencyMs !== undefined) {
    if (typeof input.latencyMs !== 'number' || input.latencyMs < 0) problems.push('latencyMs must be a number ≥ 0')
    else changes.latencyMs = input.latencyMs
  }
  if (input.serverErrorPaths !== undefined) {
    const paths = input.serverErrorPaths
    if (!Array.isArray(paths) || !paths.every((p) => typeof p === 'string'))
      problems.push('serverErrorPaths must be a list of strings')
    else changes.serverErrorPaths = paths
  }
  if (input.activeAddress !== undefined) {
    const address = input.activeAddress
    if (typeof address !== 'string' || (address !== '' && !/^https?:\/\/[^/]+\/?$/.test(address))) {
      problems.push('activeAddress must be "" or an address such as http://127.0.0.1:8200')
    } else changes.activeAddress = address
  }
  let refuseForMs = 0
  if (input.refuseConnectionsMs !== undefined) {
    // From another process the listener cannot be reopened by a request, so refusal is timed.
    if (typeof input.refuseConnectionsMs !== 'number' || input.refuseConnectionsMs <= 0) {
      problems.push('refuseConnectionsMs must be a number > 0')
    } else refuseForMs = input.refuseConnectionsMs
  }
  return problems.length > 0 ? { problems } : { changes, refuseForMs }
}
