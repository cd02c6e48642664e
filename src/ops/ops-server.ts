import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createRequire } from 'node:module'
import type { Logger } from 'pino'
import type { Config } from '../config/load-config.js'
import { isLoopbackHost } from '../proxy/loopback.js'
import type { Health, Readiness } from './health.js'
import type { ProxyMetrics } from './metrics.js'

const { version } = createRequire(import.meta.url)('../../package.json') as { version: string }

/** What the ops server reports on; the ProxyServer is one. */
export interface OpsTarget {
  readonly health: Health
  readonly metrics: ProxyMetrics
  status(): object
}

export interface OpsServerOptions {
  listen: { host: string; port: number }
  allowRemote: boolean
  target: OpsTarget
  logger: Logger
}

/**
 * The HTTP ops endpoints: /livez, /readyz, /startupz (Kubernetes probe semantics), /metrics
 * (Prometheus text format) and /status (JSON). Read-only and without secrets, but it still tells
 * an outsider a lot about the deployment, hence loopback unless `ops.allow_remote`.
 */
export class OpsServer {
  private readonly server: Server
  private readonly startedAt = new Date()
  /** The port actually bound (differs from the configured one when that is 0). */
  port = 0

  constructor(private readonly options: OpsServerOptions) {
    const { host } = options.listen
    if (!options.allowRemote && !isLoopbackHost(host)) {
      throw new Error(
        `ops.listen: refusing to serve health and metrics on ${host}, which is not a loopback address. Set ops.allow_remote: true if that is intended.`,
      )
    }
    this.server = createServer((req, res) => void this.handle(req, res))
    // Probes and scrapers are quick; a client that trickles headers is cut off.
    this.server.headersTimeout = 10_000
    this.server.requestTimeout = 10_000
  }

  async start(): Promise<void> {
    const { listen, logger } = this.options
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', (err: NodeJS.ErrnoException) =>
        reject(new Error(`ops.listen: cannot listen on ${listen.host}:${listen.port} (${err.code ?? err.message})`)),
      )
      this.server.listen({ host: listen.host, port: listen.port }, () => resolve())
    })
    const address = this.server.address()
    this.port = typeof address === 'object' && address ? address.port : listen.port
    logger.info(
      { address: `${listen.host}:${this.port}` },
      'ops server listening (/livez /readyz /startupz /metrics /status)',
    )
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()))
    // Keep-alive scrapers would otherwise hold close() open.
    this.server.closeAllConnections()
    await closed
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const { target } = this.options
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      send(res, 405, 'text/plain; charset=utf-8', 'only GET and HEAD\n', { allow: 'GET, HEAD' })
      return
    }
    const path = new URL(req.url ?? '/', 'http://ops').pathname
    try {
      switch (path) {
        case '/livez':
          // Answering at all shows the event loop turns; there is nothing else to be alive for.
          send(res, 200, 'text/plain; charset=utf-8', 'ok\n')
          return
        case '/startupz':
          if (target.health.started) send(res, 200, 'text/plain; charset=utf-8', 'ok\n')
          else send(res, 503, 'text/plain; charset=utf-8', 'starting: listeners not up yet\n')
          return
        case '/readyz': {
          const readiness = target.health.readiness()
          send(res, readiness.ready ? 200 : 503, 'text/plain; charset=utf-8', describe(readiness))
          return
        }
        case '/metrics':
          send(res, 200, target.metrics.registry.contentType, await target.metrics.registry.metrics())
          return
        case '/status': {
          const body = {
            service: 'pg-vault-proxy',
            version,
            pid: process.pid,
            startedAt: this.startedAt.toISOString(),
            uptimeSeconds: Math.round((Date.now() - this.startedAt.getTime()) / 1000),
            ...target.status(),
          }
          send(res, 200, 'application/json; charset=utf-8', `${JSON.stringify(body, null, 2)}\n`)
          return
        }
        default:
          send(res, 404, 'text/plain; charset=utf-8', 'not found: try /livez /readyz /startupz /metrics /status\n')
      }
    } catch (err) {
      this.options.logger.error({ err, path }, 'ops request failed')
      if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', 'internal error; see the proxy log\n')
      else res.destroy()
    }
  }
}

/** The ops server the configuration asks for, listening; undefined when `ops.enabled` is false. */
export async function startOpsServer(
  config: Config,
  target: OpsTarget,
  logger: Logger,
): Promise<OpsServer | undefined> {
  if (!config.ops.enabled) return undefined
  const ops = new OpsServer({ listen: config.ops.listen, allowRemote: config.ops.allow_remote, target, logger })
  await ops.start()
  return ops
}

/** One line per check, as Kubernetes' own /readyz?verbose does. */
function describe(readiness: Readiness): string {
  const lines = readiness.checks.map((c) => `[${c.ok ? '+' : '-'}]${c.name} ${c.ok ? 'ok' : 'failed'}: ${c.detail}`)
  return `${lines.join('\n')}\n${readiness.ready ? 'ready' : 'not ready'}\n`
}

function send(
  res: ServerResponse,
  status: number,
  contentType: string,
  body: string,
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, {
    'content-type': contentType,
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    ...headers,
  })
  res.end(res.req.method === 'HEAD' ? undefined : body)
}
