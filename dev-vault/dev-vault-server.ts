/**
 * DevVault: the dev Vault as a server. It owns the HTTP listener, the fault switches and the
 * non-Vault control path /v1/sys/dev/faults, and hands every other request to the core.
 *
 *   const vault = new DevVault()
 *   await vault.start()            // a free port on 127.0.0.1; root token "root"
 *   vault.address                  // http://127.0.0.1:<port>
 *   await vault.setFaults({ sealed: true })
 *   await vault.stop()
 */
import { setTimeout as delay } from 'node:timers/promises'
import { VaultCore } from './core.js'
import { encodeJson, errorBody, goStruct, multierrorText } from './envelope.js'
import type { Faults } from './faults.js'
import { DEFAULT_FLAVOR, flavorNamed } from './flavor.js'
import type { FlavorName } from './flavor.js'
import { noFaults, parseFaultChanges } from './faults.js'
import { Http1Server } from './http1-server.js'
import { SYSTEM_DEFAULT_TTL_SECONDS, SYSTEM_MAX_TTL_SECONDS } from './ttl.js'
import type { HttpRequest, HttpResponse, TlsIdentity } from './http1-server.js'

export interface DevVaultOptions {
  /** The root token's id, as `vault server -dev -dev-root-token-id`. Default "root". */
  rootToken?: string
  /** Default 127.0.0.1. */
  host?: string
  /** Whose texts and fields to answer with: `vault-1.17` (the default), `vault-1.16` or `openbao` (flavor.ts). */
  flavor?: FlavorName
  /**
   * The server's default_lease_ttl and max_lease_ttl in seconds, as in Vault's server config:
   * what mounts that were not tuned use. Default 768h each, as in Vault.
   */
  defaultLeaseTtlSeconds?: number
  maxLeaseTtlSeconds?: number
  /**
   * Answer as a Vault Agent (or Vault Proxy) listener with `require_request_header = true` does:
   * 412 `missing "X-Vault-Request" header` unless the request has `X-Vault-Request: true`.
   */
  requireRequestHeader?: boolean
  /**
   * Listen with TLS (PEM certificate and key); `address` is then https://. Clients are asked for a
   * certificate, as Vault's listener does, for the cert auth method.
   */
  tls?: TlsIdentity
  /** How often expired leases and tokens are looked for. Default 250 ms. */
  reaperIntervalMs?: number
  /** Base of the backoff between failed revocations. Default 10 s, as in Vault. */
  revokeRetryBaseMs?: number
  /** How often static roles are checked for rotation. Default 5 s, as in Vault. */
  rotationTickMs?: number
  /** Where background problems (failed revocations and rotations) are reported. Default: nowhere. */
  log?: (line: string) => void
}

/** The control path for the fault switches; not part of Vault's API. */
export const FAULTS_PATH = '/v1/sys/dev/faults'

export class DevVault {
  readonly rootToken: string
  private readonly host: string
  private readonly requireRequestHeader: boolean
  private readonly scheme: 'http' | 'https'
  private readonly core: VaultCore
  private readonly http: Http1Server
  private current: Faults = noFaults()
  private port = 0
  private reopenTimer: NodeJS.Timeout | undefined

  constructor(options: DevVaultOptions = {}) {
    this.rootToken = options.rootToken ?? 'root'
    this.host = options.host ?? '127.0.0.1'
    this.requireRequestHeader = options.requireRequestHeader ?? false
    this.scheme = options.tls ? 'https' : 'http'
    const systemTtls = {
      defaultLeaseTtlSeconds: options.defaultLeaseTtlSeconds || SYSTEM_DEFAULT_TTL_SECONDS,
      maxLeaseTtlSeconds: options.maxLeaseTtlSeconds || SYSTEM_MAX_TTL_SECONDS,
    }
    // vault/core.go refuses the same configuration at startup.
    if (systemTtls.defaultLeaseTtlSeconds > systemTtls.maxLeaseTtlSeconds) {
      throw new Error(
        `default_lease_ttl (${systemTtls.defaultLeaseTtlSeconds} s) cannot be greater than max_lease_ttl (${systemTtls.maxLeaseTtlSeconds} s)`,
      )
    }
    this.core = new VaultCore({
      rootToken: this.rootToken,
      flavor: flavorNamed(options.flavor ?? DEFAULT_FLAVOR),
      systemTtls,
      reaperIntervalMs: options.reaperIntervalMs ?? 250,
      revokeRetryBaseMs: options.revokeRetryBaseMs ?? 10_000,
      rotationTickMs: options.rotationTickMs ?? 5_000,
      log: options.log ?? (() => undefined),
    })
    this.http = new Http1Server((request) => this.handle(request), options.tls)
  }

