import type { Logger } from 'pino'
import type { Config } from '../config/load-config.js'
import { ScramKeyCache } from '../pgwire/scram-client.js'
import { StaticCredentialSource } from '../vault/static-source.js'
import type { CredentialSource } from '../vault/credential-source.js'
import { ProxyServer } from './proxy-server.js'
import { UpstreamConnector } from './upstream-connector.js'
import { UpstreamEndpoint } from './upstream-endpoint.js'

/** Composition root: turns a validated Config into a ready-to-start ProxyServer. */
export function createProxyServer(config: Config, logger: Logger): ProxyServer {
  const { upstream } = config
  const endpoint = new UpstreamEndpoint(upstream)
  const connector = new UpstreamConnector(
    endpoint,
    {
      connectTimeoutMs: upstream.connect_timeout_ms,
      channelBinding: upstream.channel_binding,
      allowCleartextPassword: upstream.allow_cleartext_password,
    },
    new ScramKeyCache(),
  )
  return new ProxyServer({
    listen: config.listen,
    allowRemote: config.allow_remote,
    socketDir: config.socket_dir,
    socketMode: parseInt(config.socket_mode, 8),
    maxClientConnections: config.max_client_connections,
    settings: {
      ownerRole: config.owner_role,
      database: upstream.database,
      startupTimeoutMs: config.startup_timeout_ms,
    },
    connector,
    credentials: createCredentialSource(config, logger),
    logger,
  })
}

function createCredentialSource(config: Config, logger: Logger): CredentialSource {
  const source = config.credentials.static
  if (!source) throw new Error('credentials: no credential source configured')
  if (source.password !== undefined) {
    logger.warn(
      'credentials.static.password is written inline in the config file; prefer credentials.static.password_file',
    )
  }
  return new StaticCredentialSource({
    username: source.username,
    password: source.password,
    passwordFile: source.password_file,
  })
}
