import t from 'tap'
import { encodeMessage } from '../../src/pgwire/backend-messages.js'
import { BackendCode } from '../../src/pgwire/codes.js'
import { FramingError } from '../../src/pgwire/message-reader.js'
import { ReplyScanner } from '../../src/pgwire/reply-scanner.js'

const complete = encodeMessage(BackendCode.CommandComplete, Buffer.from('DISCARD ALL\0'))
const status = encodeMessage(BackendCode.ParameterStatus, Buffer.from('TimeZone\0UTC\0'))
const ready = encodeMessage(BackendCode.ReadyForQuery, Buffer.from('I'))
const notice = encodeMessage(BackendCode.NoticeResponse, Buffer.from('SNOTICE\0Mafter\0\0'))

function scan(maxBytes = 1024): { seen: string[]; scanner: ReplyScanner } {
  const seen: string[] = []
  const scanner = new ReplyScanner(maxBytes, (code, body) => {
    seen.push(`${String.fromCharCode(code)}:${body.toString('latin1')}`)
    return code === BackendCode.ReadyForQuery
  })
  return { seen, scanner }
}

void t.test('messages split anywhere, down to single bytes, are seen whole and in order', async (t) => {
  const answer = Buffer.concat([complete, status, ready, notice])
  for (const size of [1, 2, 3, 5, 7, answer.length]) {
    const { seen, scanner } = scan()
    let rest: Buffer | undefined
    for (let at = 0; at < answer.length && rest === undefined; at += size)
      rest = scanner.push(answer.subarray(at, at + size))
    t.same(seen, ['C:DISCARD ALL\0', 'S:TimeZone\0UTC\0', 'Z:I'], `chunks of ${size}`)
    // What followed the last message in its chunk is handed back (all of it when the answer came in one chunk).
    if (size === answer.length) t.same(rest, notice)
    else t.ok(rest !== undefined && notice.subarray(0, rest.length).equals(rest), `rest, chunks of ${size}`)
  }
})

void t.test('the rest is a copy, not a view that keeps the chunk alive', async (t) => {
  const chunk = Buffer.concat([ready, notice])
  const rest = scan().scanner.push(chunk)
  t.same(rest, notice)
  t.not(rest?.buffer, chunk.buffer)
})

void t.test('a length word under 4 is a framing error', async (t) => {
  t.throws(() => scan().scanner.push(Buffer.from([0x43, 0, 0, 0, 3])), FramingError)
})

void t.test('an answer longer than the bound is refused before it is all held', async (t) => {
  const { scanner } = scan(100)
  const huge = Buffer.alloc(5)
  huge[0] = BackendCode.DataRow
  huge.writeUInt32BE(1_000_000, 1)
  t.equal(scanner.push(huge), undefined)
  t.throws(() => scanner.push(Buffer.alloc(200)), /more than 100 bytes/)
})

void t.test('a long message sent a byte at a time is read whole, once', async (t) => {
  const row = encodeMessage(BackendCode.DataRow, Buffer.alloc(20_000, 0x61))
  const seen: number[] = []
  const scanner = new ReplyScanner(64 * 1024, (code, body) => {
    seen.push(body.length)
    return code === BackendCode.ReadyForQuery
  })
  const answer = Buffer.concat([row, ready])
  let rest: Buffer | undefined
  for (let at = 0; at < answer.length && rest === undefined; at++) rest = scanner.push(answer.subarray(at, at + 1))
  t.same(seen, [20_000, 1], 'the row, then ReadyForQuery')
  t.same(rest, Buffer.alloc(0))
})
