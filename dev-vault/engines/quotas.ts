/**
 * The sys/quotas/* endpoints (vault/logical_system_quotas.go): sys/quotas/config and
 * sys/quotas/rate-limit[/:name]. The quotas themselves are applied by the core before a request
 * reaches any backend (rate-limit-quotas.ts).
 */
import type { BackendRequest, BackendResult, BackendRouter } from '../backend.js'
import type { VaultCore } from '../core.js'
import { respondError } from '../envelope.js'
import { trimSlashes } from '../mounts.js'

/** logical_system.go sanitizePath: a trailing slash, no leading one ("" stays ""). */
function sanitizePath(path: string): string {
  const trimmed = trimSlashes(path)
  return trimmed === '' ? '' : `${trimmed}/`
}

function writeQuota(core: VaultCore, req: BackendRequest): BackendResult {
  const f = req.fields
  const name = req.params.name ?? ''
  const rate = Number(f.raw.rate ?? 0)
  if (!Number.isFinite(rate) || rate <= 0) throw respondError("'rate' is invalid")
  const intervalSeconds = f.durationSeconds('interval') || 1
  const blockIntervalSeconds = f.durationSeconds('block_interval')
  if (blockIntervalSeconds < 0) throw respondError("'block' is invalid")
  if (f.string('role') !== '') throw respondError('role-based quotas are not implemented by the dev Vault')

  let path = sanitizePath(f.string('path'))
  if (path !== '') {
    const mount = core.mounts.match(path)
    if (mount === undefined || mount.type === 'system') throw respondError(`invalid mount path ${JSON.stringify(path)}`)
    // The mount with a trailing slash, or the mount plus the suffix without one.
    const suffix = path.slice(mount.path.length).replace(/\/$/, '')
    path = mount.path + suffix
  }
  const inheritable = f.has('inheritable') ? f.bool('inheritable', false) : path === ''
  core.rateLimits.set({ name, path, rate, intervalSeconds, blockIntervalSeconds, inheritable })
  return undefined
}

function readQuota(core: VaultCore, req: BackendRequest): BackendResult {
  const quota = core.rateLimits.get(req.params.name ?? '')
  if (quota === undefined) return undefined
  return {
    data: {
      type: 'rate-limit',
      name: quota.name,
      path: quota.path,
      role: '',
      rate: quota.rate,
      interval: quota.intervalSeconds,
      block_interval: quota.blockIntervalSeconds,
      inheritable: quota.inheritable,
    },
  }
}

/** Adds the quota endpoints to the sys/ router (paths relative to sys/). */
export function addQuotaRoutes(router: BackendRouter, core: VaultCore): void {
  router
    .add('quotas/config', {
      read: () => {
        const config = core.rateLimits.config
        return {
          data: {
            enable_rate_limit_audit_logging: config.enableRateLimitAuditLogging,
            enable_rate_limit_response_headers: config.enableRateLimitResponseHeaders,
            rate_limit_exempt_paths: config.rateLimitExemptPaths,
          },
        }
      },
      write: (req) => {
        // handleQuotasConfigUpdate sets every field from the request, defaults included.
        core.rateLimits.config = {
          enableRateLimitAuditLogging: req.fields.bool('enable_rate_limit_audit_logging', false),
          enableRateLimitResponseHeaders: req.fields.bool('enable_rate_limit_response_headers', false),
          rateLimitExemptPaths: req.fields.stringList('rate_limit_exempt_paths'),
        }
        return undefined
      },
    })
    .add('quotas/rate-limit', { list: () => ({ data: { keys: core.rateLimits.names() } }) })
    .add('quotas/rate-limit/:name', {
      read: (req) => readQuota(core, req),
      write: (req) => writeQuota(core, req),
      delete: (req) => {
        core.rateLimits.delete(req.params.name ?? '')
        return undefined
      },
      exists: (req) => core.rateLimits.get(req.params.name ?? '') !== undefined,
    })
}
