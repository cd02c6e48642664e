import { readFileSync } from 'node:fs'
import { connect as netConnect, type Socket } from 'node:net'
import { rootCertificates, type ConnectionOptions } from 'node:tls'
import { defaultSslMode, type SslMode } from '../config/schema.js'
import { ProxyError } from './proxy-error.js'

export interface UpstreamEndpointOptions {
  host: string
  port: number
  /** Unset: libpq's default for this sslrootcert. */
  sslmode?: SslMode | undefined
  sslrootcert?: string | undefined
  sslcert?: string | undefined
  sslkey?: string | undefined
}

/**
 * Where the upstream is and how to reach it: TCP or a Unix socket directory (a host starting with
 * "/", as in libpq), and the TLS policy for libpq's sslmode values.
 */
export class UpstreamEndpoint {
  readonly host: string
  readonly port: number
  readonly sslmode: SslMode
  /** A Unix socket path when the host is a directory. */
  readonly socketPath: string | undefined
  private readonly tlsFiles: { ca?: string[] | Buffer; cert?: Buffer; key?: Buffer }

  constructor(options: UpstreamEndpointOptions) {
    this.host = options.host
    this.port = options.port
    this.sslmode = options.sslmode ?? defaultSslMode(options.sslrootcert)
    this.socketPath = options.host.startsWith('/') ? `${options.host}/.s.PGSQL.${options.port}` : undefined
    // Read once at start: a missing file is a configuration error, reported before any client arrives.
    this.tlsFiles = {
      ca:
        options.sslrootcert === 'system'
          ? [...rootCertificates]
          : readTlsFile(options.sslrootcert, 'upstream.sslrootcert'),
      cert: readTlsFile(options.sslcert, 'upstream.sslcert'),
      key: readTlsFile(options.sslkey, 'upstream.sslkey'),
    }
  }

  /** host:port or the socket path, for messages. */
  get address(): string {
    return this.socketPath ?? `${this.host}:${this.port}`
  }

  /** Whether the SSLRequest is sent on the first attempt (no TLS is ever tried over a Unix socket). */
  get triesTlsFirst(): boolean {
    return this.socketPath === undefined && !['disable', 'allow'].includes(this.sslmode)
  }

  /** sslmode allow: a plaintext attempt that fails is retried once with TLS. */
  get retriesWithTls(): boolean {
    return this.socketPath === undefined && this.sslmode === 'allow'
  }

  /** Whether a server that answers N to SSLRequest must be refused. */
  get requiresTls(): boolean {
    return ['require', 'verify-ca', 'verify-full'].includes(this.sslmode)
  }

  /** verify-full: the certificate chain and the host name are both checked. */
  get verifiesHostName(): boolean {
    return this.sslmode === 'verify-full'
  }

  /** Options for tls.connect over an already negotiated socket. */
  tlsOptions(socket: Socket): ConnectionOptions {
    // libpq: with sslmode=require and a root certificate configured, the chain is verified (as verify-ca).
    const verifiesChain =
      this.sslmode === 'verify-ca' ||
      this.sslmode === 'verify-full' ||
      (this.sslmode === 'require' && this.tlsFiles.ca !== undefined)
    const isIp = /^[\d.]+$|:/.test(this.host)
    const options: ConnectionOptions = {
      socket,
      // The name verify-full checks (Node would otherwise fall back to "localhost" for an IP).
      host: this.host,
      ALPNProtocols: ['postgresql'],
      ca: this.tlsFiles.ca,
      cert: this.tlsFiles.cert,
      key: this.tlsFiles.key,
      rejectUnauthorized: verifiesChain,
    }
    if (!isIp) options.servername = this.host
    // verify-ca checks the chain only; Node checks the name unless told not to.
    if (!this.verifiesHostName) options.checkServerIdentity = () => undefined
    return options
  }

  /** Opens the transport (TCP with Nagle off and keepalive on, or the Unix socket). */
  async dial(signal: AbortSignal): Promise<Socket> {
    const socket = this.socketPath
      ? netConnect({ path: this.socketPath })
      : netConnect({ host: this.host, port: this.port, noDelay: true, keepAlive: true, keepAliveInitialDelay: 30_000 })
    return new Promise<Socket>((resolve, reject) => {
      const onAbort = (): void => {
        socket.destroy()
        reject(this.unreachable('timed out connecting'))
      }
      signal.addEventListener('abort', onAbort, { once: true })
      socket.once('connect', () => {
        signal.removeEventListener('abort', onAbort)
        socket.removeAllListeners('error')
        resolve(socket)
      })
      socket.once('error', (err: NodeJS.ErrnoException) => {
        signal.removeEventListener('abort', onAbort)
        reject(this.unreachable(describeSocketError(err), err))
      })
    })
  }

  unreachable(why: string, cause?: Error): ProxyError {
    return new ProxyError(
      'upstream_unreachable',
      {
        sqlState: '08001',
        message: `pg-vault-proxy could not connect to the upstream server at ${this.address}: ${why}`,
        hint: 'Check upstream.host and upstream.port in the proxy configuration, and that PostgreSQL is running and reachable from the proxy.',
      },
      { cause },
    )
  }
}

function readTlsFile(path: string | undefined, key: string): Buffer | undefined {
  if (path === undefined) return undefined
  try {
    return readFileSync(path)
  } catch (err) {
    throw new Error(`${key}: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? String(err)})`, {
      cause: err,
    })
  }
}

export function describeSocketError(err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case 'ECONNREFUSED':
      return 'connection refused'
    case 'ENOENT':
      return 'no such socket file'
    case 'ETIMEDOUT':
      return 'timed out'
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return 'host unreachable'
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return 'host name not found'
    case 'ECONNRESET':
      return 'connection reset'
    default:
      return err.code ?? err.message
  }
}
