/**
 * The contract between the dev Vault's core and its engines (secrets engines and auth methods),
 * modelled on Vault's logical.Backend: the core authenticates, authorizes and routes a request to
 * a mount's backend; the backend answers with data, a secret to lease, or a login to turn into a
 * token; the core builds the envelope, registers leases and issues tokens.
 */
import type { Fields } from './fields.js'
import type { Lease } from './engines/leases.js'
import type { TokenEntry } from './engines/token.js'
import type { Operation, Router } from './router.js'

export interface MountConfig {
  defaultLeaseTtlSeconds: number
  maxLeaseTtlSeconds: number
}

/** An auth mount's token_type setting (logical.TokenType); routing/router.go applies it to every login. */
export type TokenTypeSetting = 'default-service' | 'default-batch' | 'service' | 'batch'

export interface Mount {
  /** With a trailing slash; auth mounts include the `auth/` prefix: "database/", "auth/approle/". */
  path: string
  type: string
  kind: 'secret' | 'auth'
  description: string
  accessor: string
  uuid: string
  config: MountConfig
  options: Record<string, string> | null
  /** Auth mounts: which tokens logins get; secrets engines keep the default. */
  tokenType: TokenTypeSetting
  backend: Backend
}

export interface BackendRequest {
  operation: Operation
  /** Relative to the mount: "creds/app-rw". */
  path: string
  /** As requested after /v1/: "database/creds/app-rw". */
  fullPath: string
  params: Record<string, string>
  fields: Fields
  query: URLSearchParams
  /** The authenticated token; undefined on unauthenticated paths (logins, health). */
  caller: TokenEntry | undefined
  mount: Mount
  /** logical.Connection: who is asking, and the client certificate when over TLS. */
  connection: {
    remoteAddress: string
    /** undefined without TLS; null over TLS without a client certificate; else its DER. */
    clientCertificate: Buffer | null | undefined
  }
}

/** A secret the core should lease (logical.Secret). */
export interface SecretSpec {
  /** The backend's TTL; 0 = the mount default. */
  ttlSeconds: number
  /** The backend's max TTL; 0 = the mount max. */
  maxTtlSeconds: number
  renewable: boolean
  /** Kept with the lease for renewal and revocation, never shown (InternalData). */
  internal: Record<string, unknown>
}

/** A successful login the core should turn into a token (logical.Auth). */
export interface LoginSpec {
  /** The method's part of the display name; the core prefixes the mount ("approle", "kubernetes-ns-sa"). */
  displayName: string
  policies: string[]
  noDefaultPolicy: boolean
  metadata: Record<string, string>
  ttlSeconds: number
  maxTtlSeconds: number
  periodSeconds: number
  explicitMaxTtlSeconds: number
  numUses: number
  /** The role's token_type; the auth mount's token_type setting decides with it (routing/router.go). */
  tokenType?: 'default' | 'service' | 'batch'
  /** Names the identity the login maps to: one entity_id per (mount, alias). */
  aliasName: string
  /** Kept with the token for renewal (the role name), never shown. */
  internal: Record<string, unknown>
}

export interface BackendResponse {
  data?: Record<string, unknown> | null
  warnings?: string[]
  secret?: SecretSpec
  login?: LoginSpec
  /** An existing lease to report in the envelope (sys/leases/renew). */
  lease?: { id: string; ttlSeconds: number; renewable: boolean }
  /** A token that already exists (token create, renew-self): the core renders its auth block. */
  token?: { entry: TokenEntry; leaseDurationSeconds: number }
  /** logical.RespondWithStatusCode: send the envelope, without trailing newline, with this status. */
  status?: number
}

/** undefined is Go's `return nil, nil`: 204 for writes, 404 for reads and lists. */
export type BackendResult = BackendResponse | undefined

export type BackendRouter = Router<BackendRequest, BackendResult>

export interface TokenRenewal {
  ttlSeconds: number
  maxTtlSeconds: number
  periodSeconds: number
}

export interface Backend {
  readonly router: BackendRouter
  /** Paths, relative to the mount, that need no token (logins). */
  readonly unauthenticatedPaths?: readonly string[]
  /** Paths, relative to the mount, that also need `sudo` (Vault's PathsSpecial.Root); a trailing * is a prefix. */
  readonly sudoPaths?: readonly string[]
  /** Extends a secret's lease; throws to refuse. Returns the backend TTLs the core caps. */
  renewSecret?(lease: Lease, incrementSeconds: number): Promise<{ ttlSeconds: number; maxTtlSeconds: number }>
  /** Revokes a secret (drops the database user); throws to have the reaper retry. */
  revokeSecret?(lease: Lease): Promise<void>
  /** Checks a login token may be renewed and returns the TTLs its role allows now. */
  renewLogin?(token: TokenEntry): TokenRenewal | Promise<TokenRenewal>
  /** The mount is going away or the server stops: release connections and timers. */
  close?(): Promise<void>
}
