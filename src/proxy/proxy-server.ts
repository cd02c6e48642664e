import { chmod, mkdir, unlink } from 'node:fs/promises'
import { connect, createServer, type Server, type Socket } from 'node:net'
import type { Logger } from 'pino'
import type { CredentialSource } from '../vault/credential-source.js'
import { CancelRegistry } from './cancel-registry.js'
import { ClientSession, type SessionSettings } from './client-session.js'
import { isLoopbackHost } from './loopback.js'
import type { UpstreamConnector } from './upstream-connector.js'

export interface ProxyServerOptions {
  listen: { host: string; port: number }
  allowRemote: boolean
  /** A directory for the Unix socket `.s.PGSQL.<port>`, as libpq expects. */
  socketDir?: string | undefined
  socketMode: number
  maxClientConnections: number
  settings: SessionSettings
  connector: UpstreamConnector
  credentials: CredentialSource
  logger: Logger
}

/** The listener: accepts clients on TCP and the Unix socket and runs a ClientSession for each. */
export class ProxyServer {
  readonly cancels = new CancelRegistry()
  private readonly servers: Server[] = []
  private readonly sessions = new Set<ClientSession>()
  private nextSessionId = 1
  private socketPath: string | undefined
  /** The TCP port actually bound (differs from the configured one when that is 0). */
  port = 0

  constructor(private readonly options: ProxyServerOptions) {
    const { host } = options.listen
    if (!options.allowRemote && !isLoopbackHost(host)) {
      // Anyone who reaches the port acts as the owner role: exposing it must be a decision.
      throw new Error(
        `listen: refusing to listen on ${host}, which is not a loopback address; anyone who can reach it would act as the owner role. Set allow_remote: true if that is intended.`,
      )
    }
  }

  async start(): Promise<void> {
    const { listen, socketDir, socketMode, logger } = this.options
    const tcp = this.createServer()
    await listenOn(tcp, { host: listen.host, port: listen.port })
    const address = tcp.address()
    this.port = typeof address === 'object' && address ? address.port : listen.port
    this.servers.push(tcp)
    logger.info({ address: `${listen.host}:${this.port}` }, 'listening on TCP')
    if (socketDir) {
      await mkdir(socketDir, { recursive: true })
      const path = `${socketDir}/.s.PGSQL.${this.port}`
      await removeStaleSocket(path)
      const unix = this.createServer()
      await listenOn(unix, { path })
      await chmod(path, socketMode)
      this.socketPath = path
      this.servers.push(unix)
      logger.info({ path }, 'listening on Unix socket')
    }
  }

  /** Stops accepting, ends every session (FATAL 57P01 to those relaying), removes the socket file. */
  async close(): Promise<void> {
    const closing = this.servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve())))
    for (const session of this.sessions) session.stop()
    await Promise.all(closing)
    if (this.socketPath) await unlink(this.socketPath).catch(() => undefined)
    await this.options.credentials.close()
  }

  get activeSessions(): number {
    return this.sessions.size
  }

  private createServer(): Server {
    return createServer({ noDelay: true }, (socket) => this.accept(socket))
  }

  private accept(socket: Socket): void {
    const { settings, connector, credentials, logger, maxClientConnections } = this.options
    socket.setNoDelay(true)
    const session = new ClientSession(
      socket,
      {
        settings,
        connector,
        credentials,
        cancels: this.cancels,
        logger,
        admit: () => this.sessions.size <= maxClientConnections,
      },
      this.nextSessionId++,
    )
    this.sessions.add(session)
    session
      .run()
      .catch((err: unknown) => logger.error({ err }, 'session crashed'))
      .finally(() => this.sessions.delete(session))
  }
}

async function listenOn(server: Server, options: { host: string; port: number } | { path: string }): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(options, () => {
      server.off('error', reject)
      resolve()
    })
  })
}

/** A socket file left by a crashed proxy blocks listen; one that still answers belongs to a live process. */
async function removeStaleSocket(path: string): Promise<void> {
  const alive = await new Promise<boolean>((resolve) => {
    const probe = connect({ path })
    probe.once('connect', () => {
      probe.destroy()
      resolve(true)
    })
    probe.once('error', () => resolve(false))
  })
  if (alive) throw new Error(`socket_dir: ${path} is in use by another process`)
  await unlink(path).catch(() => undefined)
}
