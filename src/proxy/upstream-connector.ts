import type { Socket } from 'node:net'
import { connect as tlsConnect, type TLSSocket } from 'node:tls'
import { serialize } from 'pg-protocol'
import {
  decodeErrorFields,
  decodeParameterStatus,
  encodeMessage,
  type ErrorFields,
} from '../pgwire/backend-messages.js'
import { AuthCode, BackendCode, MAX_STARTUP_PACKET_BODY, type TransactionStatus } from '../pgwire/codes.js'
import { encodeStartupMessage } from '../pgwire/frontend-messages.js'
import { md5PasswordResponse } from '../pgwire/md5-password.js'
import { sharedParameterString } from '../pgwire/parameter-strings.js'
import {
  ConnectionClosedError,
  FramingError,
  MessageReader,
  MessageTooLongError,
  describeCode,
  type TypedMessage,
} from '../pgwire/message-reader.js'
import { quoteIdent } from '../pgwire/sql-text.js'
import {
  ScramClient,
  ScramError,
  ScramKeyCache,
  chooseScramMechanism,
  type ChannelBindingMode,
} from '../pgwire/scram-client.js'
import type { StartupParameter } from '../pgwire/startup-packet.js'
import { ChannelBindingError, tlsServerEndPointHash } from '../pgwire/tls-server-end-point.js'
import type { DbCredential } from '../vault/credential-source.js'
import { ProxyError, UpstreamRefusedError } from './proxy-error.js'
import type { UpstreamEndpoint } from './upstream-endpoint.js'

/** An authenticated upstream session that has sent ReadyForQuery. */
export interface UpstreamSession {
  socket: Socket
  processId: number
  secretKey: Buffer
  /** ParameterStatus values in arrival order, latest value per name. */
  parameters: Map<string, string>
  /** Raw NoticeResponse messages received during startup, for the client. */
  notices: Buffer[]
  transactionStatus: TransactionStatus
  /** Bytes received after ReadyForQuery, which the relay must forward first. */
  pending: Buffer
  isTls: boolean
  authMethod: string
}

export interface UpstreamLoginOptions {
  connectTimeoutMs: number
  channelBinding: ChannelBindingMode
  allowCleartextPassword: boolean
}

/**
 * Everything the upstream may send during login, in total: the authentication exchange,
 * ParameterStatus, NoticeResponse, BackendKeyData. PostgreSQL sends a few kilobytes (a notice from
 * a login event trigger or an extension may add some); the cap bounds what a hostile or broken
 * server can make one login hold or parse.
 */
export const MAX_LOGIN_BYTES = 1 << 20
const CANCEL_TIMEOUT_MS = 5_000

/**
 * Opens upstream sessions: dials, negotiates TLS as sslmode says, sends the StartupMessage, answers
 * the server's authentication request, and reads until ReadyForQuery so that every failure before
 * the session runs can still be reported to the client as a startup error.
 */
export class UpstreamConnector {
  constructor(
    readonly endpoint: UpstreamEndpoint,
    private readonly options: UpstreamLoginOptions,
    private readonly keyCache: ScramKeyCache = new ScramKeyCache(),
  ) {}

  async connect(parameters: readonly StartupParameter[], credential: DbCredential): Promise<UpstreamSession> {
    const { endpoint } = this
    const startup = encodeStartupMessage(parameters)
    if (startup.length - 4 > MAX_STARTUP_PACKET_BODY) {
      // The server would close without a word; say why instead.
      throw new ProxyError('startup_packet_too_long', {
        sqlState: '54000',
        message: `pg-vault-proxy: the upstream startup packet would be ${startup.length - 4} bytes, over PostgreSQL's limit of ${MAX_STARTUP_PACKET_BODY}, once the login user and owner role are added`,
        hint: 'Send fewer or shorter startup parameters (options, application_name, ...).',
      })
    }
    try {
      return await this.attempt(startup, credential, endpoint.triesTlsFirst)
    } catch (err) {
      // libpq's sslmode=allow: plaintext first, and one TLS attempt if the server refused it.
      if (endpoint.retriesWithTls && err instanceof UpstreamRefusedError) {
        return this.attempt(startup, credential, true)
      }
      throw err
    }
  }

