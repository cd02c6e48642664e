import { StartupCode } from './codes.js'
import type { StartupParameter } from './startup-packet.js'

/**
 * StartupMessage for protocol 3.0 with the parameters in the order given. pg-protocol's
 * `serialize.startup` always appends client_encoding=UTF8, which would override the client's own
 * encoding, so the proxy builds this one itself (see docs/architecture.md).
 */
export function encodeStartupMessage(parameters: readonly StartupParameter[]): Buffer {
  const parts: Buffer[] = [Buffer.alloc(8)]
  for (const [name, value] of parameters) parts.push(Buffer.from(`${name}\0${value}\0`, 'utf8'))
  parts.push(Buffer.from([0]))
  const packet = Buffer.concat(parts)
  packet.writeUInt32BE(packet.length, 0)
  packet.writeUInt32BE(StartupCode.Protocol30, 4)
  return packet
}
