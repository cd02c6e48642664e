import { StartupCode } from './codes.js'

// Decoders for the untyped packets a frontend sends before the session runs
// (PostgreSQL: src/backend/tcop/backend_startup.c, ProcessStartupPacket).

export type StartupPacket =
  | { kind: 'SSLRequest' }
  | { kind: 'GSSENCRequest' }
  | { kind: 'CancelRequest'; processId: number; secretKey: Buffer }
  | { kind: 'StartupMessage'; majorVersion: number; minorVersion: number; parameters: StartupParameter[] }

export type StartupParameter = readonly [name: string, value: string]

/** Why a startup packet was refused; `sqlState` undefined means PostgreSQL closes without a word. */
export class StartupPacketError extends Error {
  override name = 'StartupPacketError'
  constructor(
    message: string,
    readonly sqlState: string | undefined,
  ) {
    super(message)
  }
}

/** Decodes a whole startup-phase packet (as returned by MessageReader.readStartupPacket). */
export function decodeStartupPacket(packet: Buffer): StartupPacket {
  const code = packet.readUInt32BE(4)
  switch (code) {
    case StartupCode.SSLRequest:
    case StartupCode.GSSENCRequest:
      if (packet.length !== 8) throw new StartupPacketError('invalid length of encryption request packet', undefined)
      return { kind: code === StartupCode.SSLRequest ? 'SSLRequest' : 'GSSENCRequest' }
    case StartupCode.CancelRequest:
      return decodeCancelRequest(packet)
    default:
      return decodeStartupMessage(packet, code)
  }
}

function decodeCancelRequest(packet: Buffer): StartupPacket {
  // 3.0 keys are 4 bytes; 3.2 allows 4..256 (protocol docs, CancelRequest).
  const keyLength = packet.length - 12
  if (keyLength < 4 || keyLength > 256) {
    throw new StartupPacketError('invalid length of query cancel packet', undefined)
  }
  return { kind: 'CancelRequest', processId: packet.readUInt32BE(8), secretKey: Buffer.from(packet.subarray(12)) }
}

function decodeStartupMessage(packet: Buffer, version: number): StartupPacket {
  const majorVersion = version >>> 16
  const minorVersion = version & 0xffff
  if (majorVersion !== 3) {
    throw new StartupPacketError(
      `unsupported frontend protocol ${majorVersion}.${minorVersion}: server supports 3.0 to 3.0`,
      '0A000',
    )
  }
  const body = packet.subarray(8)
  if (body.length === 0 || body[body.length - 1] !== 0) {
    throw new StartupPacketError('invalid startup packet layout: expected terminator as last byte', '08P01')
  }
  const parameters: StartupParameter[] = []
  let offset = 0
  // The last byte is the list terminator; every name and value before it ends with a NUL.
  while (offset < body.length - 1) {
    if (body[offset] === 0) {
      throw new StartupPacketError('invalid startup packet layout: expected terminator as last byte', '08P01')
    }
    const nameEnd = body.indexOf(0, offset)
    const valueEnd = nameEnd < body.length - 1 ? body.indexOf(0, nameEnd + 1) : -1
    if (valueEnd < 0 || valueEnd >= body.length - 1) {
      throw new StartupPacketError('invalid startup packet layout: expected terminator as last byte', '08P01')
    }
    parameters.push([body.toString('utf8', offset, nameEnd), body.toString('utf8', nameEnd + 1, valueEnd)])
    offset = valueEnd + 1
  }
  if (!parameters.some(([name, value]) => name === 'user' && value !== '')) {
    throw new StartupPacketError('no PostgreSQL user name specified in startup packet', '28000')
  }
  return { kind: 'StartupMessage', majorVersion, minorVersion, parameters }
}
