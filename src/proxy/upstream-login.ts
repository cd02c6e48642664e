import type { StartupParameter } from '../pgwire/startup-packet.js'
import type { CredentialSource, DbCredential } from '../vault/credential-source.js'
import { UpstreamRefusedError } from './proxy-error.js'
import { ServerConnection } from './server-connection.js'
import type { UpstreamConnector } from './upstream-connector.js'

/**
 * The startup parameters of every upstream login: the credential's user, the database, what the
 * client forwarded, and the owner role. A client's own login and the pool's pre-warmed logins both
 * use this, so a pre-warmed connection is exactly what a fresh login for the same client gives.
 */
export function upstreamStartupParameters(
  credential: DbCredential,
  database: string,
  forwarded: readonly StartupParameter[],
  ownerRole: string,
): StartupParameter[] {
  return [
    ['user', credential.username],
    ['database', database],
    ...forwarded,
    // Last, so nothing the client sent can override it. As a startup parameter (not SET ROLE),
    // RESET ROLE and DISCARD ALL return to it, and a missing role or grant fails the login cleanly.
    ['role', ownerRole],
  ]
}

/** Whether an upstream refusal may mean the credential was rotated or revoked (worth one fresh credential). */
export function refusedCredential(err: unknown): err is UpstreamRefusedError {
  return err instanceof UpstreamRefusedError && ['28P01', '28000'].includes(err.sqlState)
}

/** What a route logs in upstream with, outside any client session (the pool's pre-warming). */
export interface RouteLogin {
  credentials: CredentialSource
  connector: UpstreamConnector
  ownerRole: string
}

/**
 * Logs in a server connection for a pool `target` with the route's current credential,
 * held from the moment it is handed out; a refused credential gets one fresh credential and one
 * retry, as a client's login does (ClientSession.loginUpstream).
 */
export async function loginForRoute(
  route: RouteLogin,
  target: { key: string; database: string; forwarded: readonly StartupParameter[] },
): Promise<ServerConnection> {
  const attempt = async (credential: DbCredential): Promise<ServerConnection> => {
    const hold = route.credentials.use(credential)
    try {
      const parameters = upstreamStartupParameters(credential, target.database, target.forwarded, route.ownerRole)
      const session = await route.connector.connect(parameters, credential)
      return new ServerConnection(session, credential, hold, target.key, 'opened')
    } catch (err) {
      hold.release()
      throw err
    }
  }
  const credential = await route.credentials.get()
  try {
    return await attempt(credential)
  } catch (err) {
    if (!refusedCredential(err) || !(await route.credentials.invalidate(credential))) throw err
    return attempt(await route.credentials.get())
  }
}
