import { isDeepStrictEqual } from 'node:util'
import type { Logger } from 'pino'
import { ConfigError, type Config } from '../config/load-config.js'
import { createRouteProfiles } from '../proxy/create-proxy-server.js'
import { listenerKey, type ProxyServer, type RouteProfile } from '../proxy/proxy-server.js'
import type { CredentialSource } from '../vault/credential-source.js'

/**
 * Settings read only at start: the listeners and the log output. A reload that changes them says
 * so and keeps the running values; everything else applies to the sessions that start after it.
 */
export const RESTART_ONLY_KEYS = [
  'listen',
  'allow_remote',
  'socket_dir',
  'socket_mode',
  'max_startup_connections',
  'ops',
  'log.format',
] as const

/**
 * SIGHUP: reads the configuration again (same file, environment and flags), validates it, and
 * swaps what new sessions are built from. Open sessions keep their settings, connector and
 * credential. A configuration that does not validate changes nothing.
 */
export class ConfigReloader {
  private running: Config
  private queue: Promise<unknown> = Promise.resolve()

  constructor(
    initial: Config,
    private readonly deps: {
      server: ProxyServer
      logger: Logger
      /** Loads the configuration exactly as at start. */
      load: () => Promise<Config>
      env?: NodeJS.ProcessEnv
    },
  ) {
    this.running = initial
  }

  /** The configuration in force (restart-only keys at their running values). */
  get config(): Config {
    return this.running
  }

  /** Resolves true when the new configuration was applied. Reloads run one after another. */
  reload(): Promise<boolean> {
    const next = this.queue.then(() => this.apply())
    this.queue = next.catch(() => undefined)
    return next
  }

  private async apply(): Promise<boolean> {
    const { server, logger, load, env } = this.deps
    const current = this.running
    let loaded: Config
    try {
      loaded = await load()
    } catch (err) {
      return this.refuse(err)
    }
    const changed = changedKeys(current, loaded)
    const needsRestart = changed.filter((key) => RESTART_ONLY_KEYS.some((r) => key === r || key.startsWith(`${r}.`)))
    const next = Object.freeze({
      ...loaded,
      listen: current.listen,
      allow_remote: current.allow_remote,
      socket_dir: current.socket_dir,
      socket_mode: current.socket_mode,
      max_startup_connections: current.max_startup_connections,
      ops: current.ops,
      log: { ...loaded.log, format: current.log.format },
    })
    const credentialsChanged = changed.some(
      (key) => key.startsWith('credentials.') || key.startsWith('vault.') || key.startsWith('routes'),
    )
    // A route keeps its running credential source while its credential and Vault settings are the same.
    const keep = new Map<string, CredentialSource>()
    for (const route of server.currentRoutes) {
      const before = current.routes.find((r) => r.name === route.name)?.config
      const after = loaded.routes.find((r) => r.name === route.name)?.config
      if (
        before &&
        after &&
        isDeepStrictEqual(before.credentials, after.credentials) &&
        isDeepStrictEqual(before.vault, after.vault)
      ) {
        keep.set(route.name, route.credentials)
      }
    }
    let routes: RouteProfile[]
    try {
      const running = new Set(server.currentRoutes.map((r) => r.listener))
      // Listeners cannot move live: a single route keeps its running one (the change is warned about).
      const nextRoutes =
        loaded.routes.length === 1 && current.routes.length === 1
          ? loaded.routes.map((r) => ({
              ...r,
              config: { ...r.config, listen: current.listen, socket_dir: current.socket_dir },
            }))
          : loaded.routes
      const moved = nextRoutes.filter((r) => !running.has(listenerKey(r.config.listen)))
      if (moved.length > 0) {
        throw new Error(
          `routes ${moved.map((r) => `"${r.name}"`).join(', ')} need a listener that is not open; restart to apply`,
        )
      }
      routes = createRouteProfiles({ ...next, routes: nextRoutes }, logger, server.metrics, env, keep)
    } catch (err) {
      // Building failed (an unreadable TLS file, no Vault address): the running routes stay.
      return this.refuse(err)
    }
    try {
      server.reconfigure(routes)
    } catch (err) {
      const kept = new Set(keep.values())
      for (const route of routes)
        if (!kept.has(route.credentials)) void route.credentials.close().catch(() => undefined)
      return this.refuse(err)
    }
    logger.level = next.log.level
    this.running = next
    server.metrics.configReload('applied')
    if (needsRestart.length > 0)
      logger.warn(
        { keys: needsRestart },
        'configuration reload: these settings take effect only after a restart; their running values stay',
      )
    // Key names only: values may be secrets (vault.auth.token).
    logger.info(
      { changed: changed.filter((k) => !needsRestart.includes(k)), newCredentialSource: credentialsChanged },
      'configuration reloaded; new sessions use it, open sessions keep theirs',
    )
    return true
  }

  private refuse(err: unknown): false {
    const problems = err instanceof ConfigError ? err.problems : [err instanceof Error ? err.message : String(err)]
    this.deps.logger.error({ problems }, 'configuration reload refused; the running configuration stays in force')
    this.deps.server.metrics.configReload('refused')
    return false
  }
}

/** Dotted paths of the leaf keys whose values differ. */
export function changedKeys(before: unknown, after: unknown, prefix = ''): string[] {
  if (isPlainObject(before) && isPlainObject(after)) {
    const keys = new Set([...Object.keys(before), ...Object.keys(after)])
    return [...keys].sort().flatMap((key) => changedKeys(before[key], after[key], prefix ? `${prefix}.${key}` : key))
  }
  return isDeepStrictEqual(before, after) ? [] : [prefix]
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}
