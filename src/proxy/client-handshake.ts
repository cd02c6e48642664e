import type { Socket } from 'node:net'
import { encodeErrorResponse, errorFields } from '../pgwire/backend-messages.js'
import { MessageReader } from '../pgwire/message-reader.js'
import { StartupPacketError, decodeStartupPacket, type StartupPacket } from '../pgwire/startup-packet.js'

export type ClientGreeting =
  | { kind: 'StartupMessage'; packet: Extract<StartupPacket, { kind: 'StartupMessage' }>; reader: MessageReader }
  | { kind: 'CancelRequest'; processId: number; secretKey: Buffer }

const NO = Buffer.from('N')

/**
 * Reads the client's first packets as a PostgreSQL server does: SSLRequest and GSSENCRequest are
 * answered 'N' (local clients need no encryption, and refusing lets them carry on in plaintext on the
 * same connection), then the next packet is read; each may come once. Returns the StartupMessage or
 * CancelRequest. Refusals that PostgreSQL answers get a FATAL ErrorResponse (thrown as
 * StartupPacketError); framing errors throw and the caller closes without a word.
 */
export async function readClientGreeting(socket: Socket): Promise<ClientGreeting> {
  const reader = new MessageReader(socket)
  let sslAnswered = false
  let gssAnswered = false
  for (;;) {
    const packet = decodeStartupPacket(await reader.readStartupPacket())
    switch (packet.kind) {
      case 'SSLRequest':
        // A second request is read by PostgreSQL as a startup packet with version 1234.5679.
        if (sslAnswered) throw new StartupPacketError(unsupported('1234.5679'), '0A000')
        sslAnswered = true
        socket.write(NO)
        break
      case 'GSSENCRequest':
        if (gssAnswered) throw new StartupPacketError(unsupported('1234.5680'), '0A000')
        gssAnswered = true
        socket.write(NO)
        break
      case 'CancelRequest':
        return { kind: 'CancelRequest', processId: packet.processId, secretKey: packet.secretKey }
      case 'StartupMessage':
        return { kind: 'StartupMessage', packet, reader }
    }
  }
}

function unsupported(version: string): string {
  return `unsupported frontend protocol ${version}: server supports 3.0 to 3.0`
}

/** The FATAL a refused startup packet earns, as PostgreSQL words it. */
export function startupRefusal(err: StartupPacketError): Buffer | undefined {
  if (err.sqlState === undefined) return undefined
  return encodeErrorResponse(errorFields({ severity: 'FATAL', sqlState: err.sqlState, message: err.message }))
}
