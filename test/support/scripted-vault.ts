/**
 * A tiny HTTP server that answers as a test script says, for Vault behaviour the dev Vault does not
 * have: each request is recorded (method, path, headers, parsed body) and answered by `respond`.
 */
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'

export interface ScriptedRequest {
  method: string
  /** Without the /v1/ prefix, e.g. "database/creds/app". */
  path: string
  headers: IncomingHttpHeaders
  body: Record<string, unknown> | undefined
}

export interface ScriptedReply {
  status: number
  body?: unknown
  headers?: Record<string, string>
}

export interface ScriptedVault {
  address: string
  requests: ScriptedRequest[]
  /** Requests to `path` so far. */
  count(path: string): number
  close(): Promise<void>
}

export async function scriptedVault(
  respond: (request: ScriptedRequest) => ScriptedReply | Promise<ScriptedReply>,
): Promise<ScriptedVault> {
  const requests: ScriptedRequest[] = []
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8')
      const request: ScriptedRequest = {
        method: req.method ?? '',
        path: (req.url ?? '').replace(/^\/v1\//, ''),
        headers: req.headers,
        body: text ? (JSON.parse(text) as Record<string, unknown>) : undefined,
      }
      requests.push(request)
      void Promise.resolve(respond(request)).then((reply) => {
        const payload = reply.body === undefined ? '' : JSON.stringify(reply.body)
        res.writeHead(reply.status, {
          ...(payload ? { 'Content-Type': 'application/json' } : {}),
          ...reply.headers,
        })
        res.end(payload)
      })
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    address: `http://127.0.0.1:${port}`,
    requests,
    count: (path) => requests.filter((r) => r.path === path).length,
    close: () => {
      server.closeAllConnections()
      return new Promise((resolve) => server.close(() => resolve()))
    },
  }
}

/** Vault's answers, in its envelope (api/secret.go). */
export const reply = {
  denied: (invalidToken = false): ScriptedReply => ({
    status: 403,
    body: {
      errors: [
        invalidToken
          ? '2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n'
          : '1 error occurred:\n\t* permission denied\n\n',
      ],
    },
  }),
  login: (token: string, ttl: number, renewable = true): ScriptedReply => ({
    status: 200,
    body: {
      lease_id: '',
      renewable: false,
      lease_duration: 0,
      data: null,
      auth: { client_token: token, lease_duration: ttl, renewable, policies: ['default', 'proxy'] },
    },
  }),
  lookup: (ttl: number, renewable: boolean, type = 'service'): ScriptedReply => ({
    status: 200,
    body: { data: { ttl, renewable, type } },
  }),
  creds: (leaseId: string, ttl: number, user = 'v-app-1'): ScriptedReply => ({
    status: 200,
    body: {
      lease_id: leaseId,
      renewable: true,
      lease_duration: ttl,
      data: { username: user, password: 'pw' },
    },
  }),
}
