/**
 * The KV secrets engine (builtin/logical/kv): version 2 (versioned, data/ metadata/ delete/
 * undelete/ destroy/ config) when the mount has options.version "2", as dev mode's secret/ does;
 * otherwise version 1 (a plain path → map store).
 */
import type { Backend, BackendRequest, BackendResult, Mount } from '../backend.js'
import type { VaultCore } from '../core.js'
import { respondError } from '../envelope.js'
import { Router } from '../router.js'
import { rfc3339Nano } from '../time-format.js'

export function kvBackend(core: VaultCore, mount: Mount): Backend {
  return mount.options?.version === '2' ? new KvV2(core).backend() : kvV1()
}

// ---------------------------------------------------------------------------
// Version 2

interface VersionEntry {
  data: Record<string, unknown>
  createdMs: number
  deletionMs: number | undefined
  destroyed: boolean
}

interface KeyMetadata {
  versions: Map<number, VersionEntry>
  currentVersion: number
  oldestVersion: number
  createdMs: number
  updatedMs: number
  maxVersions: number
  casRequired: boolean
  customMetadata: Record<string, string> | null
}

/** KV v2 keeps 10 versions unless max_versions says otherwise. */
const DEFAULT_MAX_VERSIONS = 10

function timestamp(ms: number | undefined): string {
  return ms === undefined ? '' : rfc3339Nano(ms)
}

class KvV2 {
  private readonly keys = new Map<string, KeyMetadata>()
  private readonly config = { maxVersions: 0, casRequired: false }

  constructor(private readonly core: VaultCore) {}

  backend(): Backend {
    const router = new Router<BackendRequest, BackendResult>()
      .add('config', {
        read: () => ({
          data: {
            cas_required: this.config.casRequired,
            delete_version_after: '0s',
            max_versions: this.config.maxVersions,
          },
        }),
        write: (req) => {
          this.config.maxVersions = req.fields.int('max_versions', this.config.maxVersions)
          this.config.casRequired = req.fields.bool('cas_required', this.config.casRequired)
          return undefined
        },
      })
      .add('data/*path', {
        read: withKey((req, key) => this.readData(req, key)),
        write: withKey((req, key) => this.writeData(req, key)),
        delete: withKey((_req, key) => this.softDelete(key, undefined)),
        exists: (req) => this.keys.has(req.params.path ?? ''),
      })
      .add('metadata/*path', {
        read: withKey((_req, key) => this.readMetadata(key)),
        list: (req) => ({ data: { keys: childKeys(this.keys.keys(), req.params.path ?? '') } }),
        write: withKey((req, key) => this.writeMetadata(req, key)),
        delete: withKey((_req, key) => {
          this.keys.delete(key)
          return undefined
        }),
      })
      .add('delete/*path', { write: withKey((req, key) => this.softDelete(key, versionsOf(req))) })
      .add('undelete/*path', { write: withKey((req, key) => this.undelete(req, key)) })
      .add('destroy/*path', { write: withKey((req, key) => this.destroy(req, key)) })
      .add('*path', {
        read: (req) => invalidPath(req),
        write: (req) => invalidPath(req),
        delete: (req) => invalidPath(req),
        list: (req) => invalidPath(req),
      })
    return { router }
  }

  private readData(req: BackendRequest, key: string): BackendResult {
    const meta = this.keys.get(key)
    if (meta === undefined) return undefined
    const requested = req.query.get('version') ?? req.fields.string('version')
    const versionNumber = requested && Number(requested) > 0 ? Number(requested) : meta.currentVersion
    const version = meta.versions.get(versionNumber)
    if (version === undefined) return undefined
    const metadata = {
      created_time: timestamp(version.createdMs),
      custom_metadata: meta.customMetadata,
      deletion_time: timestamp(version.deletionMs),
      destroyed: version.destroyed,
      version: versionNumber,
    }
    // A deleted or destroyed version answers 404, with its metadata in the body.
    const isDeleted = version.deletionMs !== undefined && version.deletionMs <= this.core.now()
    if (isDeleted || version.destroyed) return { data: { data: null, metadata }, status: 404 }
    return { data: { data: structuredClone(version.data), metadata } }
  }

  private writeData(req: BackendRequest, key: string): BackendResult {
    const data = req.fields.map('data')
    if (data === undefined) throw respondError('no data provided')
    const existing = this.keys.get(key)
    const now = this.core.now()
    const meta: KeyMetadata = existing ?? {
      versions: new Map(),
      currentVersion: 0,
      oldestVersion: 0,
      createdMs: now,
      updatedMs: now,
      maxVersions: 0,
      casRequired: false,
      customMetadata: null,
    }
    const options = req.fields.map('options')
    if (options !== undefined && options.cas !== undefined) {
      if (Number(options.cas) !== meta.currentVersion) {
        throw respondError('check-and-set parameter did not match the current version')
      }
    } else if (this.config.casRequired || meta.casRequired) {
      throw respondError('check-and-set parameter required for this call')
    }
    meta.currentVersion += 1
    if (meta.oldestVersion === 0) meta.oldestVersion = 1
    meta.versions.set(meta.currentVersion, {
      data: structuredClone(data),
      createdMs: now,
      deletionMs: undefined,
      destroyed: false,
    })
    meta.updatedMs = now
    this.keys.set(key, meta)
    this.dropOldVersions(meta)
    return {
      data: {
        created_time: timestamp(now),
        custom_metadata: meta.customMetadata,
        deletion_time: '',
        destroyed: false,
        version: meta.currentVersion,
      },
    }
  }