  /** Listens on `port` (0, the default, picks a free one). */
  async start(port = 0): Promise<void> {
    this.port = await this.http.listen(port, this.host)
  }

  /** Closes the listener and every connection, then the database connection pools. */
  async stop(): Promise<void> {
    clearTimeout(this.reopenTimer)
    await this.http.close()
    await this.core.close()
  }

  get flavor(): FlavorName {
    return this.core.flavor.name
  }

  get address(): string {
    return `${this.scheme}://${this.host}:${this.port}`
  }

  get faults(): Readonly<Faults> {
    return { ...this.current, serverErrorPaths: [...this.current.serverErrorPaths] }
  }

  /** Changes some fault switches and returns them all. */
  async setFaults(changes: Partial<Faults>): Promise<Faults> {
    const next = { ...this.current, ...changes }
    if (next.refuseConnections !== this.current.refuseConnections) {
      if (next.refuseConnections) await this.http.close()
      else await this.http.listen(this.port, this.host)
    }
    if (!next.refuseConnections) clearTimeout(this.reopenTimer)
    this.current = next
    this.core.sealed = next.sealed
    this.core.standby = next.standby
    this.core.standbyForwarding = next.standbyForwarding
    this.core.activeAddress = next.activeAddress
    return this.faults
  }

  async resetFaults(): Promise<Faults> {
    return this.setFaults(noFaults())
  }

  private async handle(request: HttpRequest): Promise<HttpResponse> {
    const path = request.target.split('?')[0]
    if (path === FAULTS_PATH) return this.controlPath(request)
    // command/agent.go verifyRequestHeader: one X-Vault-Request header whose value is "true"
    // (repeated headers arrive joined, so two of them fail here too), on every path.
    if (this.requireRequestHeader && request.headers['x-vault-request'] !== 'true') {
      return {
        status: 412,
        headers: { 'Content-Type': 'application/json' },
        body: errorBody(['missing "X-Vault-Request" header']),
      }
    }

    const faults = this.current
    if (faults.latencyMs > 0) await delay(faults.latencyMs)
    const apiPath = (path ?? '').replace(/^\/v1\//, '')
    const failsHere = faults.serverErrorPaths.length === 0 || faults.serverErrorPaths.some((p) => apiPath.startsWith(p))
    if (faults.serverErrors && failsHere) {
      return {
        status: 500,
        headers: { 'Cache-Control': 'no-store', 'Content-Type': 'application/json' },
        body: errorBody([multierrorText(['internal error (injected by the dev Vault fault switch serverErrors)'])]),
      }
    }
    return this.core.handle({
      method: request.method,
      url: request.target,
      headers: request.headers,
      body: request.body.toString('utf8'),
      remoteAddress: request.remoteAddress,
      clientCertificate: request.clientCertificate,
    })
  }

  /** GET shows the switches; POST/PUT changes them. Needs the root token, even while sealed. */
  private async controlPath(request: HttpRequest): Promise<HttpResponse> {
    const headers = { 'Cache-Control': 'no-store', 'Content-Type': 'application/json' }
    if (request.headers['x-vault-token'] !== this.rootToken) {
      return { status: 403, headers, body: errorBody(['permission denied']) }
    }
    if (request.method === 'GET') return { status: 200, headers, body: encodeJson(goStruct(this.faults)) }
    if (request.method !== 'POST' && request.method !== 'PUT') return { status: 405, headers, body: errorBody([]) }

    let body: unknown
    try {
      body = JSON.parse(request.body.toString('utf8') || '{}')
    } catch (err) {
      return { status: 400, headers, body: errorBody([`failed to parse JSON input: ${(err as Error).message}`]) }
    }
    const parsed = parseFaultChanges(body)
    if ('problems' in parsed) return { status: 400, headers, body: errorBody(parsed.problems) }
    const faults = await this.setFaults(parsed.changes)
    if (parsed.refuseForMs > 0) {
      // Answer first, then stop listening; reopen on the same port when the time is up.
      setImmediate(() => void this.setFaults({ refuseConnections: true }))
      clearTimeout(this.reopenTimer)
      this.reopenTimer = setTimeout(() => void this.setFaults({ refuseConnections: false }), parsed.refuseForMs)
      this.reopenTimer.unref()
    }
    return { status: 200, headers, body: encodeJson(goStruct(faults)) }
  }
}
