import type { Socket } from 'node:net'
import type { Logger } from 'pino'
import {
  encodeAuthenticationOk,
  encodeBackendKeyData,
  encodeErrorResponse,
  encodeNegotiateProtocolVersion,
  encodeParameterStatus,
  encodeReadyForQuery,
  errorFields,
} from '../pgwire/backend-messages.js'
import { ConnectionClosedError, FramingError } from '../pgwire/message-reader.js'
import { StartupPacketError, type StartupParameter } from '../pgwire/startup-packet.js'
import type { CredentialSource, DbCredential } from '../vault/credential-source.js'
import type { CancelRegistry } from './cancel-registry.js'
import { readClientGreeting, startupRefusal } from './client-handshake.js'
import { ProxyError, UpstreamRefusedError } from './proxy-error.js'
import { Relay, type RelayResult } from './relay.js'
import { splitClientStartup, type ClientStartup } from './startup-parameters.js'
import { TransactionTracker } from './transaction-tracker.js'
import type { UpstreamConnector, UpstreamSession } from './upstream-connector.js'

export interface SessionSettings {
  ownerRole: string
  /** upstream.database; the client's database when unset. */
  database: string | undefined
  startupTimeoutMs: number
}

/** What every session shares, handed in by the proxy server. */
export interface SessionContext {
  settings: SessionSettings
  connector: UpstreamConnector
  credentials: CredentialSource
  cancels: CancelRegistry
  /** False when the client would exceed max_client_connections. */
  admit(): boolean
  logger: Logger
}

export const SessionPhase = {
  Handshake: 'handshake',
  Login: 'login',
  Relay: 'relay',
  Closed: 'closed',
} as const
export type SessionPhase = (typeof SessionPhase)[keyof typeof SessionPhase]

/**
 * One client connection, start to end: read its startup packet, log in upstream with a credential
 * from the CredentialSource and the owner role as the `role` startup parameter, greet the client
 * only once the upstream is ready, then relay. Any failure before the relay becomes one FATAL
 * ErrorResponse for this client alone.
 */
export class ClientSession {
  phase: SessionPhase = SessionPhase.Handshake
  private relay: Relay | undefined
  private readonly startedAt = Date.now()
  private readonly log: Logger

  constructor(
    private readonly socket: Socket,
    private readonly context: SessionContext,
    readonly id: number,
  ) {
    this.log = context.logger.child({ session: id, client: describePeer(socket) })
  }

  async run(): Promise<void> {
    const { socket } = this
    socket.on('error', (err: NodeJS.ErrnoException) => this.log.debug({ err: err.code }, 'client socket error'))
    // PostgreSQL closes silently when the startup packet does not arrive in time.
    const timer = setTimeout(() => socket.destroy(), this.context.settings.startupTimeoutMs)
    try {
      const greeting = await readClientGreeting(socket)
      clearTimeout(timer)
      if (greeting.kind === 'CancelRequest') {
        await this.context.cancels.cancel(greeting.processId, greeting.secretKey)
        socket.end()
        return
      }
      this.phase = SessionPhase.Login
      const { packet, reader } = greeting
      if (!this.context.admit()) {
        throw new ProxyError('too_many_clients', {
          sqlState: '53300',
          message: 'sorry, too many clients already (pg-vault-proxy max_client_connections reached)',
          hint: 'Raise max_client_connections in the proxy configuration, or close idle connections.',
        })
      }
      const startup = splitClientStartup(packet.parameters)
      if (startup.stripped.length > 0)
        this.log.debug({ stripped: startup.stripped }, 'removed client startup parameters the proxy owns')
      const upstream = await this.loginUpstream(startup)
      // The credential stays held until the session ends, so its lease is never revoked under it.
      const { release } = upstream
      try {
        this.startRelay(upstream, startup, packet.minorVersion, reader.detach())
        const result = await (this.relay as Relay).done
        this.logEnd(result, upstream.credential)
      } finally {
        release()
      }
    } catch (err) {
      clearTimeout(timer)
      this.refuse(err)
    } finally {
      this.phase = SessionPhase.Closed
    }
  }

  /** Ends the session for shutdown. */
  stop(): void {
    if (this.relay) this.relay.stop()
    else this.socket.destroy()
  }

