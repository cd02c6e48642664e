import { readFileSync } from 'node:fs'
import { noMetrics, type VaultRequestMetrics } from '../ops/metrics.js'
import { toVaultError } from './vault-error.js'
import { VaultHttp, withoutTrailingSlashes } from './vault-http.js'

export interface VaultClientOptions {
  address: string
  /** Vault Enterprise / OpenBao namespace, sent as X-Vault-Namespace. */
  namespace?: string | undefined
  /** PEM files for a private CA and for mutual TLS. */
  caCert?: string | undefined
  clientCert?: string | undefined
  clientKey?: string | undefined
  /** Disables TLS verification of Vault (warned about loudly by the caller). */
  skipVerify: boolean
  timeoutMs: number
}

/** A response that carries a secret: Vault's response envelope (api/secret.go). */
export interface VaultSecret {
  leaseId: string
  leaseDurationSeconds: number
  renewable: boolean
  data: Record<string, unknown>
  warnings: string[]
}

export interface TokenInfo {
  ttlSeconds: number
  renewable: boolean
  /** Batch tokens cannot be renewed, and leases made under one end with it. */
  type: 'service' | 'batch'
}

export interface VaultAuth {
  clientToken: string
  leaseDurationSeconds: number
  renewable: boolean
  policies: string[]
}

interface Envelope {
  lease_id?: string
  lease_duration?: number
  renewable?: boolean
  data?: Record<string, unknown> | null
  warnings?: string[] | null
  auth?: { client_token: string; lease_duration: number; renewable: boolean; policies?: string[] } | null
}

/**
 * The proxy's only door to Vault. It holds the current token (set by the VaultAuthenticator) and
 * turns every failure into a VaultError that names the path and what to do. Environment variables
 * are not read here: configuration resolves them first.
 */
export class VaultClient {
  private readonly http: VaultHttp
  private currentToken = ''
  readonly address: string

  constructor(
    options: VaultClientOptions,
    private readonly metrics: VaultRequestMetrics = noMetrics,
  ) {
    this.address = withoutTrailingSlashes(options.address)
    this.http = new VaultHttp({
      address: this.address,
      namespace: options.namespace,
      ca: options.caCert ? readFileSync(options.caCert) : undefined,
      cert: options.clientCert ? readFileSync(options.clientCert) : undefined,
      key: options.clientKey ? readFileSync(options.clientKey) : undefined,
      rejectUnauthorized: !options.skipVerify,
      timeoutMs: options.timeoutMs,
    })
  }

  set token(token: string) {
    this.currentToken = token
  }

  get hasToken(): boolean {
    return this.currentToken !== ''
  }

  async read(path: string): Promise<VaultSecret> {
    return secretOf(await this.call('GET', path))
  }

  /** A write; resolves undefined for Vault's 204 No Content. */
  async write(path: string, body: Record<string, unknown>): Promise<VaultSecret | undefined> {
    const result = await this.call('POST', path, body)
    return result ? secretOf(result) : undefined
  }

  /** POST auth/<mount>/login, without a token; the client's token is not changed here. */
  async login(mount: string, body: Record<string, unknown>): Promise<VaultAuth> {
    const path = `auth/${mount}/login`
    return authOf(path, await this.call('POST', path, body, { withToken: false }))
  }

  async lookupSelf(): Promise<TokenInfo> {
    const { data } = secretOf(await this.call('GET', 'auth/token/lookup-self'))
    return {
      ttlSeconds: Number(data.ttl ?? 0),
      renewable: data.renewable === true,
      type: data.type === 'batch' ? 'batch' : 'service',
    }
  }

  async renewSelf(incrementSeconds?: number): Promise<VaultAuth> {
    const path = 'auth/token/renew-self'
    const body = incrementSeconds ? { increment: Math.round(incrementSeconds) } : {}
    return authOf(path, await this.call('POST', path, body))
  }

  async renewLease(leaseId: string, incrementSeconds: number): Promise<VaultSecret> {
    const body = { lease_id: leaseId, increment: Math.round(incrementSeconds) }
    return secretOf(await this.call('PUT', 'sys/leases/renew', body))
  }

  async revokeLease(leaseId: string): Promise<void> {
    await this.call('PUT', 'sys/leases/revoke', { lease_id: leaseId })
  }

  /** Closes idle connections to Vault. */
  close(): void {
    this.http.close()
  }

  /** Every request passes here: `path` is a Vault path (never a lease id or a secret), the metrics label. */
  private async call(
    method: string,
    path: string,
    body?: Record<string, unknown>,
    { withToken = true } = {},
  ): Promise<Envelope | undefined> {
    const started = performance.now()
    try {
      const response = await this.http.request(method, path, {
        token: withToken ? this.currentToken : undefined,
        body,
      })
      if (response.status < 200 || response.status >= 300) {
        throw toVaultError(
          { response: { statusCode: response.status, body: response.body, headers: response.headers } },
          path,
          this.address,
        )
      }
      this.metrics.vaultRequest(path, (performance.now() - started) / 1000)
      return response.body === undefined ? undefined : (response.body as Envelope)
    } catch (err) {
      const error = toVaultError(err, path, this.address)
      this.metrics.vaultRequest(path, (performance.now() - started) / 1000, error.failure)
      throw error
    }
  }
}

function secretOf(envelope: Envelope | undefined): VaultSecret {
  return {
    leaseId: envelope?.lease_id ?? '',
    leaseDurationSeconds: envelope?.lease_duration ?? 0,
    renewable: envelope?.renewable === true,
    data: envelope?.data ?? {},
    warnings: envelope?.warnings ?? [],
  }
}

function authOf(path: string, envelope: Envelope | undefined): VaultAuth {
  const auth = envelope?.auth
  if (!auth?.client_token)
    throw toVaultError({ response: { statusCode: 500, body: { errors: ['no auth in the response'] } } }, path, '')
  return {
    clientToken: auth.client_token,
    leaseDurationSeconds: auth.lease_duration,
    renewable: auth.renewable,
    policies: auth.policies ?? [],
  }
}
