import type { Logger } from 'pino'
import type { Config } from '../config/load-config.js'
import { simpleQuery } from '../pgwire/simple-query.js'
import { createCredentialSource, createUpstreamConnector } from '../proxy/create-proxy-server.js'
import { ProxyError } from '../proxy/proxy-error.js'
import type { DbCredential } from '../vault/credential-source.js'

/** A step of `check` that failed; its message is what the operator reads. */
export class CheckFailure extends Error {
  override name = 'CheckFailure'
}

/**
 * `pg-vault-proxy check`: walks the chain a client's connection walks — a credential from its source
 * (which logs in to Vault), the upstream login as the owner role — and reports each step.
 */
export async function runCheck(
  config: Config,
  database: string | undefined,
  logger: Logger,
  out: NodeJS.WritableStream,
): Promise<void> {
  const say = (line: string): boolean => out.write(`${line}\n`)
  say('ok   configuration is valid')
  const credentials = createCredentialSource(config, logger)
  let credential: DbCredential
  try {
    credential = await credentials.get()
  } catch (err) {
    throw new CheckFailure(`credential: ${describe(err)}`)
  }
  say(`ok   credential for "${credential.username}" from ${credential.origin}`)
  const dbName = database ?? config.upstream.database ?? 'postgres'
  const connector = createUpstreamConnector(config)
  try {
    const session = await connector
      .connect(
        [
          ['user', credential.username],
          ['database', dbName],
          ['application_name', 'pg-vault-proxy check'],
          ['role', config.owner_role],
        ],
        credential,
      )
      .catch((err: unknown) => {
        throw new CheckFailure(`upstream login: ${describe(err)}`)
      })
    say(
      `ok   logged in to ${connector.endpoint.address}/${dbName} (${session.authMethod}${session.isTls ? ', TLS' : ''})`,
    )
    const rows = await simpleQuery(session.socket, 'select current_user, session_user', session.pending)
    session.socket.end()
    const [current, sessionUser] = rows[0] ?? []
    say(`ok   current_user=${current} session_user=${sessionUser}`)
    const status = credentials.status()
    if (status.expiresAt !== undefined)
      say(`ok   credential TTL remaining: ${Math.max(0, Math.round((status.expiresAt - Date.now()) / 1000))} s`)
    else say('ok   credential TTL remaining: no expiry known (static or KV credential)')
  } finally {
    await credentials.close()
  }
}

function describe(err: unknown): string {
  if (err instanceof CheckFailure) return err.message
  if (err instanceof ProxyError) return [err.message, err.clientError.hint].filter(Boolean).join(' — ')
  return err instanceof Error ? err.message : String(err)
}
