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

// Dropping: onMessage returning false for an inspected message removes it from what push() returns.
const notify = (payload: string): Buffer => new BufferList().int32(7).cstring('ch').cstring(payload).message('A')
const query = new BufferList().cstring('select 1').message('Q')
const dataRow = new BufferList().bytes(Buffer.alloc(300, 3)).message('d')
const ready = new BufferList().byte(0x49).message('Z')
const dropped = notify('drop me')
const kept = notify('keep')

function dropper(seen: string[] = []): MessageFramer {
  return new MessageFramer({
    isKnownCode: (code) => 'QZAdD'.includes(String.fromCharCode(code)),
    maxLength: () => 1 << 30,
    wantsWhole: (code) => code === 0x5a || code === 0x41,
    maxInspectLength: 64,
    onMessage: (code, whole) => {
      seen.push(String.fromCharCode(code))
      if (whole?.includes('drop me')) return false
      if (whole && code === 0x41) whole.writeUInt32BE(99, 5) // patched in place and kept
      return undefined
    },
  })
}
const patched = Buffer.from(kept)
patched.writeUInt32BE(99, 5)

void t.test('drop: a message at the start, in the middle, at the end of a chunk', async (t) => {
  t.same(dropper().push(Buffer.concat([dropped, query, ready])), Buffer.concat([query, ready]), 'start')
  t.same(dropper().push(Buffer.concat([query, dropped, dataRow])), Buffer.concat([query, dataRow]), 'middle')
  t.same(dropper().push(Buffer.concat([query, dataRow, dropped])), Buffer.concat([query, dataRow]), 'end')
  t.same(dropper().push(Buffer.from(dropped)), Buffer.alloc(0), 'alone')
})

void t.test('drop: two in one chunk, apart and together, around a patched message', async (t) => {
  const seen: string[] = []
  const out = dropper(seen).push(Buffer.concat([dropped, query, kept, dropped, ready]))
  t.same(out, Buffer.concat([query, patched, ready]))
  t.same(seen, ['A', 'Q', 'A', 'A', 'Z'], 'every message is still reported')
  t.same(dropper().push(Buffer.concat([query, dropped, dropped, ready])), Buffer.concat([query, ready]), 'adjacent')
})

void t.test('drop: a message split across chunks is dropped when it is whole', async (t) => {
  const f = dropper()
  t.same(f.push(Buffer.concat([query, dropped.subarray(0, 10)])), query)
  t.ok(f.isMidMessage)
  t.same(f.push(dropped.subarray(10, 12)), Buffer.alloc(0))
  t.same(f.push(Buffer.concat([dropped.subarray(12), ready])), ready)
  t.notOk(f.isMidMessage)

  const header = dropper()
  t.same(header.push(dropped.subarray(0, 3)), Buffer.alloc(0), 'split inside the header')
  t.same(header.push(Buffer.concat([dropped.subarray(3), kept])), patched)
})

void t.test('drop: after an uninspected body that spans chunks', async (t) => {
  const f = dropper()
  t.same(f.push(Buffer.concat([query, dataRow.subarray(0, 100)])), Buffer.concat([query, dataRow.subarray(0, 100)]))
  t.same(f.push(Buffer.concat([dataRow.subarray(100), dropped, ready])), Buffer.concat([dataRow.subarray(100), ready]))
})

// The relay drops whatever follows a FATAL it took over, inspected or not (PostgreSQL sends
// nothing after a FATAL; a broken server might).
function dropAfterFatal(): MessageFramer {
  let lost = false
  return new MessageFramer({
    isKnownCode: (code) => 'QZAdDE'.includes(String.fromCharCode(code)),
    maxLength: () => 1 << 30,
    wantsWhole: (code) => code === 0x45 || code === 0x5a,
    maxInspectLength: 64,
    onMessage: (code) => {
      if (code === 0x45) lost = true
      return !lost
    },
  })
}
const fatal = new BufferList().cstring('SFATAL').cstring('C57P01').byte(0).message('E')

void t.test('drop: uninspected messages too, with the rest of a body that spans chunks', async (t) => {
  const input = Buffer.concat([query, dataRow, fatal, dataRow, notify('x'.repeat(80)), ready, dataRow])
  t.same(dropAfterFatal().push(Buffer.from(input)), Buffer.concat([query, dataRow]), 'one chunk')
  for (const [a, b, at] of splits(input)) {
    const f = dropAfterFatal()
    const out = Buffer.concat([f.push(Buffer.from(a)), f.push(Buffer.from(b))])
    if (!out.equals(Buffer.concat([query, dataRow]))) {
      t.fail(`split at ${at} differs`)
      return
    }
  }
  t.pass('all splits agree')
  const f = dropAfterFatal()
  const bytes = Array.from(input, (byte) => f.push(Buffer.from([byte])))
  t.same(Buffer.concat(bytes), Buffer.concat([query, dataRow]), 'one byte at a time')
})

void t.test('no drop: the chunk itself comes back (the fast path), also after a chunk with a drop', async (t) => {
  const f = dropper()
  const chunk = Buffer.concat([query, kept, dataRow, ready])
  t.equal(f.push(chunk), chunk)
  t.same(f.push(Buffer.concat([dropped, ready])), ready)
  const next = Buffer.concat([query, ready])
  t.equal(f.push(next), next)
})

void t.test(
  'drop: at every split offset and one byte at a time, output is the input minus dropped messages',
  async (t) => {
    const input = Buffer.concat([dropped, query, kept, dataRow, dropped, dropped, ready, dropped])
    const expected = Buffer.concat([query, patched, dataRow, ready])
    for (const [a, b, at] of splits(input)) {
      const f = dropper()
      const out = Buffer.concat([f.push(Buffer.from(a)), f.push(Buffer.from(b))])
      if (!out.equals(expected) || f.isMidMessage) {
        t.fail(`split at ${at} differs`)
        return
      }
    }
    t.pass('all splits agree')
    for (let i = 0; i <= input.length; i++) {
      for (let j = i; j <= input.length; j++) {
        const f = dropper()
        const parts = [input.subarray(0, i), input.subarray(i, j), input.subarray(j)]
        const out = Buffer.concat(parts.map((part) => f.push(Buffer.from(part))))
        if (!out.equals(expected)) {
          t.fail(`three chunks split at ${i} and ${j} differ`)
          return
        }
      }
    }
    t.pass('all three-chunk splits agree')
    const f = dropper()
    const bytes = Array.from(input, (byte) => f.push(Buffer.from([byte])))
    t.same(Buffer.concat(bytes), expected, 'one byte at a time')
  },
)

void t.test('a protocol violation after a dropped message: forwardable leaves the dropped one out', async (t) => {
  const f = dropper()
  const bad = Buffer.from([0x3f, 0, 0, 0, 4])
  const err = (() => {
    try {
      f.push(Buffer.concat([query, dropped, kept, bad]))
    } catch (e) {
      return e
    }
    return undefined
  })()
  t.ok(err instanceof ProtocolViolation)
  t.same((err as ProtocolViolation).forwardable, Buffer.concat([query, patched]))
})