  private dropOldVersions(meta: KeyMetadata): void {
    const max = meta.maxVersions || this.config.maxVersions || DEFAULT_MAX_VERSIONS
    while (meta.currentVersion - meta.oldestVersion + 1 > max) {
      meta.versions.delete(meta.oldestVersion)
      meta.oldestVersion += 1
    }
  }

  private softDelete(key: string, versions: number[] | undefined): BackendResult {
    const meta = this.keys.get(key)
    if (meta === undefined) return undefined
    for (const n of versions ?? [meta.currentVersion]) {
      const version = meta.versions.get(n)
      if (version !== undefined && version.deletionMs === undefined) version.deletionMs = this.core.now()
    }
    return undefined
  }

  private undelete(req: BackendRequest, key: string): BackendResult {
    const meta = this.keys.get(key)
    for (const n of versionsOf(req)) {
      const version = meta?.versions.get(n)
      if (version !== undefined && !version.destroyed) version.deletionMs = undefined
    }
    return undefined
  }

  private destroy(req: BackendRequest, key: string): BackendResult {
    const meta = this.keys.get(key)
    for (const n of versionsOf(req)) {
      const version = meta?.versions.get(n)
      if (version !== undefined) {
        version.destroyed = true
        version.data = {}
      }
    }
    return undefined
  }

  private readMetadata(key: string): BackendResult {
    const meta = this.keys.get(key)
    if (meta === undefined) return undefined
    const versions = Object.fromEntries(
      [...meta.versions].map(([n, v]) => [
        String(n),
        { created_time: timestamp(v.createdMs), deletion_time: timestamp(v.deletionMs), destroyed: v.destroyed },
      ]),
    )
    return {
      data: {
        cas_required: meta.casRequired,
        created_time: timestamp(meta.createdMs),
        current_version: meta.currentVersion,
        custom_metadata: meta.customMetadata,
        delete_version_after: '0s',
        max_versions: meta.maxVersions,
        oldest_version: meta.oldestVersion,
        updated_time: timestamp(meta.updatedMs),
        versions,
      },
    }
  }

  private writeMetadata(req: BackendRequest, key: string): BackendResult {
    const now = this.core.now()
    const meta = this.keys.get(key) ?? {
      versions: new Map(),
      currentVersion: 0,
      oldestVersion: 0,
      createdMs: now,
      updatedMs: now,
      maxVersions: 0,
      casRequired: false,
      customMetadata: null,
    }
    meta.maxVersions = req.fields.int('max_versions', meta.maxVersions)
    meta.casRequired = req.fields.bool('cas_required', meta.casRequired)
    if (req.fields.has('custom_metadata')) meta.customMetadata = req.fields.stringMap('custom_metadata')
    meta.updatedMs = now
    this.keys.set(key, meta)
    this.dropOldVersions(meta)
    return undefined
  }
}

/** Passes the key to the handler; data/, delete/ … without one get Vault's root-of-mount 404. */
function withKey(handler: (req: BackendRequest, key: string) => BackendResult): (req: BackendRequest) => BackendResult {
  return (req) => {
    const key = req.params.path ?? ''
    if (key === '' || key === '/') {
      return { status: 404, warnings: ['Non-listing operations on the root of a K/V v2 mount are not supported.'] }
    }
    return handler(req, key)
  }
}

function versionsOf(req: BackendRequest): number[] {
  const raw = req.fields.raw.versions
  const list = Array.isArray(raw) ? raw : typeof raw === 'string' ? raw.split(',') : raw === undefined ? [] : [raw]
  if (list.length === 0) throw respondError('no version number provided')
  return list.map((v) => Number(v))
}

function invalidPath(req: BackendRequest): BackendResult {
  const command = { read: 'get', list: 'list', create: 'put', update: 'put', delete: 'delete' }[req.operation]
  return {
    status: 404,
    warnings: [
      `Invalid path for a versioned K/V secrets engine. See the API docs for the appropriate API endpoints to use. If using the Vault CLI, use 'vault kv ${command}' for this operation.`,
    ],
  }
}

/** The immediate children of `prefix` among `keys`; sub-folders end in "/". Sorted. */
function childKeys(keys: Iterable<string>, prefix: string): string[] {
  const folder = prefix === '' || prefix.endsWith('/') ? prefix : `${prefix}/`
  const children = new Set<string>()
  for (const key of keys) {
    if (!key.startsWith(folder)) continue
    const rest = key.slice(folder.length)
    const slash = rest.indexOf('/')
    children.add(slash === -1 ? rest : rest.slice(0, slash + 1))
  }
  return [...children].filter((k) => k !== '').sort()
}

// ---------------------------------------------------------------------------
// Version 1

function kvV1(): Backend {
  const entries = new Map<string, Record<string, unknown>>()
  const router = new Router<BackendRequest, BackendResult>().add('*path', {
    read: (req) => {
      const data = entries.get(req.params.path ?? '')
      return data === undefined ? undefined : { data: structuredClone(data) }
    },
    write: (req) => {
      const key = req.params.path ?? ''
      if (key === '') throw respondError('missing path')
      entries.set(key, structuredClone(req.fields.raw as Record<string, unknown>))
      return undefined
    },
    delete: (req) => {
      entries.delete(req.params.path ?? '')
      return undefined
    },
    list: (req) => ({ data: { keys: childKeys(entries.keys(), req.params.path ?? '') } }),
    exists: (req) => entries.has(req.params.path ?? ''),
  })
  return { router }
}
