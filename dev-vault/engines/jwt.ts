/**
 * The JWT auth method (vault-plugin-auth-jwt), for roles of role_type "jwt" validated against
 * static public keys (`jwt_validation_pubkeys`). OIDC flows, JWKS URLs and discovery need network
 * access to an identity provider and are not implemented.
 */
import type { Backend, BackendRequest, BackendResult, Mount } from '../backend.js'
import type { VaultCore } from '../core.js'
import { respondError } from '../envelope.js'
import { audiencesOf, parsePublicKey, SUPPORTED_ALGORITHMS, validateJwt } from '../jwt-validator.js'
import { addCollection } from '../collection-routes.js'
import { Router } from '../router.js'
import { defaultTokenParams, loginFrom, parseTokenFields, renewalFor, tokenData } from '../token-params.js'
import type { TokenParams } from '../token-params.js'
import { matchesGlobList } from '../glob.js'

interface JwtConfig {
  validationPubkeys: string[]
  boundIssuer: string
  supportedAlgs: string[]
  defaultRole: string
}

interface JwtRole {
  roleType: 'jwt' | 'oidc'
  boundAudiences: string[]
  boundSubject: string
  boundClaims: Record<string, unknown>
  boundClaimsType: 'string' | 'glob'
  claimMappings: Record<string, string>
  userClaim: string
  groupsClaim: string
  allowedRedirectUris: string[]
  clockSkewLeewaySeconds: number
  expirationLeewaySeconds: number
  notBeforeLeewaySeconds: number
  token: TokenParams
}

/** A claim by name, or by JSON pointer ("/a/b") for nested claims, as getClaim does. */
function claimValue(claims: Record<string, unknown>, name: string): unknown {
  if (!name.startsWith('/')) return claims[name]
  let value: unknown = claims
  for (const part of name.slice(1).split('/')) {
    if (value === null || typeof value !== 'object') return undefined
    value = (value as Record<string, unknown>)[part.replaceAll('~1', '/').replaceAll('~0', '~')]
  }
  return value
}

/** validateBoundClaims: every bound claim must be present and match one allowed value. */
function checkBoundClaims(role: JwtRole, claims: Record<string, unknown>): void {
  for (const [claim, expected] of Object.entries(role.boundClaims)) {
    const actual = claimValue(claims, claim)
    if (actual === undefined || actual === null) throw new Error(`claim ${JSON.stringify(claim)} is missing`)
    const actualValues = (Array.isArray(actual) ? actual : [actual]).map(String)
    const expectedValues = (Array.isArray(expected) ? expected : [expected]).map(String)
    const found =
      role.boundClaimsType === 'glob'
        ? actualValues.some((a) => matchesGlobList(expectedValues, a))
        : actualValues.some((a) => expectedValues.includes(a))
    if (!found) throw new Error(`claim ${JSON.stringify(claim)} does not match any associated bound claim values`)
  }
}

