/**
 * The mount table: which engine serves which path prefix. Secrets engines mount at "<path>/",
 * auth methods at "auth/<path>/"; a request goes to the mount with the longest matching prefix.
 */
import { randomBytes } from 'node:crypto'
import type { Backend, Mount, MountConfig } from './backend.js'
import { VaultError, respondError } from './envelope.js'
import { newUuid } from './ids.js'
import { SYSTEM_DEFAULT_TTL_SECONDS, SYSTEM_MAX_TTL_SECONDS } from './ttl.js'

export interface MountSpec {
  path: string
  type: string
  kind: 'secret' | 'auth'
  description?: string
  /** As tuned: 0 means "the system value". */
  tune?: Partial<MountConfig>
  options?: Record<string, string> | null
}

export type BackendFactory = (mount: Mount) => Backend

/** A mount plus what was asked for at enable/tune time (0 = system default), for reads. */
export interface MountEntry extends Mount {
  tune: MountConfig
}

export class MountTable {
  private readonly mounts = new Map<string, MountEntry>()

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
    const accessorPrefix = spec.kind === 'auth' ? `auth_${spec.type}` : spec.type
    const entry = {
      path,
      type: spec.type,
      kind: spec.kind,
      description: spec.description ?? '',
      accessor: `${accessorPrefix}_${randomBytes(4).toString('hex')}`,
      uuid: newUuid(),
      tune,
      config: effectiveConfig(tune),
      options: spec.options ?? null,
    } as MountEntry
    entry.backend = create(entry)
    this.mounts.set(path, entry)
    return entry
  }

  /** Changes the TTLs of a mount (sys/mounts/<path>/tune). */
  tune(path: string, changes: Partial<MountConfig>): void {
    const entry = this.mounts.get(normalizeMountPath(path))
    if (entry === undefined) throw respondError(`no mount entry found for path ${normalizeMountPath(path)}`)
    entry.tune = { ...entry.tune, ...changes }
    if (entry.tune.maxLeaseTtlSeconds !== 0 && entry.tune.defaultLeaseTtlSeconds > entry.tune.maxLeaseTtlSeconds) {
      throw respondError('given default lease TTL greater than given max lease TTL')
    }
    entry.config = effectiveConfig(entry.tune)
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
}

export function normalizeMountPath(path: string): string {
  return `${trimSlashes(path)}/`
}

function effectiveConfig(tune: MountConfig): MountConfig {
  return {
    defaultLeaseTtlSeconds: tune.defaultLeaseTtlSeconds || SYSTEM_DEFAULT_TTL_SECONDS,
    maxLeaseTtlSeconds: tune.maxLeaseTtlSeconds || SYSTEM_MAX_TTL_SECONDS,
  }
}

/** The path without the slashes at either end, in linear time (/\/+$/ is quadratic on a run of slashes). */
export function trimSlashes(path: string): string {
  let start = 0
  let end = path.length
  while (start < end && path[start] === '/') start++
  while (end > start && path[end - 1] === '/') end--
  return path.slice(start, end)
}
