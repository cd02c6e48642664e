/**
 * The system backend at sys/ (vault/logical_system.go and http/sys_health.go): health and seal
 * status, secrets engine and auth method mounts, ACL policies, and (from leases.ts) the lease
 * endpoints.
 */
import type { Backend, BackendRequest, BackendResult } from '../backend.js'
import type { VaultCore } from '../core.js'
import { encodeJson, goStruct, respondError, VaultError } from '../envelope.js'
import { Fields } from '../fields.js'
import type { Flavor } from '../flavor.js'
import type { MountEntry, TokenTypeSetting } from '../mounts.js'
import { normalizeMountPath, TOKEN_TYPE_SETTINGS } from '../mounts.js'
import { Router } from '../router.js'
import { addLeaseRoutes } from './leases.js'
import { addQuotaRoutes } from './quotas.js'

export function sysBackend(core: VaultCore): Backend {
  const router = new Router<BackendRequest, BackendResult>()
    .add('mounts', { read: () => ({ data: mountListing(core.flavor, core.mounts.list('secret')) }) })
    .add('mounts/*path', {
      read: (req) => readMount(core, req, 'secret'),
      write: (req) => writeMount(core, req, 'secret'),
      delete: (req) => disableMount(core, req, 'secret'),
    })
    .add('auth', { read: () => ({ data: mountListing(core.flavor, core.mounts.list('auth')) }) })
    .add('auth/*path', {
      read: (req) => readMount(core, req, 'auth'),
      write: (req) => writeMount(core, req, 'auth'),
      delete: (req) => disableMount(core, req, 'auth'),
    })
    .add('policies/acl', { list: () => ({ data: { keys: core.policies.names() } }) })
    .add('policies/acl/*name', policyHandlers(core, 'policy'))
    .add('policy', { read: () => ({ data: { keys: core.policies.names(), policies: core.policies.names() } }) })
    .add('policy/*name', policyHandlers(core, 'rules'))
  addLeaseRoutes(router, core)
  addQuotaRoutes(router, core)
  return {
    router,
    sudoPaths: ['auth/*', 'leases/revoke-prefix/*', 'leases/revoke-force/*', 'leases/lookup/*', 'revoke-prefix/*'],
  }
}

// ---------------------------------------------------------------------------
// Mounts

function mountInfo(flavor: Flavor, mount: MountEntry): Record<string, unknown> {
  const config: Record<string, unknown> = {
    default_lease_ttl: mount.tune.defaultLeaseTtlSeconds,
    force_no_cache: false,
    max_lease_ttl: mount.tune.maxLeaseTtlSeconds,
  }
  if (mount.kind === 'auth') config.token_type = mount.tokenType
  return {
    accessor: mount.accessor,
    config,
    deprecation_status: 'supported',
    description: mount.description,
    external_entropy_access: false,
    local: false,
    options: mount.options,
    plugin_version: '',
    running_plugin_version: `v${flavor.version}${flavor.builtinSuffix}`,
    running_sha256: '',
    seal_wrap: false,
    type: mount.type,
    uuid: mount.uuid,
  }
}

