import t from 'tap'
import { StartupPacketError, decodeStartupPacket } from '../../src/pgwire/startup-packet.js'
import { BufferList, cancelRequest, gssEncRequest, sslRequest, startupMessage } from '../support/wire-builder.js'

function refusal(packet: Buffer): StartupPacketError | undefined {
  try {
    decodeStartupPacket(packet)
  } catch (err) {
    return err as StartupPacketError
  }
  return undefined
}

void t.test('SSLRequest, GSSENCRequest and CancelRequest', async (t) => {
  t.same(decodeStartupPacket(sslRequest()), { kind: 'SSLRequest' })
  t.same(decodeStartupPacket(gssEncRequest()), { kind: 'GSSENCRequest' })
  const key = Buffer.from([1, 2, 3, 4])
  const cancel = decodeStartupPacket(cancelRequest(4242, key))
  t.same(cancel, { kind: 'CancelRequest', processId: 4242, secretKey: key })
  // protocol 3.2 keys may be up to 256 bytes
  t.equal((decodeStartupPacket(cancelRequest(1, Buffer.alloc(32, 7))) as { secretKey: Buffer }).secretKey.length, 32)
  t.match(refusal(cancelRequest(1, Buffer.alloc(2))), StartupPacketError)
  t.throws(() => decodeStartupPacket(cancelRequest(1, Buffer.alloc(257))), StartupPacketError)
  t.throws(() => decodeStartupPacket(new BufferList().int32(80877103).int32(0).packet()), StartupPacketError)
})

void t.test('StartupMessage 3.0 keeps parameters in order, including duplicates', async (t) => {
  const packet = decodeStartupPacket(
    startupMessage({ user: 'u', database: 'd', application_name: 'psql', options: '-c x=1' }),
  )
  t.same(packet, {
    kind: 'StartupMessage',
    majorVersion: 3,
    minorVersion: 0,
    parameters: [
      ['user', 'u'],
      ['database', 'd'],
      ['application_name', 'psql'],
      ['options', '-c x=1'],
    ],
  })
})

void t.test('3.2 is accepted for negotiation; other majors are refused with 0A000', async (t) => {
  const p = decodeStartupPacket(startupMessage({ user: 'u' }, 0x30002))
  t.match(p, { kind: 'StartupMessage', minorVersion: 2 })
  t.throws(() => decodeStartupPacket(startupMessage({ user: 'u' }, 0x20000)), {
    sqlState: '0A000',
    message: 'unsupported frontend protocol 2.0: server supports 3.0 to 3.0',
  })
  t.match(refusal(startupMessage({ user: 'u' }, 0x40000)), { sqlState: '0A000' })
})

void t.test('layout errors are 08P01; a missing user is 28000', async (t) => {
  const noTerminator = new BufferList().int32(0x30000).cstring('user').cstring('u').packet()
  t.match(refusal(noTerminator), { sqlState: '08P01', message: /expected terminator as last byte/ })
  const missingValue = new BufferList().int32(0x30000).cstring('user').byte(0).packet()
  t.match(refusal(missingValue), { sqlState: '08P01' })
  const emptyName = new BufferList().int32(0x30000).byte(0).cstring('user').cstring('u').byte(0).packet()
  t.match(refusal(emptyName), { sqlState: '08P01' })
  t.match(refusal(startupMessage({ database: 'd' })), {
    sqlState: '28000',
    message: 'no PostgreSQL user name specified in startup packet',
  })
  t.match(refusal(startupMessage({ user: '' })), { sqlState: '28000' })
  const empty = new BufferList().int32(0x30000).packet()
  t.match(refusal(empty), { sqlState: '08P01' })
})