  /**
   * Forwards a CancelRequest to the upstream backend and waits until the server closes. `stillWanted`
   * is asked again just before sending: the dial takes time, and the query may have ended meanwhile.
   */
  async cancel(processId: number, secretKey: Buffer, stillWanted: () => boolean = () => true): Promise<void> {
    const signal = AbortSignal.timeout(CANCEL_TIMEOUT_MS)
    let socket = await this.endpoint.dial(signal)
    const onAbort = (): void => void socket.destroy()
    signal.addEventListener('abort', onAbort, { once: true })
    try {
      if (this.endpoint.triesTlsFirst) socket = await this.negotiateTls(socket, new MessageReader(socket))
      socket.resume()
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()))
      socket.on('error', () => {})
      if (!stillWanted()) return
      socket.write(serialize.cancel(processId, secretKey.readInt32BE(0)))
      await closed
    } finally {
      signal.removeEventListener('abort', onAbort)
      socket.destroy()
    }
  }

  private async attempt(startup: Buffer, credential: DbCredential, useTls: boolean): Promise<UpstreamSession> {
    const signal = AbortSignal.timeout(this.options.connectTimeoutMs)
    let socket = await this.endpoint.dial(signal)
    const onAbort = (): void => void socket.destroy()
    signal.addEventListener('abort', onAbort, { once: true })
    const reader = new MessageReader(socket)
    try {
      if (useTls) socket = await this.negotiateTls(socket, reader)
      socket.write(startup)
      const session = await this.login(socket, reader, credential)
      return session
    } catch (err) {
      socket.destroy()
      if (signal.aborted)
        throw this.endpoint.unreachable(`timed out after ${this.options.connectTimeoutMs} ms`, err as Error)
      if (err instanceof ConnectionClosedError) {
        throw this.endpoint.unreachable('the server closed the connection during startup', err)
      }
      if (err instanceof FramingError) throw this.protocolError(err.message, err)
      throw err
    } finally {
      signal.removeEventListener('abort', onAbort)
    }
  }

  /** SSLRequest, then exactly one byte of answer; TLS over the same socket on 'S'. */
  private async negotiateTls(socket: Socket, reader: MessageReader): Promise<Socket> {
    socket.write(serialize.requestSsl())
    const answer = await reader.readByte()
    if (answer === 0x53 /* S */) {
      // Bytes that arrived before the handshake were not protected by TLS (CVE-2021-23222).
      if (reader.pendingBytes > 0) throw this.protocolError('received unencrypted data after the SSL response')
      reader.detach()
      const tls = await this.startTls(socket)
      reader.replaceSocket(tls)
      return tls
    }
    if (answer === 0x4e /* N */) {
      if (this.endpoint.requiresTls) {
        throw new ProxyError('upstream_tls_unavailable', {
          sqlState: '08001',
          message: `pg-vault-proxy requires TLS to the upstream server at ${this.endpoint.address} (upstream.sslmode is ${this.endpoint.sslmode}), but the server does not support it`,
          hint: 'Enable ssl on the PostgreSQL server, or lower upstream.sslmode.',
        })
      }
      return socket
    }
    // An error answer to SSLRequest comes from an unauthenticated server: do not show its text (CVE-2024-10977).
    throw this.protocolError(`the server answered the SSL request with ${describeCode(answer)}`)
  }

  private async startTls(socket: Socket): Promise<TLSSocket> {
    const tls = tlsConnect(this.endpoint.tlsOptions(socket))
    return new Promise<TLSSocket>((resolve, reject) => {
      tls.once('secureConnect', () => {
        tls.removeAllListeners('error')
        tls.setNoDelay(true)
        resolve(tls)
      })
      tls.once('error', (err: NodeJS.ErrnoException) => {
        tls.destroy()
        reject(
          new ProxyError(
            'upstream_tls_failed',
            {
              sqlState: '08001',
              message: `pg-vault-proxy could not establish TLS with the upstream server at ${this.endpoint.address} (sslmode ${this.endpoint.sslmode}): ${err.message}`,
              hint: this.endpoint.verifiesHostName
                ? 'The server certificate must be signed by upstream.sslrootcert and name upstream.host.'
                : 'The server certificate must be signed by upstream.sslrootcert.',
            },
            { cause: err },
          ),
        )
      })
    })
  }

  private async login(socket: Socket, reader: MessageReader, credential: DbCredential): Promise<UpstreamSession> {
    const isTls = 'encrypted' in socket
    const parameters = new Map<string, string>()
    const notices: Buffer[] = []
    let scram: ScramClient | undefined
    let authenticated = false
    let authMethod = 'trust'
    let processId: number | undefined
    let secretKey: Buffer | undefined
    let received = 0

    for (;;) {
      const { code, body } = await this.readLoginMessage(reader, received)
      received += 5 + body.length
      switch (code) {
        case BackendCode.Authentication: {
          if (body.length < 4) throw this.protocolError('truncated authentication request')
          const request = body.readInt32BE(0)
          if (authenticated) throw this.protocolError('authentication request after AuthenticationOk')
          this.checkChannelBinding(request, scram)
          if (request === AuthCode.Ok) {
            if (scram && !scram.isComplete)
              throw this.protocolError('the server ended SCRAM authentication without proving it knows the password')
            authenticated = true
            break
          }
          authMethod =
            (await this.answerAuthentication(request, body, socket, credential, isTls, scram, (s) => (scram = s))) ??
            authMethod
          break
        }
        case BackendCode.ErrorResponse:
          throw this.refused(decodeErrorFields(body), credential)
        case BackendCode.NoticeResponse:
          notices.push(encodeMessage(code, body))
          break
        case BackendCode.ParameterStatus: {
          const reported = decodeParameterStatus(body)
          if (!reported) throw this.protocolError('malformed ParameterStatus')
          const name = sharedParameterString(reported[0])
          parameters.delete(name) // keep arrival order of the latest value
          parameters.set(name, sharedParameterString(reported[1]))
          break
        }
        case BackendCode.BackendKeyData:
          // We always ask for protocol 3.0, whose cancel key is exactly 4 bytes.
          if (body.length !== 8) throw this.protocolError(`BackendKeyData of ${body.length} bytes`)
          processId = body.readUInt32BE(0)
          // A buffer of its own: a small Buffer.from() is a slice of a shared 8 KiB pool, which one
          // session holding its key for hours would keep alive whole.
          secretKey = Buffer.allocUnsafeSlow(4)
          body.copy(secretKey, 0, 4)
          break
        case BackendCode.ReadyForQuery: {
          if (!authenticated) throw this.protocolError('ReadyForQuery before authentication')
          const status = String.fromCharCode(body[0] ?? 0)
          if (status !== 'I' && status !== 'T' && status !== 'E') throw this.protocolError('malformed ReadyForQuery')
          if (processId === undefined || secretKey === undefined) {
            throw this.protocolError('the server sent no BackendKeyData, so queries could not be cancelled')
          }
          return {
            socket,
            processId,
            secretKey,
            parameters,
            notices,
            transactionStatus: status,
            pending: reader.detach(),
            isTls,
            authMethod,
          }
        }
        default:
          throw this.protocolError(`unexpected message ${describeCode(code)} during startup`)
      }
    }
  }

  /** The next login message, if it fits in what is left of MAX_LOGIN_BYTES (a 5-byte header and its body). */
  private async readLoginMessage(reader: MessageReader, received: number): Promise<TypedMessage> {
    const room = MAX_LOGIN_BYTES - received - 5
    if (room < 0) throw this.loginTooLarge()
    try {
      return await reader.readMessage(room)
    } catch (err) {
      // A length no login message could have is a broken server; one that only overflows the total is a flood.
      if (err instanceof MessageTooLongError && err.length - 4 <= MAX_LOGIN_BYTES) throw this.loginTooLarge()
      throw err
    }
  }

  private loginTooLarge(): ProxyError {
    return new ProxyError('upstream_login_too_large', {
      sqlState: '08001',
      message: `pg-vault-proxy: the upstream server at ${this.endpoint.address} sent more than ${MAX_LOGIN_BYTES} bytes during login (parameter status messages, notices), more than any PostgreSQL server sends; the login was abandoned`,
      hint: 'Check that upstream.host and upstream.port point at a PostgreSQL server, and what it sends at login (login event triggers, extensions).',
    })
  }

  /**
   * channel_binding=require, as libpq (fe-auth.c, check_expected_areq): only SASL requests are
   * answered, and AuthenticationOk counts only after a verified SCRAM-SHA-256-PLUS exchange. A
   * spoofed server can answer anything else without knowing the password, and must learn nothing
   * from us.
   */
  private checkChannelBinding(request: number, scram: ScramClient | undefined): void {
    if (this.options.channelBinding !== 'require') return
    switch (request) {
      case AuthCode.SASL:
      case AuthCode.SASLContinue:
      case AuthCode.SASLFinal:
        return
      case AuthCode.Ok:
        if (scram?.isChannelBound) return
        throw this.channelBindingRefused(
          scram
            ? 'the server accepted the login before completing SCRAM-SHA-256-PLUS'
            : 'the server accepted the login without any authentication exchange',
        )
      default:
        throw this.channelBindingRefused(
          `the server asked for ${authName(request)} authentication, which cannot bind to the TLS connection`,
        )
    }
  }

  private async answerAuthentication(
    request: number,
    body: Buffer,
    socket: Socket,
    credential: DbCredential,
    isTls: boolean,
    scram: ScramClient | undefined,
    setScram: (client: ScramClient) => void,
  ): Promise<string | undefined> {
    const { password, username } = credential
    switch (request) {
      case AuthCode.CleartextPassword:
        if (!this.options.allowCleartextPassword && !(isTls && this.endpoint.verifiesHostName)) {
          throw new ProxyError('upstream_cleartext_refused', {
            sqlState: '08001',
            message: `pg-vault-proxy refused to send a cleartext password to the upstream server at ${this.endpoint.address}: its identity is not verified`,
            hint: 'Use upstream.sslmode verify-full, or configure scram-sha-256 in pg_hba.conf; set upstream.allow_cleartext_password: true only if you accept the risk.',
          })
        }
        socket.write(serialize.password(password))
        return 'password'
      case AuthCode.MD5Password:
        if (body.length !== 8) throw this.protocolError('malformed MD5 authentication request')
        socket.write(serialize.password(md5PasswordResponse(username, password, body.subarray(4, 8))))
        return 'md5'
      case AuthCode.SASL: {
        const mechanisms = body
          .toString('utf8', 4)
          .split('\0')
          .filter((m) => m !== '')
        const { channelBinding } = this.options
        const mechanism = this.guardScram(() => chooseScramMechanism(mechanisms, isTls, channelBinding))
        const client = new ScramClient({
          password,
          mechanism,
          channelBindingData:
            mechanism === 'SCRAM-SHA-256-PLUS' ? this.channelBindingData(socket as TLSSocket) : undefined,
          bindingSupported: isTls && channelBinding !== 'disable',
          keyCache: this.keyCache,
        })
        setScram(client)
        socket.write(serialize.sendSASLInitialResponseMessage(mechanism, client.clientFirstMessage().toString('utf8')))
        return mechanism
      }
      case AuthCode.SASLContinue: {
        if (!scram) throw this.protocolError('SASLContinue without SASL')
        const final = await this.guardScramAsync(() => scram.clientFinalMessage(body.subarray(4)))
        socket.write(serialize.sendSCRAMClientFinalMessage(final.toString('utf8')))
        return undefined
      }
      case AuthCode.SASLFinal:
        if (!scram) throw this.protocolError('SASLFinal without SASL')
        this.guardScram(() => scram.verifyServerFinal(body.subarray(4)))
        return undefined
      default:
        throw new ProxyError('upstream_auth_unsupported', {
          sqlState: '08001',
          message: `pg-vault-proxy cannot answer the upstream server's authentication request (${authName(request)}) at ${this.endpoint.address}`,
          hint: 'pg-vault-proxy logs in with scram-sha-256, md5 or password authentication; change the pg_hba.conf line for the proxy login user.',
        })
    }
  }

  /** As libpq, a certificate whose hash cannot be computed (e.g. Ed25519) fails the login, never falls back. */
  private channelBindingData(socket: TLSSocket): Buffer {
    try {
      return tlsServerEndPointHash(socket.getPeerCertificate().raw)
    } catch (err) {
      if (err instanceof ChannelBindingError) throw this.scramFailed(new ScramError(err.message, { cause: err }))
      throw err
    }
  }

  private guardScram<T>(step: () => T): T {
    try {
      return step()
    } catch (err) {
      if (err instanceof ScramError) throw this.scramFailed(err)
      throw err
    }
  }

  private async guardScramAsync<T>(step: () => Promise<T>): Promise<T> {
    try {
      return await step()
    } catch (err) {
      if (err instanceof ScramError) throw this.scramFailed(err)
      throw err
    }
  }

  private scramFailed(err: ScramError): ProxyError {
    if (this.options.channelBinding === 'require') return this.channelBindingRefused(err.message, err)
    return new ProxyError(
      'upstream_scram_failed',
      {
        sqlState: '08001',
        message: `pg-vault-proxy: SCRAM authentication with the upstream server at ${this.endpoint.address} failed: ${err.message}`,
        hint: 'The upstream may not be the server you expect; check upstream.host and upstream.channel_binding.',
      },
      { cause: err },
    )
  }

  private channelBindingRefused(why: string, cause?: Error): ProxyError {
    return new ProxyError(
      'upstream_channel_binding_failed',
      {
        sqlState: '08001',
        message: `pg-vault-proxy: channel binding is required (upstream.channel_binding: require), but the upstream server at ${this.endpoint.address} did not complete SCRAM-SHA-256-PLUS: ${why}`,
        hint: 'A server that cannot prove it knows the password over this TLS connection may not be the server you expect. The real one needs TLS and scram-sha-256 in pg_hba.conf for the login user; lower upstream.channel_binding only if you accept an unauthenticated server.',
      },
      { cause },
    )
  }

  private protocolError(why: string, cause?: Error): ProxyError {
    return new ProxyError(
      'upstream_protocol_error',
      {
        sqlState: '08001',
        message: `pg-vault-proxy: the upstream server at ${this.endpoint.address} broke the protocol: ${why}`,
        hint: 'Check that upstream.host and upstream.port point at a PostgreSQL server.',
      },
      { cause },
    )
  }

  /** The client sees the upstream's own FATAL; the proxy adds who logged in and what to fix. */
  private refused(fields: ErrorFields, credential: DbCredential): UpstreamRefusedError {
    const sqlState = fields.get('C')
    const message = fields.get('M') ?? ''
    const user = credential.username
    const role = /"([^"]*)"/.exec(message)?.[1]
    if (sqlState === '28P01' || sqlState === '28000') {
      fields.set('M', `pg-vault-proxy: the upstream server refused the login as "${user}": ${message}`)
      return new UpstreamRefusedError(
        fields,
        `The credential from ${credential.origin} was rejected by ${this.endpoint.address}; it may be wrong, expired or revoked, or pg_hba.conf may not allow it.`,
      )
    }
    if (sqlState === '42501' && /set role/i.test(message)) {
      return new UpstreamRefusedError(
        fields,
        `The login user "${user}" is not a member of the owner role. Fix: GRANT ${quoteIdent(role ?? 'owner_role')} TO ${quoteIdent(user)}; (or add the GRANT to the statements that create the login user).`,
      )
    }
    if ((sqlState === '22023' || sqlState === '42704') && /role/i.test(message)) {
      return new UpstreamRefusedError(
        fields,
        `The owner role ${role ? `"${role}" ` : ''}does not exist on the upstream server. Create it (CREATE ROLE ${quoteIdent(role ?? 'owner_role')} NOLOGIN;) and GRANT it to the login user, or fix owner_role in the proxy configuration.`,
      )
    }
    if (!fields.has('D'))
      fields.set('D', `Reported to pg-vault-proxy by the upstream server at ${this.endpoint.address}.`)
    return new UpstreamRefusedError(fields)
  }
}

function authName(request: number): string {
  switch (request) {
    case AuthCode.KerberosV5:
      return 'Kerberos V5'
    case AuthCode.CleartextPassword:
      return 'cleartext password'
    case AuthCode.MD5Password:
      return 'MD5 password'
    case AuthCode.GSS:
    case AuthCode.GSSContinue:
      return 'GSSAPI'
    case AuthCode.SSPI:
      return 'SSPI'
    default:
      return `authentication code ${request}`
  }
}
