import { isIP } from 'node:net'

/** Whether a listen host is only reachable from this machine. */
export function isLoopbackHost(host: string): boolean {
  if (host === 'localhost') return true
  if (isIP(host) === 4) return host.startsWith('127.')
  if (isIP(host) === 6) return host === '::1' || host.toLowerCase() === '::ffff:127.0.0.1'
  return false
}