  /**
   * Logs in upstream. The credential is held (`use`) from the moment it is handed out, so a lease
   * cannot be revoked while this session is still logging in with it; the caller releases it.
   */
  private async loginUpstream(
    startup: ClientStartup,
  ): Promise<{ session: UpstreamSession; credential: DbCredential; release: () => void }> {
    const { credentials } = this.context
    const credential = await credentials.get()
    try {
      return await this.connectWith(startup, credential)
    } catch (err) {
      // A refused credential may have been rotated or revoked: one fresh credential, one retry.
      if (!(err instanceof UpstreamRefusedError) || !['28P01', '28000'].includes(err.sqlState)) throw err
      this.log.warn(
        { user: credential.username, origin: credential.origin, sqlState: err.sqlState },
        'upstream refused the credential',
      )
      if (!(await credentials.invalidate(credential))) throw err
      return this.connectWith(startup, await credentials.get())
    }
  }

  private async connectWith(
    startup: ClientStartup,
    credential: DbCredential,
  ): Promise<{ session: UpstreamSession; credential: DbCredential; release: () => void }> {
    const release = this.context.credentials.use(credential)
    try {
      const session = await this.context.connector.connect(this.upstreamParameters(startup, credential), credential)
      return { session, credential, release }
    } catch (err) {
      release()
      throw err
    }
  }

  private upstreamParameters(startup: ClientStartup, credential: DbCredential): StartupParameter[] {
    const { settings } = this.context
    return [
      ['user', credential.username],
      ['database', settings.database ?? startup.database ?? startup.clientUser],
      ...startup.forwarded,
      // Last, so nothing the client sent can override it. As a startup parameter (not SET ROLE),
      // RESET ROLE and DISCARD ALL return to it, and a missing role or grant fails the login cleanly.
      ['role', settings.ownerRole],
    ]
  }

  private startRelay(
    login: { session: UpstreamSession; credential: DbCredential },
    startup: ClientStartup,
    minorVersion: number,
    clientPending: Buffer,
  ): void {
    const { session: upstream, credential } = login
    const tracker = new TransactionTracker()
    tracker.status = upstream.transactionStatus
    const { cancels, connector } = this.context
    const key = cancels.register(async () => {
      // Only a busy session is cancelled: a late cancel must not hit the client's next statement.
      if (!tracker.isBusy) return
      this.log.info('forwarding cancel request')
      await connector
        .cancel(upstream.processId, upstream.secretKey)
        .catch((err: Error) => this.log.warn({ err: err.message }, 'cancel forwarding failed'))
    })
    this.socket.once('close', () => cancels.unregister(key.processId))

    const greeting: Buffer[] = []
    if (minorVersion > 0 || startup.unsupportedProtocolOptions.length > 0) {
      greeting.push(encodeNegotiateProtocolVersion(0, startup.unsupportedProtocolOptions))
    }
    greeting.push(encodeAuthenticationOk())
    for (const [name, value] of upstream.parameters) greeting.push(encodeParameterStatus(name, value))
    greeting.push(
      encodeBackendKeyData(key.processId, key.secretKey),
      ...upstream.notices,
      encodeReadyForQuery(upstream.transactionStatus),
    )
    this.socket.write(Buffer.concat(greeting))

    this.phase = SessionPhase.Relay
    this.log.info(
      {
        upstreamUser: credential.username,
        upstreamPid: upstream.processId,
        auth: upstream.authMethod,
        tls: upstream.isTls,
      },
      'session started',
    )
    this.relay = new Relay({
      client: this.socket,
      upstream: upstream.socket,
      clientPending,
      upstreamPending: upstream.pending,
      tracker,
      upstreamProcessId: upstream.processId,
      clientProcessId: key.processId,
    }).start()
  }

  private refuse(err: unknown): void {
    const { socket } = this
    if (err instanceof StartupPacketError) {
      const reply = startupRefusal(err)
      this.log.debug({ reason: err.message }, 'startup packet refused')
      if (reply) socket.end(reply)
      else socket.destroy()
      return
    }
    if (err instanceof FramingError || err instanceof ConnectionClosedError) {
      this.log.debug({ reason: err.message }, 'client closed or sent junk during startup')
      socket.destroy()
      return
    }
    if (err instanceof ProxyError) {
      this.log.warn({ reason: err.reason, sqlState: err.clientError.sqlState, msg_: err.message }, 'session refused')
      socket.end(encodeErrorResponse(err.fields()))
      return
    }
    this.log.error({ err }, 'internal error in session')
    socket.end(
      encodeErrorResponse(
        errorFields({
          severity: 'FATAL',
          sqlState: 'XX000',
          message: `pg-vault-proxy internal error (session ${this.id}); see the proxy log`,
        }),
      ),
    )
  }

  private logEnd(result: RelayResult, credential: DbCredential): void {
    this.log.info(
      {
        ...result,
        upstreamUser: credential.username,
        credential: credential.origin,
        durationMs: Date.now() - this.startedAt,
      },
      'session ended',
    )
  }
}

function describePeer(socket: Socket): string {
  return socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix'
}
