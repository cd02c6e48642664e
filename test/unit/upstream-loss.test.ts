import t from 'tap'
import {
  decodeErrorFields,
  encodeErrorResponse,
  errorFields,
  type ErrorFields,
} from '../../src/pgwire/backend-messages.js'
import { BackendCode } from '../../src/pgwire/codes.js'
import { explainedFatal, lostUpstreamFarewell } from '../../src/proxy/session-farewell.js'
import {
  answerUpstreamClosed,
  answerUpstreamNotice,
  classifyUpstreamNotice,
  type LossDecision,
  type UpstreamLoss,
} from '../../src/proxy/upstream-loss.js'

const E = BackendCode.ErrorResponse
const N = BackendCode.NoticeResponse

/** Fields as a server sends them: S (localized), V, C, M, then optionally D. */
function serverFields(severity: string, sqlState: string, message: string, detail?: string): ErrorFields {
  const fields: ErrorFields = new Map([
    ['S', severity],
    ['V', severity],
    ['C', sqlState],
    ['M', message],
  ])
  if (detail !== undefined) fields.set('D', detail)
  return fields
}

const TERMINATED = serverFields('FATAL', '57P01', 'terminating connection due to administrator command')

void t.test('a 57P01 FATAL announces a loss', async (t) => {
  t.same(classifyUpstreamNotice(E, TERMINATED), {
    kind: 'loss',
    announced: '57P01 terminating connection due to administrator command',
    sqlState: '57P01',
    fatal: true,
  })
  t.same(classifyUpstreamNotice(E, serverFields('PANIC', '57P02', 'crash')), {
    kind: 'loss',
    announced: '57P02 crash',
    sqlState: '57P02',
    fatal: true,
  })
})

void t.test('a 57P01 WARNING notice (an immediate shutdown) announces a loss', async (t) => {
  const warning = serverFields('WARNING', '57P01', 'terminating connection due to immediate shutdown command')
  t.same(classifyUpstreamNotice(N, warning), {
    kind: 'loss',
    announced: '57P01 terminating connection due to immediate shutdown command',
    sqlState: '57P01',
    fatal: false,
  })
  // The untranslated V decides, when the server sends it.
  const localized = new Map(warning).set('S', 'ATTENTION')
  t.equal(classifyUpstreamNotice(N, localized).kind, 'loss')
})

void t.test('a 28000 FATAL ends the session but announces no loss', async (t) => {
  t.same(classifyUpstreamNotice(E, serverFields('FATAL', '28000', 'role "x" is not permitted to log in')), {
    kind: 'fatal',
    announced: '28000 role "x" is not permitted to log in',
  })
})

void t.test('an ERROR, or a notice that is not about the server going, is nothing', async (t) => {
  t.same(classifyUpstreamNotice(E, serverFields('ERROR', '57014', 'canceling statement due to user request')), {
    kind: 'nothing',
  })
  // A 57P01 that is only an ERROR is not the connection's end.
  t.same(classifyUpstreamNotice(E, serverFields('ERROR', '57P01', 'x')), { kind: 'nothing' })
  t.same(classifyUpstreamNotice(N, serverFields('WARNING', '01000', 'x')), { kind: 'nothing' })
  t.same(classifyUpstreamNotice(N, serverFields('NOTICE', '57P01', 'x')), { kind: 'nothing' })
})

void t.test("the explained FATAL keeps the server's fields and Detail, and appends the why", async (t) => {
  const fields = serverFields('FATAL', '57P01', 'terminating connection', 'server detail.')
  const explained = explainedFatal(fields, 'pg-vault-proxy did not reconnect it.')
  t.same(
    [...explained],
    [...fields].map(([k, v]) => [k, k === 'D' ? 'server detail. pg-vault-proxy did not reconnect it.' : v]),
  )
  t.equal(fields.get('D'), 'server detail.', "the server's fields are not changed")
  t.equal(explainedFatal(TERMINATED, 'why.').get('D'), 'why.', 'without a Detail, the why is the Detail')
})

void t.test('answers to the relay', async (t) => {
  const asked: UpstreamLoss[] = []
  const deciding =
    (decision: LossDecision) =>
    (loss: UpstreamLoss): LossDecision => {
      asked.push(loss)
      return decision
    }
  const neverAsked = (): LossDecision => t.fail('not asked') as never

  t.same(answerUpstreamNotice(E, serverFields('ERROR', '42P01', 'x'), neverAsked), { kind: 'forward' })
  t.same(answerUpstreamNotice(E, serverFields('FATAL', '28000', 'no'), neverAsked), {
    kind: 'forward',
    fatal: '28000 no',
  })
  t.same(answerUpstreamNotice(E, TERMINATED, deciding({ kind: 'reconnect' })), { kind: 'take_over' })
  t.same(asked.splice(0), [
    { announced: '57P01 terminating connection due to administrator command', sqlState: '57P01' },
  ])
  t.same(answerUpstreamNotice(E, TERMINATED, deciding({ kind: 'end' })), {
    kind: 'forward',
    fatal: '57P01 terminating connection due to administrator command',
  })
  const replaced = answerUpstreamNotice(E, TERMINATED, deciding({ kind: 'end', why: 'Not idle.' }))
  t.equal(replaced.kind, 'replace')
  if (replaced.kind === 'replace') {
    t.equal(replaced.fatal, '57P01 terminating connection due to administrator command')
    t.equal(replaced.bytes[0], E)
    t.equal(decodeErrorFields(replaced.bytes.subarray(5)).get('D'), 'Not idle.')
  }
  // A WARNING passes as it is; the socket's end that follows is answered on its own.
  t.same(answerUpstreamNotice(N, serverFields('WARNING', '57P02', 'crash'), deciding({ kind: 'end', why: 'w' })), {
    kind: 'forward',
  })

  asked.length = 0
  t.equal(answerUpstreamClosed('ECONNRESET', deciding({ kind: 'reconnect' })), 'take_over')
  t.same(answerUpstreamClosed(undefined, deciding({ kind: 'end', why: 'Busy.' })), {
    farewell: lostUpstreamFarewell(undefined, 'Busy.'),
  })
  t.same(asked, [{ errorCode: 'ECONNRESET' }, {}])
})

void t.test('the lost-upstream farewell: 08006 with the error code, the why as Detail, and a hint', async (t) => {
  t.same(
    lostUpstreamFarewell('ECONNRESET', 'Busy.'),
    encodeErrorResponse(
      errorFields({
        severity: 'FATAL',
        sqlState: '08006',
        message: 'pg-vault-proxy lost the connection to the upstream server (ECONNRESET)',
        detail: 'Busy.',
        hint: 'The server may have restarted or the network failed; reconnect.',
      }),
    ),
  )
  t.notOk(decodeErrorFields(lostUpstreamFarewell(undefined, undefined).subarray(5)).has('D'))
})