export function jwtBackend(core: VaultCore, mount: Mount): Backend {
  let config: JwtConfig | undefined
  const roles = new Map<string, JwtRole>()

  function writeConfig(req: BackendRequest): BackendResult {
    const f = req.fields
    const pubkeys = f.commaList('jwt_validation_pubkeys')
    const methods = [pubkeys.length > 0, f.string('jwks_url') !== '', f.string('oidc_discovery_url') !== '']
    if (methods.filter(Boolean).length !== 1) {
      throw respondError("exactly one of 'jwt_validation_pubkeys', 'jwks_url' or 'oidc_discovery_url' must be set")
    }
    if (pubkeys.length === 0) throw respondError('the dev Vault supports jwt_validation_pubkeys only')
    for (const pem of pubkeys) {
      try {
        parsePublicKey(pem)
      } catch (err) {
        throw respondError(`error parsing public key: ${(err as Error).message}`)
      }
    }
    const algs = f.commaList('jwt_supported_algs')
    const unsupported = algs.filter((a) => !(SUPPORTED_ALGORITHMS as readonly string[]).includes(a))
    if (unsupported.length > 0)
      throw respondError(`invalid jwt_supported_algs: unsupported signing algorithm "${unsupported[0]}"`)
    config = {
      validationPubkeys: pubkeys,
      boundIssuer: f.string('bound_issuer'),
      supportedAlgs: algs,
      defaultRole: f.string('default_role'),
    }
    return undefined
  }

  function writeRole(req: BackendRequest): BackendResult {
    const f = req.fields
    const name = req.params.name ?? ''
    const existing = roles.get(name)
    const roleType = f.string('role_type', existing?.roleType ?? 'oidc') || 'oidc'
    if (roleType !== 'jwt' && roleType !== 'oidc') throw respondError(`invalid 'role_type': ${roleType}`)
    const role: JwtRole = {
      ...(existing ?? {
        boundAudiences: [],
        boundSubject: '',
        boundClaims: {},
        boundClaimsType: 'string',
        claimMappings: {},
        userClaim: '',
        groupsClaim: '',
        allowedRedirectUris: [],
        clockSkewLeewaySeconds: 60,
        expirationLeewaySeconds: 150,
        notBeforeLeewaySeconds: 150,
        token: defaultTokenParams(),
      }),
      roleType,
    }
    role.token = parseTokenFields(f, role.token)
    if (f.has('bound_audiences')) role.boundAudiences = f.commaList('bound_audiences')
    role.boundSubject = f.string('bound_subject', role.boundSubject)
    if (f.has('bound_claims')) role.boundClaims = f.map('bound_claims') ?? {}
    const claimsType = f.string('bound_claims_type', role.boundClaimsType)
    if (claimsType !== 'string' && claimsType !== 'glob')
      throw respondError(`invalid 'bound_claims_type': ${claimsType}`)
    role.boundClaimsType = claimsType
    if (f.has('claim_mappings')) {
      role.claimMappings = f.stringMap('claim_mappings')
      if (Object.values(role.claimMappings).includes('role')) {
        throw respondError('metadata key "role" is reserved and may not be a mapping destination')
      }
    }
    role.userClaim = f.string('user_claim', role.userClaim)
    role.groupsClaim = f.string('groups_claim', role.groupsClaim)
    if (f.has('allowed_redirect_uris')) role.allowedRedirectUris = f.commaList('allowed_redirect_uris')
    role.clockSkewLeewaySeconds = f.durationSeconds('clock_skew_leeway', role.clockSkewLeewaySeconds)
    role.expirationLeewaySeconds = f.durationSeconds('expiration_leeway', role.expirationLeewaySeconds)
    role.notBeforeLeewaySeconds = f.durationSeconds('not_before_leeway', role.notBeforeLeewaySeconds)
    if (role.userClaim === '') throw respondError('a user claim must be defined on the role')
    if (role.roleType === 'oidc' && role.allowedRedirectUris.length === 0) {
      throw respondError("'allowed_redirect_uris' must be set if 'role_type' is 'oidc' or unspecified.")
    }
    const hasConstraint =
      role.boundAudiences.length > 0 ||
      role.token.boundCidrs.length > 0 ||
      role.boundSubject !== '' ||
      Object.keys(role.boundClaims).length > 0
    if (role.roleType !== 'oidc' && !hasConstraint) {
      throw respondError('must have at least one bound constraint when creating/updating a role')
    }
    roles.set(name, role)
    if (role.token.maxTtlSeconds > mount.config.maxLeaseTtlSeconds) {
      return {
        warnings: [
          "token max ttl is greater than the system or backend mount's maximum TTL value; issued tokens' max TTL value will be truncated",
        ],
      }
    }
    return undefined
  }

  function login(req: BackendRequest): BackendResult {
    if (config === undefined) throw respondError('could not load configuration')
    const roleName = req.fields.string('role') || config.defaultRole
    if (roleName === '') throw respondError('missing role')
    const role = roles.get(roleName)
    if (role === undefined) throw respondError(`role ${JSON.stringify(roleName)} could not be found`)
    if (role.roleType === 'oidc') throw respondError('role with oidc role_type is not allowed')
    const token = req.fields.string('jwt')
    if (token === '') throw respondError('missing token')

    let claims: Record<string, unknown>
    try {
      claims = validateJwt(
        token,
        config.validationPubkeys.map(parsePublicKey),
        {
          issuer: config.boundIssuer || undefined,
          subject: role.boundSubject || undefined,
          audiences: role.boundAudiences,
          algorithms: config.supportedAlgs.length > 0 ? config.supportedAlgs : SUPPORTED_ALGORITHMS,
          clockSkewLeewaySeconds: role.clockSkewLeewaySeconds,
          expirationLeewaySeconds: role.expirationLeewaySeconds,
          notBeforeLeewaySeconds: role.notBeforeLeewaySeconds,
        },
        core.now(),
      )
    } catch (err) {
      throw respondError(`error validating token: ${(err as Error).message}`)
    }
    if (audiencesOf(claims).length > 0 && role.boundAudiences.length === 0) {
      throw respondError('audience claim found in JWT but no audiences bound to the role')
    }
    const user = claims[role.userClaim]
    if (user === undefined || user === null)
      throw respondError(`claim ${JSON.stringify(role.userClaim)} not found in token`)
    if (typeof user !== 'string')
      throw respondError(`claim ${JSON.stringify(role.userClaim)} could not be converted to string`)
    try {
      checkBoundClaims(role, claims)
    } catch (err) {
      throw respondError(`error validating claims: ${(err as Error).message}`)
    }

    const metadata: Record<string, string> = { role: roleName }
    for (const [claim, key] of Object.entries(role.claimMappings)) {
      const value = claimValue(claims, claim)
      if (value !== undefined && value !== null)
        metadata[key] = typeof value === 'string' ? value : JSON.stringify(value)
    }
    return {
      login: loginFrom(role.token, { displayName: user, metadata, aliasName: user, internal: { role: roleName } }),
    }
  }

  function roleData(role: JwtRole): Record<string, unknown> {
    return {
      allowed_redirect_uris: role.allowedRedirectUris,
      bound_audiences: role.boundAudiences,
      bound_claims: Object.keys(role.boundClaims).length > 0 ? role.boundClaims : null,
      bound_claims_type: role.boundClaimsType,
      bound_subject: role.boundSubject,
      claim_mappings: Object.keys(role.claimMappings).length > 0 ? role.claimMappings : null,
      clock_skew_leeway: role.clockSkewLeewaySeconds,
      expiration_leeway: role.expirationLeewaySeconds,
      groups_claim: role.groupsClaim,
      not_before_leeway: role.notBeforeLeewaySeconds,
      role_type: role.roleType,
      user_claim: role.userClaim,
      ...tokenData(role.token),
    }
  }

  const router = new Router<BackendRequest, BackendResult>().add('login', { write: login }).add('config', {
    read: () =>
      config === undefined
        ? undefined
        : {
            data: {
              bound_issuer: config.boundIssuer,
              default_role: config.defaultRole,
              jwks_ca_pem: '',
              jwks_url: '',
              jwt_supported_algs: config.supportedAlgs,
              jwt_validation_pubkeys: config.validationPubkeys,
              oidc_client_id: '',
              oidc_discovery_ca_pem: '',
              oidc_discovery_url: '',
            },
          },
    write: writeConfig,
  })
  addCollection(router, 'role', roles, {
    read: (req) => {
      const role = roles.get(req.params.name ?? '')
      return role === undefined ? undefined : { data: roleData(role) }
    },
    write: writeRole,
  })

  return {
    router,
    unauthenticatedPaths: ['login'],
    renewLogin: (token) =>
      renewalFor(String(token.internal.role), roles.get(String(token.internal.role))?.token, token),
  }
}
