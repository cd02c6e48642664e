import type { Logger } from 'pino'
import { resolveVaultSettings } from '../config/vault-settings.js'
import type { Config } from '../config/load-config.js'
import type { ParsedConfig } from '../config/schema.js'
import {
  noMetrics,
  ProxyMetrics,
  type CredentialMetrics,
  type PoolMetrics,
  type VaultRequestMetrics,
} from '../ops/metrics.js'
import { ScramKeyCache } from '../pgwire/scram-client.js'
import type { CredentialSource } from '../vault/credential-source.js'
import { DynamicCredentialSource } from '../vault/dynamic-source.js'
import { KvCredentialSource } from '../vault/kv-source.js'
import { StaticCredentialSource } from '../vault/static-source.js'
import { StaticRoleCredentialSource } from '../vault/static-role-source.js'
import { VaultAuthenticator } from '../vault/vault-authenticator.js'
import { VaultClient } from '../vault/vault-client.js'
import { VaultSession } from '../vault/vault-session.js'
import { listenerKey, ProxyServer, type ListenerSpec, type RouteProfile, type SessionProfile } from './proxy-server.js'
import { ServerPool } from './server-pool.js'
import { UpstreamConnector } from './upstream-connector.js'
import { UpstreamEndpoint } from './upstream-endpoint.js'
import { loginForRoute } from './upstream-login.js'

/** Composition root: turns a validated Config into a ready-to-start ProxyServer. */
export function createProxyServer(config: Config, logger: Logger, env: NodeJS.ProcessEnv = process.env): ProxyServer {
  const metrics = new ProxyMetrics({ processMetrics: true })
  return new ProxyServer({
    listeners: listenersOf(config),
    allowRemote: config.allow_remote,
    socketMode: parseInt(config.socket_mode, 8),
    routes: createRouteProfiles(config, logger, metrics, env),
    maxStartupConnections: config.max_startup_connections,
    logger,
    metrics,
  })
}

/** One TCP listener (and Unix socket) per distinct `listen` address among the routes. */
export function listenersOf(config: Config): ListenerSpec[] {
  const listeners = new Map<string, ListenerSpec>()
  for (const { config: route } of config.routes) {
    const key = listenerKey(route.listen)
    const known = listeners.get(key)
    if (!known) listeners.set(key, { listen: route.listen, socketDir: route.socket_dir })
    else known.socketDir ??= route.socket_dir
  }
  return [...listeners.values()]
}

/**
 * Every route's profile. `keep` maps route names to running credential sources that a reload may
 * reuse (their settings did not change), so a reload costs no new Vault login and lease.
 */
export function createRouteProfiles(
  config: Config,
  logger: Logger,
  metrics: ProxyMetrics,
  env: NodeJS.ProcessEnv = process.env,
  keep: ReadonlyMap<string, CredentialSource> = new Map(),
): RouteProfile[] {
  return config.routes.map((route) => {
    const profile = createSessionProfile(route.config, logger, metrics, env, keep.get(route.name))
    return {
      ...profile,
      name: route.name,
      users: route.users ? new Set(route.users) : undefined,
      listener: listenerKey(route.config.listen),
      pool: createServerPool(route.name, route.config, profile, metrics, logger),
    }
  })
}

/**
 * The route's pool of logged-in server connections (pool.mode none: one that never keeps any, but
 * still counts them against pool.max_server_connections). It pre-warms with the same login a
 * client's session makes on this route.
 */
export function createServerPool(
  route: string,
  config: Readonly<ParsedConfig>,
  profile: Pick<SessionProfile, 'credentials' | 'connector' | 'settings'>,
  metrics: PoolMetrics,
  logger: Logger,
): ServerPool {
  const { pool } = config
  const { credentials, connector, settings } = profile
  return new ServerPool(
    route,
    {
      mode: pool.mode,
      resetQuery: pool.reset_query,
      maxIdle: pool.max_idle,
      idleTimeoutMs: pool.idle_timeout_ms,
      serverLifetimeMs: pool.server_lifetime_ms,
      maxServerConnections: pool.max_server_connections,
      waitTimeoutMs: pool.wait_timeout_ms,
      minIdle: pool.min_idle,
      serverCheckDelayMs: pool.server_check_delay_ms,
    },
    credentials,
    metrics,
    logger.child({ component: 'pool', route }),
    (target) => loginForRoute({ credentials, connector, ownerRole: settings.ownerRole }, target),
  )
}

