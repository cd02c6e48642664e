/**
 * A minimal HTTP/1.1 server on node:net.
 *
 * Why not node:http: Vault clients send the non-standard method LIST (node-vault's list(), the
 * Vault CLI), and Node's HTTP parser answers any method it does not know with 400 before
 * application code sees the request. This server accepts any method token and implements what
 * Vault clients use: Content-Length and chunked request bodies, keep-alive, HEAD, Expect:
 * 100-continue. Requests on one connection are answered one at a time, in order.
 */
import { STATUS_CODES } from 'node:http'
import net from 'node:net'
import tls from 'node:tls'

export interface HttpRequest {
  method: string
  /** The request target: path and query. */
  target: string
  /** Lowercased names; repeated headers joined with ", ". */
  headers: Record<string, string>
  body: Buffer
  /** The peer's IP address. */
  remoteAddress: string
  /**
   * undefined over plain TCP; over TLS the client certificate (DER) the peer presented, or null
   * when it presented none.
   */
  clientCertificate?: Buffer | null
}

/** PEM certificate (chain) and key for listening with TLS. */
export interface TlsIdentity {
  cert: string
  key: string
}

export interface HttpResponse {
  status: number
  headers: Record<string, string>
  body: string
}

export type HttpHandler = (request: HttpRequest) => Promise<HttpResponse>

const MAX_HEAD_BYTES = 64 * 1024
const IDLE_TIMEOUT_MS = 120_000
/** Vault's default max_request_size is 32 MiB. */
const MAX_BODY_BYTES = 32 * 1024 * 1024

class BadRequest extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message)
  }
}

export class Http1Server {
  private server: net.Server | undefined
  private readonly sockets = new Set<net.Socket>()

  /** With `tls`, listens with TLS and asks every client for a certificate (verified by no one here). */
  constructor(
    private readonly handler: HttpHandler,
    private readonly tls?: TlsIdentity,
  ) {}

  get isListening(): boolean {
    return this.server?.listening === true
  }

  /** Listens on host:port (0 = any free port) and returns the bound port. */
  async listen(port: number, host: string): Promise<number> {
    // Like Vault's listener (tls.RequestClientCert): a client certificate is asked for but not
    // required or verified at the TLS layer; the cert auth method checks it against its roles.
    const server = this.tls
      ? tls.createServer({ ...this.tls, requestCert: true, rejectUnauthorized: false }, (socket) => this.serve(socket))
      : net.createServer((socket) => this.serve(socket))
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, host, () => {
        server.off('error', reject)
        resolve()
      })
    })
    this.server = server
    return (server.address() as net.AddressInfo).port
  }

  /** Stops listening and closes every open connection (after flushing what was written to it). */
  async close(): Promise<void> {
    const server = this.server
    this.server = undefined
    for (const socket of this.sockets) {
      socket.end()
      setTimeout(() => socket.destroy(), 100).unref()
    }
    this.sockets.clear()
    if (server?.listening) await new Promise<void>((resolve) => server.close(() => resolve()))
  }

  private serve(socket: net.Socket): void {
    this.sockets.add(socket)
    socket.on('close', () => this.sockets.delete(socket))
    // A client that goes away mid-request is not our error.
    socket.on('error', () => socket.destroy())
    // Keep-alive connections a client forgot about are closed after a while, as Go's server does.
    socket.setTimeout(IDLE_TIMEOUT_MS, () => socket.end())
    const clientCertificate = socket instanceof tls.TLSSocket ? peerCertificate(socket) : undefined
    let buffered = Buffer.alloc(0)
    let isBusy = false
    let sentContinue = false

    const pump = async (): Promise<void> => {
      if (isBusy || socket.writableEnded) return
      isBusy = true
      try {
        // New data that arrives while the handler runs is picked up by the next turn of the loop.
        for (;;) {
          const parsed = parseRequest(buffered, socket.remoteAddress ?? '', clientCertificate)
          if (parsed.kind === 'incomplete') {
            if (parsed.expectsContinue && !sentContinue) {
              socket.write('HTTP/1.1 100 Continue\r\n\r\n')
              sentContinue = true
            }
            return
          }
          buffered = buffered.subarray(parsed.consumed)
          sentContinue = false
          const response = await this.handler(parsed.request).catch((err: unknown): HttpResponse => ({
            status: 500,
            headers: { 'Content-Type': 'application/json' },
            body: `${JSON.stringify({ errors: [(err as Error).message] })}\n`,
          }))
          if (socket.destroyed) return
          const keepAlive = parsed.request.headers.connection?.toLowerCase() !== 'close'
          socket.write(serializeResponse(parsed.request.method, response, keepAlive))
          if (!keepAlive) {
            socket.end()
            return
          }
        }
      } catch (err) {
        const status = err instanceof BadRequest ? err.status : 400
        if (!socket.destroyed) socket.end(serializeResponse('GET', { status, headers: {}, body: '' }, false))
      } finally {
        isBusy = false
      }
    }

    socket.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk])
      void pump()
    })
  }
}

