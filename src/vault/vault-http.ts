import { Agent as HttpAgent, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http'
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https'

export interface VaultHttpOptions {
  address: string
  namespace?: string | undefined
  /** PEM contents of a private CA and of a client certificate and key (mutual TLS). */
  ca?: Buffer | undefined
  cert?: Buffer | undefined
  key?: Buffer | undefined
  rejectUnauthorized: boolean
  /** For the whole exchange, redirect included. */
  timeoutMs: number
}

export interface VaultHttpResponse {
  status: number
  headers: IncomingHttpHeaders
  /** Parsed JSON, or undefined for an empty body (204) or one that is not JSON. */
  body: unknown
}

/** Vault answers are small (an envelope with a credential); a larger body is not Vault's. */
export const MAX_RESPONSE_BYTES = 1024 * 1024

/** Vault's client follows 301, 302 and 307 (api/client.go); 308 is 307's permanent twin. */
const REDIRECTS = new Set([301, 302, 307, 308])

/** A network-level failure, shaped as Node's own errors (a `code`), so VaultError can name it. */
export class VaultHttpError extends Error {
  override name = 'VaultHttpError'
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message)
  }
}

/**
 * The HTTP exchange with Vault, on node:http(s): what Vault's own Go client (api/client.go) does and
 * node-vault did not. Every request carries `X-Vault-Request: true`, which a Vault Agent listener
 * with `require_request_header` insists on (412 otherwise). One redirect is followed, as Vault's
 * client does for a standby's 307, but only to the same origin: the token is never sent to a host
 * vault.address does not name (a Location header is the server's word, not the operator's).
 * Response headers are kept, so a 429's Retry-After can be honoured.
 */
export class VaultHttp {
  private readonly base: URL
  private readonly agent: HttpAgent | HttpsAgent

  constructor(private readonly options: VaultHttpOptions) {
    this.base = new URL(withoutTrailingSlashes(options.address) + '/')
    this.agent =
      this.base.protocol === 'https:'
        ? new HttpsAgent({
            keepAlive: true,
            ca: options.ca,
            cert: options.cert,
            key: options.key,
            rejectUnauthorized: options.rejectUnauthorized,
          })
        : new HttpAgent({ keepAlive: true })
  }

  get origin(): string {
    return this.base.origin
  }

  /** `path` is relative to /v1/, e.g. "database/creds/app". */
  async request(
    method: string,
    path: string,
    options: { token?: string | undefined; body?: unknown } = {},
  ): Promise<VaultHttpResponse> {
    const deadline = Date.now() + this.options.timeoutMs
    const payload = options.body === undefined ? undefined : Buffer.from(JSON.stringify(options.body))
    const headers: Record<string, string> = { 'X-Vault-Request': 'true', Accept: 'application/json' }
    if (options.token) headers['X-Vault-Token'] = options.token
    if (this.options.namespace) headers['X-Vault-Namespace'] = this.options.namespace
    if (payload) {
      headers['Content-Type'] = 'application/json'
      headers['Content-Length'] = String(payload.length)
    }
    let url = new URL(`v1/${path.replace(/^\/+/, '')}`, this.base)
    for (let redirects = 0; ; redirects++) {
      const response = await this.exchange(method, url, headers, payload, deadline)
      const location = response.headers.location
      if (!REDIRECTS.has(response.status) || location === undefined || redirects > 0) return response
      const next = new URL(location, url)
      // Vault's client refuses a downgrade to http; we refuse any other origin, so the token stays put.
      if (next.origin !== this.base.origin) {
        throw new VaultHttpError(
          'EVAULTREDIRECT',
          `Vault redirected to ${next.origin}, which vault.address does not name; the proxy does not send its token there`,
        )
      }
      url = next
    }
  }

  /** Closes idle keep-alive connections. */
  close(): void {
    this.agent.destroy()
  }

  private exchange(
    method: string,
    url: URL,
    headers: Record<string, string>,
    payload: Buffer | undefined,
    deadline: number,
  ): Promise<VaultHttpResponse> {
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest
    return new Promise((resolve, reject) => {
      const req = send(url, { method, headers, agent: this.agent })
      const timer = setTimeout(
        () => req.destroy(new VaultHttpError('ETIMEDOUT', `no answer within ${this.options.timeoutMs} ms`)),
        Math.max(0, deadline - Date.now()),
      )
      req.on('error', (err) => {
        clearTimeout(timer)
        reject(err)
      })
      req.on('response', (res: IncomingMessage) => {
        const chunks: Buffer[] = []
        let size = 0
        res.on('data', (chunk: Buffer) => {
          size += chunk.length
          if (size > MAX_RESPONSE_BYTES) {
            req.destroy(new VaultHttpError('EVAULTTOOBIG', `answer larger than ${MAX_RESPONSE_BYTES} bytes`))
            return
          }
          chunks.push(chunk)
        })
        res.on('error', () => undefined) // reported through req's 'error'
        res.on('end', () => {
          clearTimeout(timer)
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: parseJson(Buffer.concat(chunks)) })
        })
      })
      req.end(payload)
    })
  }
}

function parseJson(bytes: Buffer): unknown {
  if (bytes.length === 0) return undefined
  try {
    return JSON.parse(bytes.toString('utf8')) as unknown
  } catch {
    return undefined
  }
}

/** The text without the slashes at its end (one pass back from the end; a regex here could take quadratic time). */
export function withoutTrailingSlashes(text: string): string {
  let end = text.length
  while (end > 0 && text[end - 1] === '/') end--
  return text.slice(0, end)
}
