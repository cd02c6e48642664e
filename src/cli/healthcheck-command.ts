import { request } from 'node:http'
import { connect } from 'node:net'
import { serialize } from 'pg-protocol'
import type { Config } from '../config/load-config.js'

/** What `healthcheck` found: its exit status follows `healthy`, and `detail` is printed. */
export interface HealthcheckResult {
  healthy: boolean
  detail: string
}

/** At most this much of a /readyz body is kept: Docker itself keeps 4 KiB of a probe's output. */
const MAX_BODY = 4096

/**
 * `pg-vault-proxy healthcheck`: the container image's HEALTHCHECK, reading the configuration the
 * proxy runs with, so it probes where that proxy listens.
 *
 * - The ops server on (the default): `GET /readyz` at `ops.listen`; healthy on 200, that is
 *   listeners up, not shutting down, and a valid credential at hand.
 * - The ops server off: every TCP listener must answer an SSLRequest with `N`, as the proxy does
 *   for every client. That shows the process accepts and speaks the protocol; it cannot see the
 *   credential, and opens no upstream connection.
 *
 * A wildcard address (`0.0.0.0`, `::`) is probed on the matching loopback address.
 */
export async function runHealthcheck(config: Config, timeoutMs: number): Promise<HealthcheckResult> {
  if (config.ops.enabled) return probeReadyz(dialable(config.ops.listen), timeoutMs)
  const listeners = new Map<string, { host: string; port: number }>()
  for (const route of config.routes) {
    const address = dialable(route.config.listen)
    listeners.set(`${address.host}:${address.port}`, address)
  }
  const results = await Promise.all([...listeners.values()].map((address) => probeListener(address, timeoutMs)))
  return {
    healthy: results.every((r) => r.healthy),
    detail: results.map((r) => r.detail).join('\n'),
  }
}

function dialable(listen: { host: string; port: number }): { host: string; port: number } {
  if (listen.host === '0.0.0.0') return { host: '127.0.0.1', port: listen.port }
  if (listen.host === '::') return { host: '::1', port: listen.port }
  return listen
}

function display({ host, port }: { host: string; port: number }): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`
}

function probeReadyz(address: { host: string; port: number }, timeoutMs: number): Promise<HealthcheckResult> {
  const url = `http://${display(address)}/readyz`
  if (address.port === 0) {
    return Promise.resolve({
      healthy: false,
      detail: `cannot probe ${url}: ops.listen has port 0 (a port picked at start); give it a fixed port`,
    })
  }
  return new Promise((resolve) => {
    const req = request({ host: address.host, port: address.port, path: '/readyz', timeout: timeoutMs }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => {
        if (body.length < MAX_BODY) body += chunk.slice(0, MAX_BODY - body.length)
      })
      res.on('end', () => {
        const healthy = res.statusCode === 200
        resolve({ healthy, detail: `${url} answered ${res.statusCode}\n${body.trimEnd()}` })
      })
      res.on('error', (err) => resolve({ healthy: false, detail: `${url}: ${err.message}` }))
    })
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)))
    req.on('error', (err) => resolve({ healthy: false, detail: `${url}: ${err.message}` }))
    req.end()
  })
}

function probeListener(address: { host: string; port: number }, timeoutMs: number): Promise<HealthcheckResult> {
  const where = `the listener at ${display(address)}`
  if (address.port === 0) {
    return Promise.resolve({ healthy: false, detail: `cannot probe ${where}: listen has port 0; give it a fixed port` })
  }
  return new Promise((resolve) => {
    const socket = connect({ host: address.host, port: address.port, timeout: timeoutMs })
    const done = (result: HealthcheckResult): void => {
      socket.destroy()
      resolve(result)
    }
    socket.once('connect', () => socket.write(serialize.requestSsl()))
    socket.once('data', (data: Buffer) => {
      // One byte answers an SSLRequest: `N` (no TLS) is what the proxy says to every client.
      if (data[0] === 0x4e) done({ healthy: true, detail: `${where} answered an SSLRequest` })
      else
        done({
          healthy: false,
          detail: `${where} answered an SSLRequest with ${JSON.stringify(data.subarray(0, 1).toString('latin1'))}, not "N"`,
        })
    })
    socket.once('timeout', () => done({ healthy: false, detail: `${where}: no answer within ${timeoutMs} ms` }))
    socket.once('end', () => done({ healthy: false, detail: `${where} closed the connection without answering` }))
    socket.once('error', (err) => done({ healthy: false, detail: `${where}: ${err.message}` }))
  })
}