function mountListing(flavor: Flavor, mounts: MountEntry[]): Record<string, unknown> {
  return Object.fromEntries(
    mounts.map((m) => [m.kind === 'auth' ? m.path.replace(/^auth\//, '') : m.path, mountInfo(flavor, m)]),
  )
}

/** sys/mounts/<path> and sys/auth/<path>: the path may itself contain slashes, and may end in /tune. */
function splitTune(req: BackendRequest): { path: string; isTune: boolean } {
  const raw = req.params.path ?? ''
  const isTune = /(^|\/)tune\/?$/.test(raw)
  return { path: isTune ? raw.replace(/\/?tune\/?$/, '') : raw, isTune }
}

function tablePath(kind: 'secret' | 'auth', path: string): string {
  return kind === 'auth' ? `auth/${normalizeMountPath(path)}` : normalizeMountPath(path)
}

function readMount(core: VaultCore, req: BackendRequest, kind: 'secret' | 'auth'): BackendResult {
  const { path, isTune } = splitTune(req)
  const mount = core.mounts.get(tablePath(kind, path))
  if (mount === undefined || mount.kind !== kind) {
    throw respondError(
      kind === 'auth'
        ? `No auth engine at ${normalizeMountPath(path)}`
        : `No secret engine mount at ${normalizeMountPath(path)}`,
    )
  }
  if (!isTune) return { data: mountInfo(core.flavor, mount) }
  return {
    data: {
      default_lease_ttl: mount.config.defaultLeaseTtlSeconds,
      description: mount.description,
      force_no_cache: false,
      max_lease_ttl: mount.config.maxLeaseTtlSeconds,
      ...(mount.options ? { options: mount.options } : {}),
      ...(mount.kind === 'auth' ? { token_type: mount.tokenType } : {}),
    },
  }
}

function writeMount(core: VaultCore, req: BackendRequest, kind: 'secret' | 'auth'): BackendResult {
  const { path, isTune } = splitTune(req)
  const f = req.fields
  if (isTune) {
    core.mounts.tune(tablePath(kind, path), {
      defaultLeaseTtlSeconds: tuneTtl(f, 'default_lease_ttl'),
      maxLeaseTtlSeconds: tuneTtl(f, 'max_lease_ttl'),
      tokenType: f.has('token_type') ? tokenTypeSetting(f.string('token_type')) : undefined,
    })
    return undefined
  }
  const type = f.string('type')
  if (type === '') throw respondError('backend type must be specified as a string')
  const config = new Fields(f.map('config') ?? {})
  core.enableMount({
    kind,
    path,
    type,
    description: f.string('description'),
    tune: {
      defaultLeaseTtlSeconds: tuneTtl(config, 'default_lease_ttl') ?? 0,
      maxLeaseTtlSeconds: tuneTtl(config, 'max_lease_ttl') ?? 0,
    },
    ...(kind === 'auth' && config.has('token_type')
      ? { tokenType: tokenTypeSetting(config.string('token_type')) }
      : {}),
    options: f.has('options') ? f.stringMap('options') : null,
  })
  return undefined
}

/** A tuned TTL: absent or "" keeps the value, "system" (or 0) goes back to the system's. */
function tuneTtl(f: Fields, name: string): number | undefined {
  const raw = f.string(name)
  if (raw === '') return undefined
  if (raw === 'system') return 0
  return f.durationSeconds(name)
}

/** logical_system.go handleTuneWriteCommon: "" means default-service. */
function tokenTypeSetting(value: string): TokenTypeSetting {
  if (value === '') return 'default-service'
  if (!(TOKEN_TYPE_SETTINGS as readonly string[]).includes(value)) throw respondError("invalid value for 'token_type'")
  return value as TokenTypeSetting
}

async function disableMount(core: VaultCore, req: BackendRequest, kind: 'secret' | 'auth'): Promise<BackendResult> {
  await core.disableMount(tablePath(kind, req.params.path ?? ''))
  return undefined
}

// ---------------------------------------------------------------------------
// Policies

/** sys/policies/acl/<name> returns the text as `policy`; the older sys/policy/<name> as `rules`. */
function policyHandlers(core: VaultCore, textKey: 'policy' | 'rules') {
  return {
    read: (req: BackendRequest): BackendResult => {
      const policy = core.policies.get(req.params.name ?? '')
      if (policy === undefined) return undefined
      return { data: { name: policy.name, [textKey]: policy.raw } }
    },
    write: (req: BackendRequest): BackendResult => {
      if (!req.params.name) throw respondError('policy name must be provided in the URL')
      const text = req.fields.string('policy') || req.fields.string('rules')
      if (text === '') throw respondError("'policy' parameter not supplied or empty")
      core.policies.set(req.params.name ?? '', decodeIfBase64(text))
      return undefined
    },
    delete: (req: BackendRequest): BackendResult => {
      core.policies.delete(req.params.name ?? '')
      return undefined
    },
  }
}

/** Vault accepts the policy text base64-encoded too. */
function decodeIfBase64(text: string): string {
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(text) || text.length % 4 !== 0) return text
  return Buffer.from(text, 'base64').toString('utf8')
}

// ---------------------------------------------------------------------------
// Health and seal status: plain JSON bodies, not envelopes, served even when sealed.

export interface HealthState {
  flavor: Flavor
  sealed: boolean
  standby: boolean
  clusterName: string
  clusterId: string
  now(): number
}

export interface PlainReply {
  status: number
  body: string
}

const HEALTH_CODE_PARAMS = [
  'activecode',
  'standbycode',
  'sealedcode',
  'uninitcode',
  'drsecondarycode',
  'performancestandbycode',
  'removedcode',
  'haunhealthycode',
] as const

/** GET/HEAD sys/health: the status code carries the state; query parameters can remap it. */
export function healthReply(state: HealthState, query: URLSearchParams, isHead: boolean): PlainReply {
  const codes: Record<string, number> = { activecode: 200, standbycode: 429, sealedcode: 503 }
  const flags: Record<string, boolean> = { standbyok: false, perfstandbyok: false }
  try {
    for (const name of HEALTH_CODE_PARAMS) {
      const value = query.get(name)
      if (value === null) continue
      if (!/^\d+$/.test(value)) throw new Error(name)
      codes[name] = Number(value)
    }
    for (const name of Object.keys(flags)) {
      const value = query.get(name)
      if (value === null) continue
      flags[name] = parseGoBool(value)
    }
  } catch {
    return { status: 400, body: isHead ? '' : encodeJson(goStruct({ errors: [] })) }
  }

  let status = codes.activecode!
  if (state.sealed) status = codes.sealedcode!
  else if (state.standby && !flags.standbyok) status = codes.standbycode!

  if (state.flavor.healthBody === 'openbao') {
    // internal/http/sys_health.go HealthResponse: no performance standby, enterprise or HA timings.
    const body = goStruct({
      initialized: true,
      sealed: state.sealed,
      standby: state.standby,
      replication_performance_mode: 'disabled',
      replication_dr_mode: 'disabled',
      server_time_utc: Math.floor(state.now() / 1000),
      version: state.flavor.version,
      cluster_name: state.sealed ? undefined : state.clusterName,
      cluster_id: state.sealed ? undefined : state.clusterId,
    })
    return { status, body: isHead ? '' : encodeJson(body) }
  }
  const body = goStruct({
    initialized: true,
    sealed: state.sealed,
    standby: state.standby,
    performance_standby: false,
    replication_performance_mode: 'disabled',
    replication_dr_mode: 'disabled',
    server_time_utc: Math.floor(state.now() / 1000),
    version: state.flavor.version,
    enterprise: false,
    // A sealed Vault does not know its cluster.
    cluster_name: state.sealed ? undefined : state.clusterName,
    cluster_id: state.sealed ? undefined : state.clusterId,
    echo_duration_ms: 0,
    clock_skew_ms: 0,
    replication_primary_canary_age_ms: 0,
  })
  return { status, body: isHead ? '' : encodeJson(body) }
}

/** GET sys/seal-status. */
export function sealStatusReply(state: HealthState): PlainReply {
  const body = goStruct({
    type: 'shamir',
    initialized: true,
    sealed: state.sealed,
    t: 1,
    n: 1,
    progress: 0,
    nonce: '',
    version: state.flavor.version,
    build_date: '2025-03-04T17:40:20Z',
    migration: false,
    cluster_name: state.sealed ? undefined : state.clusterName,
    cluster_id: state.sealed ? undefined : state.clusterId,
    recovery_seal: false,
    storage_type: 'inmem',
  })
  return { status: 200, body: encodeJson(body) }
}

/** strconv.ParseBool. */
function parseGoBool(value: string): boolean {
  if (['1', 't', 'T', 'TRUE', 'true', 'True'].includes(value)) return true
  if (['0', 'f', 'F', 'FALSE', 'false', 'False'].includes(value)) return false
  throw new VaultError(400, [])
}
