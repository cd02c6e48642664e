/**
 * The AppRole auth method (builtin/credential/approle): roles with a role_id, secret_ids with
 * optional TTL and use limits, and login, which gives the core a service token to issue.
 */
import type { Backend, BackendRequest, BackendResult, Mount } from '../backend.js'
import type { VaultCore } from '../core.js'
import { respondError } from '../envelope.js'
import { newUuid } from '../ids.js'
import { addCollection } from '../collection-routes.js'
import { Router } from '../router.js'
import { rfc3339Nano } from '../time-format.js'
import { defaultTokenParams, loginFrom, parseTokenFields, renewalFor, tokenData } from '../token-params.js'
import type { TokenParams } from '../token-params.js'

interface AppRole {
  name: string
  roleId: string
  bindSecretId: boolean
  secretIdBoundCidrs: string[]
  secretIdNumUses: number
  secretIdTtlSeconds: number
  token: TokenParams
}

interface SecretIdEntry {
  accessor: string
  numUses: number
  ttlSeconds: number
  creationMs: number
  metadata: Record<string, string>
  cidrList: string[]
}

export function approleBackend(core: VaultCore, mount: Mount): Backend {
  const roles = new Map<string, AppRole>()
  /** role name → secret_id → entry */
  const secretIds = new Map<string, Map<string, SecretIdEntry>>()

  const roleOf = (req: BackendRequest): AppRole | undefined => roles.get((req.params.name ?? '').toLowerCase())
  const requireRole = (req: BackendRequest): AppRole => {
    const role = roleOf(req)
    if (role === undefined) throw respondError(`role ${JSON.stringify(req.params.name)} does not exist`, 404)
    return role
  }

  function writeRole(req: BackendRequest): BackendResult {
    const name = (req.params.name ?? '').toLowerCase()
    const f = req.fields
    const existing = roles.get(name)
    const role: AppRole = existing
      ? { ...existing }
      : {
          name,
          roleId: newUuid(),
          bindSecretId: true,
          secretIdBoundCidrs: [],
          secretIdNumUses: 0,
          secretIdTtlSeconds: 0,
          token: defaultTokenParams(),
        }
    role.token = parseTokenFields(f, role.token)
    if (f.has('role_id')) role.roleId = f.string('role_id')
    if (role.roleId === '') throw respondError('invalid role_id supplied, or failed to generate a role_id')
    role.bindSecretId = f.bool('bind_secret_id', role.bindSecretId)
    if (f.has('secret_id_bound_cidrs') || f.has('bound_cidr_list')) {
      role.secretIdBoundCidrs = f.commaList(
        f.has('secret_id_bound_cidrs') ? 'secret_id_bound_cidrs' : 'bound_cidr_list',
      )
    }
    role.secretIdNumUses = f.int('secret_id_num_uses', role.secretIdNumUses)
    if (role.secretIdNumUses < 0) throw respondError('secret_id_num_uses cannot be negative')
    role.secretIdTtlSeconds = f.durationSeconds('secret_id_ttl', role.secretIdTtlSeconds)
    if (!role.bindSecretId && role.secretIdBoundCidrs.length === 0 && role.token.boundCidrs.length === 0) {
      throw respondError('at least one constraint should be enabled on the role')
    }
    for (const [otherName, other] of roles) {
      if (other.roleId === role.roleId && otherName !== name) throw respondError('role_id already in use')
    }
    roles.set(name, role)
    if (role.token.maxTtlSeconds > mount.config.maxLeaseTtlSeconds) {
      return {
        warnings: [
          "token_max_ttl is greater than the backend mount's maximum TTL value; issued tokens' max TTL value will be truncated",
        ],
      }
    }
    return undefined
  }

  function readRole(req: BackendRequest): BackendResult {
    const role = roleOf(req)
    if (role === undefined) return undefined
    return {
      data: {
        bind_secret_id: role.bindSecretId,
        local_secret_ids: false,
        secret_id_bound_cidrs: role.secretIdBoundCidrs,
        secret_id_num_uses: role.secretIdNumUses,
        secret_id_ttl: role.secretIdTtlSeconds,
        ...tokenData(role.token),
      },
    }
  }

  function issueSecretId(req: BackendRequest, secretId: string): BackendResult {
    const role = requireRole(req)
    if (!role.bindSecretId) throw respondError('bind_secret_id is not set on the role')
    const f = req.fields
    const numUses = f.has('num_uses') ? f.int('num_uses') : role.secretIdNumUses
    if (numUses < 0) throw respondError('num_uses cannot be negative')
    if ((numUses === 0 && role.secretIdNumUses > 0) || (role.secretIdNumUses > 0 && numUses > role.secretIdNumUses)) {
      throw respondError("num_uses cannot be higher than the role's secret_id_num_uses")
    }
    const ttl = f.has('ttl') ? f.durationSeconds('ttl') : role.secretIdTtlSeconds
    if ((ttl === 0 && role.secretIdTtlSeconds > 0) || (role.secretIdTtlSeconds > 0 && ttl > role.secretIdTtlSeconds)) {
      throw respondError("ttl cannot be longer than the role's secret_id_ttl")
    }
    const metadataText = f.string('metadata')
    let metadata: Record<string, string> = {}
    if (metadataText !== '') {
      try {
        metadata = JSON.parse(metadataText) as Record<string, string>
      } catch (err) {
        throw respondError(`failed to parse metadata: ${(err as Error).message}`)
      }
    }
    const entry: SecretIdEntry = {
      accessor: newUuid(),
      numUses,
      ttlSeconds: ttl,
      creationMs: core.now(),
      metadata,
      cidrList: f.commaList('cidr_list'),
    }
    const forRole = secretIds.get(role.name) ?? new Map<string, SecretIdEntry>()
    forRole.set(secretId, entry)
    secretIds.set(role.name, forRole)
    return {
      data: {
        secret_id: secretId,
        secret_id_accessor: entry.accessor,
        secret_id_num_uses: entry.numUses,
        secret_id_ttl: Math.min(entry.ttlSeconds, mount.config.maxLeaseTtlSeconds),
      },
    }
  }

  /** The secret_id's entry if it is valid now; expired ones are removed on sight. */
  function liveSecretId(role: AppRole, secretId: string): SecretIdEntry | undefined {
    const forRole = secretIds.get(role.name)
    const entry = forRole?.get(secretId)
    if (entry === undefined) return undefined
    if (entry.ttlSeconds > 0 && core.now() >= entry.creationMs + entry.ttlSeconds * 1000) {
      forRole!.delete(secretId)
      return undefined
    }
    return entry
  }

  function login(req: BackendRequest): BackendResult {
    const roleId = req.fields.string('role_id').trim()
    if (roleId === '') throw respondError('missing role_id')
    const role = [...roles.values()].find((r) => r.roleId === roleId)
    if (role === undefined) throw respondError('invalid role or secret ID')
    let metadata: Record<string, string> = {}
    if (role.bindSecretId) {
      const secretId = req.fields.string('secret_id').trim()
      if (secretId === '') throw respondError('missing secret_id')
      const entry = liveSecretId(role, secretId)
      if (entry === undefined) throw respondError('invalid role or secret ID')
      if (entry.numUses > 0) {
        entry.numUses -= 1
        if (entry.numUses === 0) secretIds.get(role.name)?.delete(secretId)
      }
      metadata = { ...entry.metadata }
    }
    metadata.role_name = role.name
    return {
      login: loginFrom(role.token, {
        displayName: '',
        metadata,
        aliasName: role.roleId,
        internal: { role_name: role.name },
      }),
    }
  }

  const router = new Router<BackendRequest, BackendResult>()
    .add('login', { write: login })
    .add('role/:name/role-id', {
      read: (req) => {
        const role = roleOf(req)
        return role === undefined ? undefined : { data: { role_id: role.roleId } }
      },
      write: (req) => {
        const role = requireRole(req)
        const roleId = req.fields.string('role_id')
        if (roleId === '') throw respondError('missing role_id')
        role.roleId = roleId
        return undefined
      },
    })
    .add('role/:name/secret-id', {
      write: (req) => issueSecretId(req, newUuid()),
      list: (req) => {
        const role = requireRole(req)
        return { data: { keys: [...(secretIds.get(role.name)?.values() ?? [])].map((e) => e.accessor).sort() } }
      },
    })
    .add('role/:name/custom-secret-id', {
      write: (req) => {
        const secretId = req.fields.string('secret_id')
        if (secretId === '') throw respondError('missing secret_id')
        return issueSecretId(req, secretId)
      },
    })
    .add('role/:name/secret-id/lookup', {
      write: (req) => {
        const entry = liveSecretId(requireRole(req), req.fields.string('secret_id'))
        if (entry === undefined) return undefined
        const expiration = entry.ttlSeconds > 0 ? entry.creationMs + entry.ttlSeconds * 1000 : undefined
        return {
          data: {
            cidr_list: entry.cidrList,
            creation_time: rfc3339Nano(entry.creationMs),
            expiration_time: expiration === undefined ? '0001-01-01T00:00:00Z' : rfc3339Nano(expiration),
            last_updated_time: rfc3339Nano(entry.creationMs),
            metadata: entry.metadata,
            secret_id_accessor: entry.accessor,
            secret_id_num_uses: entry.numUses,
            secret_id_ttl: entry.ttlSeconds,
            token_bound_cidrs: [],
          },
        }
      },
    })
    .add('role/:name/secret-id/destroy', {
      write: (req) => {
        const role = requireRole(req)
        secretIds.get(role.name)?.delete(req.fields.string('secret_id'))
        return undefined
      },
    })
  addCollection(router, 'role', roles, {
    read: readRole,
    write: writeRole,
    delete: (req) => {
      const name = (req.params.name ?? '').toLowerCase()
      roles.delete(name)
      secretIds.delete(name)
      return undefined
    },
    exists: (req) => roleOf(req) !== undefined,
  })

  return {
    router,
    unauthenticatedPaths: ['login'],
    renewLogin: (token) => {
      const name = String(token.internal.role_name)
      return renewalFor(name, roles.get(name)?.token, token)
    },
  }
}
