/**
 * The token_* fields every auth method role shares (sdk/helper/tokenutil): parsing them from a
 * role write, showing them on a role read, and turning them into the core's login spec.
 */
import type { LoginSpec, TokenRenewal } from './backend.js'
import type { TokenEntry } from './engines/token.js'
import { sanitizePolicies } from './engines/token.js'
import { respondError } from './envelope.js'
import type { Fields } from './fields.js'

export interface TokenParams {
  policies: string[]
  ttlSeconds: number
  maxTtlSeconds: number
  periodSeconds: number
  explicitMaxTtlSeconds: number
  numUses: number
  noDefaultPolicy: boolean
  boundCidrs: string[]
  type: string
}

export function defaultTokenParams(): TokenParams {
  return {
    policies: [],
    ttlSeconds: 0,
    maxTtlSeconds: 0,
    periodSeconds: 0,
    explicitMaxTtlSeconds: 0,
    numUses: 0,
    noDefaultPolicy: false,
    boundCidrs: [],
    type: 'default',
  }
}

/** tokenutil.ParseTokenFields, including the legacy names (policies, ttl, max_ttl, period, …). */
export function parseTokenFields(fields: Fields, current: TokenParams): TokenParams {
  const pick = <T>(names: string[], read: (name: string) => T, fallback: T): T => {
    const name = names.find((n) => fields.has(n))
    return name === undefined ? fallback : read(name)
  }
  const next: TokenParams = {
    policies: pick(['token_policies', 'policies'], (n) => fields.commaList(n), current.policies),
    ttlSeconds: pick(['token_ttl', 'ttl'], (n) => fields.durationSeconds(n), current.ttlSeconds),
    maxTtlSeconds: pick(['token_max_ttl', 'max_ttl'], (n) => fields.durationSeconds(n), current.maxTtlSeconds),
    periodSeconds: pick(['token_period', 'period'], (n) => fields.durationSeconds(n), current.periodSeconds),
    explicitMaxTtlSeconds: pick(
      ['token_explicit_max_ttl'],
      (n) => fields.durationSeconds(n),
      current.explicitMaxTtlSeconds,
    ),
    numUses: pick(['token_num_uses', 'num_uses'], (n) => fields.int(n), current.numUses),
    noDefaultPolicy: pick(['token_no_default_policy'], (n) => fields.bool(n, false), current.noDefaultPolicy),
    boundCidrs: pick(['token_bound_cidrs', 'bound_cidrs'], (n) => fields.commaList(n), current.boundCidrs),
    type: pick(['token_type'], (n) => fields.string(n), current.type),
  }
  if (next.maxTtlSeconds !== 0 && next.ttlSeconds > next.maxTtlSeconds) {
    throw respondError("'token_ttl' cannot be greater than 'token_max_ttl'")
  }
  if (next.type === '') next.type = 'default'
  if (!['default', 'service', 'batch'].includes(next.type)) {
    throw respondError(`invalid 'token_type' value ${JSON.stringify(next.type)}`)
  }
  if (next.numUses < 0) throw respondError("'token_num_uses' cannot be negative")
  if (next.type === 'batch') {
    if (next.periodSeconds !== 0) {
      throw respondError("'token_type' cannot be 'batch' or 'default_batch' when set to generate periodic tokens")
    }
    if (next.numUses !== 0) {
      throw respondError(
        "'token_type' cannot be 'batch' or 'default_batch' when set to generate tokens with limited use count",
      )
    }
  }
  return next
}

/** tokenutil.PopulateTokenData (Vault's key set): the token_* part of a role read. */
export function tokenData(params: TokenParams): Record<string, unknown> {
  return {
    token_bound_cidrs: params.boundCidrs,
    token_explicit_max_ttl: params.explicitMaxTtlSeconds,
    token_max_ttl: params.maxTtlSeconds,
    token_no_default_policy: params.noDefaultPolicy,
    token_num_uses: params.numUses,
    token_period: params.periodSeconds,
    token_policies: params.policies,
    token_ttl: params.ttlSeconds,
    token_type: params.type,
  }
}

/** tokenutil.PopulateTokenAuth: the login the core turns into a token. */
export function loginFrom(
  params: TokenParams,
  identity: {
    displayName: string
    metadata: Record<string, string>
    aliasName: string
    internal: Record<string, unknown>
  },
): LoginSpec {
  return {
    ...identity,
    policies: params.policies,
    noDefaultPolicy: params.noDefaultPolicy,
    ttlSeconds: params.ttlSeconds,
    maxTtlSeconds: params.maxTtlSeconds,
    periodSeconds: params.periodSeconds,
    explicitMaxTtlSeconds: params.explicitMaxTtlSeconds,
    numUses: params.numUses,
    tokenType: params.type as LoginSpec['tokenType'],
  }
}

/**
 * The renew handler auth methods share (pathLoginRenew): the role must still exist and grant the
 * same policies; the token then gets the role's current TTLs. Throws to refuse the renewal.
 */
export function renewalFor(roleName: string, params: TokenParams | undefined, token: TokenEntry): TokenRenewal {
  if (params === undefined) throw new Error(`role ${roleName} does not exist during renewal`)
  if (sanitizePolicies(params.policies, !params.noDefaultPolicy).join(',') !== token.policies.join(',')) {
    throw new Error('policies have changed, not renewing')
  }
  return { ttlSeconds: params.ttlSeconds, maxTtlSeconds: params.maxTtlSeconds, periodSeconds: params.periodSeconds }
}