type ParseResult =
  { kind: 'complete'; request: HttpRequest; consumed: number } | { kind: 'incomplete'; expectsContinue: boolean }

/** One complete request from the front of `data`, or what is known while bytes are missing. */
function peerCertificate(socket: tls.TLSSocket): Buffer | null {
  const cert = socket.getPeerCertificate()
  return cert && Buffer.isBuffer(cert.raw) && cert.raw.length > 0 ? cert.raw : null
}

function parseRequest(data: Buffer, remoteAddress: string, clientCertificate: Buffer | null | undefined): ParseResult {
  const headEnd = data.indexOf('\r\n\r\n')
  if (headEnd === -1) {
    if (data.length > MAX_HEAD_BYTES) throw new BadRequest(431, 'request head too large')
    return { kind: 'incomplete', expectsContinue: false }
  }
  const [requestLine = '', ...headerLines] = data.subarray(0, headEnd).toString('latin1').split('\r\n')
  const match = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP\/1\.[01]$/.exec(requestLine)
  if (!match) throw new BadRequest(400, 'malformed request line')
  const headers: Record<string, string> = {}
  for (const line of headerLines) {
    const colon = line.indexOf(':')
    if (colon <= 0) throw new BadRequest(400, 'malformed header')
    const name = line.slice(0, colon).trim().toLowerCase()
    const value = line.slice(colon + 1).trim()
    headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`
  }

  const bodyStart = headEnd + 4
  const incomplete: ParseResult = {
    kind: 'incomplete',
    expectsContinue: headers.expect?.toLowerCase() === '100-continue',
  }
  let body: Buffer
  let consumed: number
  if (headers['transfer-encoding']?.toLowerCase().includes('chunked')) {
    const chunked = decodeChunked(data, bodyStart)
    if (chunked === undefined) return incomplete
    ;({ body, consumed } = chunked)
  } else {
    const length = Number(headers['content-length'] ?? 0)
    if (!Number.isInteger(length) || length < 0) throw new BadRequest(400, 'bad content-length')
    if (length > MAX_BODY_BYTES) throw new BadRequest(413, 'request body too large')
    if (data.length < bodyStart + length) return incomplete
    body = data.subarray(bodyStart, bodyStart + length)
    consumed = bodyStart + length
  }
  return {
    kind: 'complete',
    request: { method: match[1]!, target: match[2]!, headers, body, remoteAddress, clientCertificate },
    consumed,
  }
}

function decodeChunked(data: Buffer, start: number): { body: Buffer; consumed: number } | undefined {
  const parts: Buffer[] = []
  let pos = start
  let total = 0
  for (;;) {
    const lineEnd = data.indexOf('\r\n', pos)
    if (lineEnd === -1) return undefined
    const size = parseInt(data.subarray(pos, lineEnd).toString('latin1').split(';')[0]!, 16)
    if (Number.isNaN(size)) throw new BadRequest(400, 'bad chunk size')
    pos = lineEnd + 2
    if (size === 0) {
      // Skip trailers up to the final empty line.
      const end = data.indexOf('\r\n', pos)
      if (end === -1) return undefined
      if (end === pos) return { body: Buffer.concat(parts), consumed: pos + 2 }
      const trailersEnd = data.indexOf('\r\n\r\n', pos)
      return trailersEnd === -1 ? undefined : { body: Buffer.concat(parts), consumed: trailersEnd + 4 }
    }
    total += size
    if (total > MAX_BODY_BYTES) throw new BadRequest(413, 'request body too large')
    if (data.length < pos + size + 2) return undefined
    parts.push(data.subarray(pos, pos + size))
    pos += size + 2
  }
}

function serializeResponse(method: string, response: HttpResponse, keepAlive: boolean): Buffer {
  const body = Buffer.from(response.body, 'utf8')
  const hasBody = method !== 'HEAD' && response.status !== 204 && response.status !== 304
  const lines = [`HTTP/1.1 ${response.status} ${STATUS_CODES[response.status] ?? 'Unknown'}`]
  for (const [name, value] of Object.entries(response.headers)) lines.push(`${name}: ${value}`)
  lines.push(`Date: ${new Date().toUTCString()}`)
  if (response.status !== 204 && response.status !== 304) lines.push(`Content-Length: ${body.length}`)
  if (!keepAlive) lines.push('Connection: close')
  const head = Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1')
  return hasBody ? Buffer.concat([head, body]) : head
}
