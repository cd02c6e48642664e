/**
 * Which server the dev Vault answers as. The three differ in texts and fields a client may see,
 * not in behaviour; docs/dev-vault.md names the source of every difference.
 *
 * - `vault-1.17`: HashiCorp Vault 1.17 and later (the dev Vault reports 1.19.0, whose texts it
 *   follows). An unknown, expired or revoked token gets two errors, "permission denied" and
 *   "invalid token" (hashicorp/vault PR #25953, changelog/25953.txt, first released in 1.17.0).
 * - `vault-1.16`: Vault up to 1.16: the same server, but an invalid token gets a bare
 *   "permission denied".
 * - `openbao`: OpenBao 2.x (a fork of Vault 1.14): a bare "permission denied", no `mount_type` in
 *   response envelopes (sdk/logical/translate_response.go HTTPResponse has no such field), a
 *   shorter sys/health body (internal/http/sys_health.go), `path` in lease lookups
 *   (internal/vault/logical_system.go handleLeaseLookup), and no legacy sys/renew and sys/revoke
 *   paths (internal/vault/logical_system_paths.go registers leases/renew and leases/revoke only).
 */

export const FLAVOR_NAMES = ['vault-1.17', 'vault-1.16', 'openbao'] as const
export type FlavorName = (typeof FLAVOR_NAMES)[number]

export interface Flavor {
  readonly name: FlavorName
  /** `version` in sys/health and sys/seal-status. */
  readonly version: string
  /** Suffix of a builtin plugin's running_plugin_version in mount reads. */
  readonly builtinSuffix: string
  /** The messages of the 403 for a token the server does not know (before go-multierror formatting). */
  readonly invalidTokenMessages: readonly string[]
  /** Whether response envelopes end with `mount_type`. */
  readonly hasMountType: boolean
  /** Whether sys/leases/lookup shows the lease's `path`. */
  readonly leaseLookupHasPath: boolean
  /** Whether the pre-0.8 lease paths sys/renew and sys/revoke still exist. */
  readonly hasLegacyLeasePaths: boolean
  /** Which sys/health body: Vault's (with performance_standby, enterprise, …) or OpenBao's. */
  readonly healthBody: 'vault' | 'openbao'
}

const FLAVORS: Record<FlavorName, Flavor> = {
  'vault-1.17': {
    name: 'vault-1.17',
    version: '1.19.0',
    builtinSuffix: '+builtin.vault',
    invalidTokenMessages: ['permission denied', 'invalid token'],
    hasMountType: true,
    leaseLookupHasPath: false,
    hasLegacyLeasePaths: true,
    healthBody: 'vault',
  },
  'vault-1.16': {
    name: 'vault-1.16',
    version: '1.16.3',
    builtinSuffix: '+builtin.vault',
    invalidTokenMessages: ['permission denied'],
    hasMountType: true,
    leaseLookupHasPath: false,
    hasLegacyLeasePaths: true,
    healthBody: 'vault',
  },
  openbao: {
    name: 'openbao',
    version: '2.4.1',
    builtinSuffix: '+builtin.bao',
    invalidTokenMessages: ['permission denied'],
    hasMountType: false,
    leaseLookupHasPath: true,
    hasLegacyLeasePaths: false,
    healthBody: 'openbao',
  },
}

export const DEFAULT_FLAVOR: FlavorName = 'vault-1.17'

export function isFlavorName(name: string): name is FlavorName {
  return (FLAVOR_NAMES as readonly string[]).includes(name)
}

/** The flavor called `name`; throws with the valid names when there is none. */
export function flavorNamed(name: string): Flavor {
  if (!isFlavorName(name)) {
    throw new Error(`unknown dev Vault flavor ${JSON.stringify(name)}; use one of ${FLAVOR_NAMES.join(', ')}`)
  }
  return FLAVORS[name]
}
