import { readFileSync } from 'node:fs'
import nodeVault from 'node-vault'
import { noMetrics, type VaultRequestMetrics } from '../ops/metrics.js'
import { toVaultError } from './vault-error.js'

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

/** A response that carries a secret, as the envelope of shared/vault-api.md §1.1 gives it. */
export interface VaultSecret {
  leaseId: string
  leaseDurationSeconds: number
  renewable: boolean
  data: Record<string, unknown>
  warnings: string[]
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
 * The proxy's only door to Vault, on node-vault. It holds the current token (set by the
 * VaultAuthenticator) and turns every failure into a VaultError that names the path and what to do.
 * Environment variables are not read here: configuration resolves them first.
 */
export class VaultClient {
  private readonly vault: nodeVault.client
  readonly address: string

  constructor(
    options: VaultClientOptions,
    private readonly metrics: VaultRequestMetrics = noMetrics,
  ) {
    this.address = withoutTrailingSlashes(options.address)
    const tls: Record<string, Buffer> = {}
    if (options.caCert) tls.ca = readFileSync(options.caCert)
    if (options.clientCert) tls.cert = readFileSync(options.clientCert)
    if (options.clientKey) tls.key = readFileSync(options.clientKey)
    this.vault = nodeVault({
      endpoint: this.address,
      namespace: options.namespace,
      // No `headers` here: node-vault would cache the first token in a shared headers object (§7.1).
      requestOptions: { timeout: options.timeoutMs, ...tls },
      // Overrides node-vault's own reading of VAULT_SKIP_VERIFY, where even "false" disables checks.
      rpDefaults: { strictSSL: !options.skipVerify, timeout: options.timeoutMs },
    } as nodeVault.VaultOptions)
    // node-vault falls back to VAULT_TOKEN itself; the authenticator decides which token is used.
    this.vault.token = ''
  }

  set token(token: string) {
    this.vault.token = token
  }

  get hasToken(): boolean {
    return this.vault.token !== ''
  }

  async read(path: string): Promise<VaultSecret> {
    return secretOf(await this.call(path, () => this.vault.read(path)))
  }

  /** A write; resolves undefined for Vault's 204 No Content. */
  async write(path: string, body: Record<string, unknown>): Promise<VaultSecret | undefined> {
    const result = await this.call(path, () => this.vault.write(path, body))
    return result ? secretOf(result) : undefined
  }

  /** POST auth/<mount>/login; the token is not changed here. */
  async login(mount: string, body: Record<string, unknown>): Promise<VaultAuth> {
    const path = `auth/${mount}/login`
    return authOf(path, await this.call(path, () => this.vault.write(path, body)))
  }

  async lookupSelf(): Promise<{ ttlSeconds: number; renewable: boolean }> {
    const { data } = secretOf(await this.call('auth/token/lookup-self', () => this.vault.tokenLookupSelf()))
    return { ttlSeconds: Number(data.ttl ?? 0), renewable: data.renewable === true }
  }

  async renewSelf(incrementSeconds?: number): Promise<VaultAuth> {
    const path = 'auth/token/renew-self'
    const body = incrementSeconds ? { increment: incrementSeconds } : {}
    return authOf(path, await this.call(path, () => this.vault.write(path, body)))
  }

  async renewLease(leaseId: string, incrementSeconds: number): Promise<VaultSecret> {
    // node-vault's schema wants an integer increment (§7.3).
    const result = await this.call('sys/leases/renew', () =>
      this.vault.renew({ lease_id: leaseId, increment: Math.round(incrementSeconds) }),
    )
    return secretOf(result)
  }

  async revokeLease(leaseId: string): Promise<void> {
    await this.call('sys/leases/revoke', () => this.vault.revoke({ lease_id: leaseId }))
  }

  /** Every request passes here: `path` is a Vault path (never a lease id or a secret), the metrics label. */
  private async call(path: string, request: () => Promise<unknown>): Promise<Envelope | undefined> {
    const started = performance.now()
    try {
      const result: unknown = await request()
      this.metrics.vaultRequest(path, (performance.now() - started) / 1000)
      return result === '' || result === undefined ? undefined : (result as Envelope)
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

/** The text without the slashes at its end (one pass back from the end; a regex here could take quadratic time). */
function withoutTrailingSlashes(text: string): string {
  let end = text.length
  while (end > 0 && text[end - 1] === '/') end--
  return text.slice(0, end)
}
