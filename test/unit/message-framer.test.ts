import t from 'tap'
import { MessageFramer, ProtocolViolation } from '../../src/pgwire/message-framer.js'
import { BufferList, splits } from '../support/wire-builder.js'

function framer(seen: Array<[string, string | undefined]>, opts: { maxLength?: number } = {}): MessageFramer {
  return new MessageFramer({
    isKnownCode: (code) => 'QZAdD'.includes(String.fromCharCode(code)),
    maxLength: () => opts.maxLength ?? 1 << 30,
    wantsWhole: (code) => code === 0x5a || code === 0x41,
    maxInspectLength: 64,
    onMessage: (code, whole) => {
      if (whole && code === 0x41) whole.writeUInt32BE(99, 5) // patch in place, as the relay does for pids
      seen.push([String.fromCharCode(code), whole?.toString('hex')])
    },
  })
}

const stream = Buffer.concat([
  new BufferList().cstring('select 1').message('Q'),
  new BufferList().bytes(Buffer.alloc(300, 1)).message('d'),
  new BufferList().int32(7).cstring('ch').cstring('payload').message('A'),
  new BufferList().bytes(Buffer.alloc(100, 2)).message('D'),
  new BufferList().byte(0x49).message('Z'),
])

void t.test('at every split offset: same messages, same bytes out, inspected ones whole and patched', async (t) => {
  const reference: Array<[string, string | undefined]> = []
  const refOut = framer(reference).push(Buffer.from(stream))
  t.same(
    reference.map(([c]) => c),
    ['Q', 'd', 'A', 'D', 'Z'],
  )
  t.equal(refOut.readUInt32BE(1 + 4 + 9 + 1 + 4 + 300 + 5), 99, 'pid patched')
  for (const [a, b, at] of splits(stream)) {
    const seen: Array<[string, string | undefined]> = []
    const f = framer(seen)
    const out = Buffer.concat([f.push(Buffer.from(a)), f.push(Buffer.from(b))])
    if (!out.equals(refOut) || JSON.stringify(seen) !== JSON.stringify(reference)) {
      t.fail(`split at ${at} differs`)
      return
    }
    t.notOk(f.isMidMessage)
  }
  t.pass('all splits agree')
})

void t.test('one byte at a time', async (t) => {
  const seen: Array<[string, string | undefined]> = []
  const f = framer(seen)
  const out: Buffer[] = []
  for (const byte of stream) out.push(f.push(Buffer.from([byte])))
  t.equal(Buffer.concat(out).length, stream.length)
  t.equal(seen.length, 5)
})

void t.test('mid-message state is reported', async (t) => {
  const f = framer([])
  f.push(stream.subarray(0, 20))
  t.ok(f.isMidMessage)
})

void t.test('unknown type and bad lengths are protocol violations', async (t) => {
  t.throws(() => framer([]).push(new BufferList().message('?')), ProtocolViolation)
  const short = Buffer.from([0x51, 0, 0, 0, 3])
  t.throws(() => framer([]).push(short), { message: /invalid length 3/ })
  t.throws(
    () => framer([], { maxLength: 100 }).push(new BufferList().bytes(Buffer.alloc(200)).message('d')),
    ProtocolViolation,
  )
})
