/**
 * The mount table: which engine serves which path prefix. Secrets engines mount at "<path>/",
 * auth methods at "auth/<path>/"; a request goes to the mount with the longest matching prefix.
 */
import { randomBytes } from 'node:crypto'
import type { Backend, Mount, MountConfig, TokenTypeSetting } from './backend.js'
import { VaultError, respondError } from './envelope.js'
import { newUuid } from './ids.js'

export interface MountSpec {
  path: string
  type: string
  kind: 'secret' | 'auth'
  description?: string
  /** As tuned: 0 means "the system value". */
  tune?: Partial<MountConfig>
  options?: Record<string, string> | null
  /** Auth mounts only; default default-service. */
  tokenType?: TokenTypeSetting
}

export type BackendFactory = (mount: Mount) => Backend

export type { TokenTypeSetting }
export const TOKEN_TYPE_SETTINGS: readonly TokenTypeSetting[] = ['default-service', 'default-batch', 'service', 'batch']

/** A mount plus what was asked for at enable/tune time (0 = system default), for reads. */
export interface MountEntry extends Mount {
  tune: MountConfig
}

/** A tune request: undefined leaves a value as it is; 0 means "system" (the server's value). */
export interface TuneChanges {
  defaultLeaseTtlSeconds?: number
  maxLeaseTtlSeconds?: number
  tokenType?: TokenTypeSetting
}

export class MountTable {
  private readonly mounts = new Map<string, MountEntry>()

  /** `system` holds the server's default_lease_ttl and max_lease_ttl, which untuned mounts use. */
  constructor(readonly system: MountConfig) {}

  /** Adds a mount; `create` builds its backend once the mount entry exists. */
  enable(spec: MountSpec, create: BackendFactory): MountEntry {
    const path = normalizeMountPath(spec.path)
    for (const existing of this.mounts.keys()) {
      if (existing.startsWith(path) || path.startsWith(existing)) {
        const shown = spec.kind === 'auth' ? existing.replace(/^auth\//, '') : existing
        throw new VaultError(409, [`path is already in use at ${shown}`])
      }
    }
    const tune = { defaultLeaseTtlSeconds: 0, maxLeaseTtlSeconds: 0, ...spec.tune }
    // logical_system.go handleMount / handleEnableAuth check the TTLs asked for against each other
    // and, without a max of the mount's own, against the system max.
    if (tune.maxLeaseTtlSeconds !== 0 && tune.defaultLeaseTtlSeconds > tune.maxLeaseTtlSeconds) {
      throw respondError('given default lease TTL greater than given max lease TTL')
    }
    if (tune.maxLeaseTtlSeconds === 0 && tune.defaultLeaseTtlSeconds > this.system.maxLeaseTtlSeconds) {
      throw respondError(
        `given default lease TTL greater than system max lease TTL of ${this.system.maxLeaseTtlSeconds}`,
      )
    }
    const accessorPrefix = spec.kind === 'auth' ? `auth_${spec.type}` : spec.type
    const entry = {
      path,
      type: spec.type,
      kind: spec.kind,
      description: spec.description ?? '',
      accessor: `${accessorPrefix}_${randomBytes(4).toString('hex')}`,
      uuid: newUuid(),
      tune,
      config: this.effectiveConfig(tune),
      options: spec.options ?? null,
      tokenType: spec.tokenType ?? 'default-service',
    } as MountEntry
    entry.backend = create(entry)
    this.mounts.set(path, entry)
    return entry
  }

  /**
   * sys/mounts/<path>/tune and sys/auth/<path>/tune (logical_system.go handleTuneWriteCommon).
   * A mount's max may exceed the system max: that is how a mount allows longer leases.
   */
  tune(path: string, changes: TuneChanges): void {
    const entry = this.mounts.get(normalizeMountPath(path))
    if (entry === undefined)
      throw respondError(`tune of path "${normalizeMountPath(path)}" failed: no mount entry found`)
    const next = {
      defaultLeaseTtlSeconds: changes.defaultLeaseTtlSeconds ?? entry.tune.defaultLeaseTtlSeconds,
      maxLeaseTtlSeconds: changes.maxLeaseTtlSeconds ?? entry.tune.maxLeaseTtlSeconds,
    }
    const changed =
      next.defaultLeaseTtlSeconds !== entry.tune.defaultLeaseTtlSeconds ||
      next.maxLeaseTtlSeconds !== entry.tune.maxLeaseTtlSeconds
    // Only a change is checked, and only a mount's own two values against each other.
    if (
      changed &&
      next.defaultLeaseTtlSeconds !== 0 &&
      next.maxLeaseTtlSeconds !== 0 &&
      next.maxLeaseTtlSeconds < next.defaultLeaseTtlSeconds
    ) {
      throw respondError(
        `backend max lease TTL of ${next.maxLeaseTtlSeconds} would be less than backend default lease TTL of ${next.defaultLeaseTtlSeconds}`,
      )
    }
    if (changes.tokenType !== undefined) {
      if (entry.kind !== 'auth') throw respondError("'token_type' can only be modified on auth mounts")
      if (entry.type === 'token') throw respondError("'token_type' cannot be set for 'token' or 'ns_token' auth mounts")
      entry.tokenType = changes.tokenType
    }
    entry.tune = next
    entry.config = this.effectiveConfig(next)
  }

  remove(path: string): MountEntry | undefined {
    const key = normalizeMountPath(path)
    const entry = this.mounts.get(key)
    this.mounts.delete(key)
    return entry
  }

  get(path: string): MountEntry | undefined {
    return this.mounts.get(normalizeMountPath(path))
  }

  /** The mount serving a request path: the longest mount path that prefixes it. */
  match(requestPath: string): MountEntry | undefined {
    let best: MountEntry | undefined
    for (const [path, entry] of this.mounts) {
      const matches = requestPath.startsWith(path) || `${requestPath}/` === path
      if (matches && (best === undefined || path.length > best.path.length)) best = entry
    }
    return best
  }

  list(kind: 'secret' | 'auth'): MountEntry[] {
    return [...this.mounts.values()].filter((m) => m.kind === kind)
  }

  /** dynamic_system_view.go fetchTTLs: a mount's own value where it has one, else the system's. */
  private effectiveConfig(tune: MountConfig): MountConfig {
    return {
      defaultLeaseTtlSeconds: tune.defaultLeaseTtlSeconds || this.system.defaultLeaseTtlSeconds,
      maxLeaseTtlSeconds: tune.maxLeaseTtlSeconds || this.system.maxLeaseTtlSeconds,
    }
  }
}

export function normalizeMountPath(path: string): string {
  return `${path.replace(/^\/+|\/+$/g, '')}/`
}