/**
 * What new sessions are built from, for a (re)loaded Config. `keepCredentials` is the running
 * profile's source, reused when a reload left the credential settings unchanged, so a reload
 * costs no new Vault login and lease. The connector is always built anew: a reload re-reads the
 * upstream TLS files.
 */
export function createSessionProfile(
  config: Readonly<ParsedConfig>,
  logger: Logger,
  metrics: ProxyMetrics,
  env: NodeJS.ProcessEnv = process.env,
  keepCredentials?: CredentialSource,
): SessionProfile {
  return {
    settings: {
      ownerRole: config.owner_role,
      database: config.upstream.database,
      startupTimeoutMs: config.startup_timeout_ms,
      idleClientTimeoutMs: config.idle_client_timeout_ms,
      rotation: { reconnect: config.rotation.reconnect, strict: config.rotation.strict },
    },
    connector: createUpstreamConnector(config),
    credentials: keepCredentials ?? createCredentialSource(config, logger, env, metrics),
    maxClientConnections: config.max_client_connections,
  }
}

/** The upstream side of the configuration: where PostgreSQL is and how to log in to it. */
export function createUpstreamConnector(config: Readonly<ParsedConfig>): UpstreamConnector {
  const { upstream } = config
  return new UpstreamConnector(
    new UpstreamEndpoint(upstream),
    {
      connectTimeoutMs: upstream.connect_timeout_ms,
      channelBinding: upstream.channel_binding,
      allowCleartextPassword: upstream.allow_cleartext_password,
    },
    new ScramKeyCache(),
  )
}

export function createCredentialSource(
  config: Readonly<ParsedConfig>,
  logger: Logger,
  env: NodeJS.ProcessEnv = process.env,
  metrics: CredentialMetrics & VaultRequestMetrics = noMetrics,
): CredentialSource {
  const { static: fixed, vault, kv, revoke_on_shutdown } = config.credentials
  if (fixed) {
    if (fixed.password !== undefined) {
      logger.warn(
        'credentials.static.password is written inline in the config file; prefer credentials.static.password_file',
      )
    }
    return new StaticCredentialSource(
      {
        username: fixed.username,
        password: fixed.password,
        passwordFile: fixed.password_file,
        log: logger,
      },
      metrics,
    )
  }
  const settings = resolveVaultSettings(config, env)
  const log = logger.child({ component: 'vault' })
  if (settings.client.skipVerify)
    log.warn(
      { address: settings.client.address },
      'TLS verification of Vault is OFF (vault.skip_verify / VAULT_SKIP_VERIFY): anyone on the path can impersonate Vault',
    )
  if (config.vault?.auth.token || config.vault?.auth.secret_id)
    log.warn(
      'a Vault secret is written inline in the config file; prefer vault.auth.token_file or vault.auth.secret_id_file',
    )
  const client = new VaultClient(settings.client, metrics)
  const session = new VaultSession(client, new VaultAuthenticator(client, settings.auth, log), log, metrics)
  if (vault?.role)
    return new DynamicCredentialSource(session, {
      mount: vault.mount,
      role: vault.role,
      revokeOnShutdown: revoke_on_shutdown,
      swapBeforeEndMs: config.rotation.swap_before_end_ms,
    })
  if (vault?.static_role) return StaticRoleCredentialSource.forRole(session, vault.mount, vault.static_role)
  if (kv) return new KvCredentialSource(session, { mount: kv.mount, path: kv.path, refreshSeconds: kv.refresh_seconds })
  throw new Error('credentials: no credential source configured')
}
