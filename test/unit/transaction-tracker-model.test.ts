import fc from 'fast-check'
import t from 'tap'
import { MAX_TRACKED_RUNS, TransactionTracker } from '../../src/proxy/transaction-tracker.js'

// The tracker against a model of what PostgreSQL does with each frontend message: PostgresMain and
// SocketBackend in src/backend/tcop/postgres.c (ignore_till_sync after an error in an extended-query
// message, CopyData/CopyDone/CopyFail ignored outside COPY, one ReadyForQuery per Query, FunctionCall
// and Sync) and CopyGetData in src/backend/commands/copyfromparse.c (during COPY FROM STDIN, Flush
// and Sync are ignored, CopyDone/CopyFail end the COPY, any other message is an error that ends it).
// Client messages and server replies are interleaved in every causal order fast-check finds.

type Outcome = 'rows' | 'error' | 'copyin' | 'copyout'
interface Message {
  code: string
  /** What the server does with a Query or Execute, or whether a CopyData breaks the COPY. */
  outcome: Outcome
}

const c = (s: string): number => s.charCodeAt(0)

/** The server: reads the client's messages in order and says what it sends back for each. */
class ServerModel {
  mode: 'normal' | 'ignoreTillSync' | 'copyIn' = 'normal'
  /** What started the COPY IN: a simple Query (ends with ReadyForQuery) or an Execute. */
  copyStarter: 'Q' | 'E' = 'Q'
  /** An extended-query message was processed since the last Sync (the batch's transaction is open). */
  extendedOpen = false

  process(m: Message): string[] {
    const out: string[] = []
    if (this.mode === 'copyIn') {
      if (m.code === 'd') {
        if (m.outcome === 'error') this.leaveCopy(out, 'E')
      } else if (m.code === 'c') this.leaveCopy(out, 'C')
      else if (m.code === 'f') this.leaveCopy(out, 'E')
      else if (m.code === 'H' || m.code === 'S') {
        // ignored during COPY
      } else this.leaveCopy(out, 'E') // unexpected message type during COPY: consumed
      return out
    }
    if (this.mode === 'ignoreTillSync') {
      if (m.code === 'S') {
        this.mode = 'normal'
        this.extendedOpen = false
        out.push('Z')
      }
      return out
    }
    switch (m.code) {
      case 'Q':
        this.extendedOpen = false
        return this.run('Q', m.outcome, out)
      case 'F':
        this.extendedOpen = false
        out.push(m.outcome === 'error' ? 'E' : 'V', 'Z')
        return out
      case 'S':
        this.extendedOpen = false
        out.push('Z')
        return out
      case 'H':
        return out // Flush: sends what is pending; opens no transaction
      case 'P':
      case 'B':
      case 'D':
      case 'C':
        this.extendedOpen = true
        if (m.outcome === 'error') {
          out.push('E')
          this.mode = 'ignoreTillSync'
        } else out.push({ P: '1', B: '2', D: 'n', C: '3' }[m.code])
        return out
      case 'E':
        this.extendedOpen = true
        return this.run('E', m.outcome, out)
      default:
        return out // d, c, f outside COPY: ignored
    }
  }

  private run(starter: 'Q' | 'E', outcome: Outcome, out: string[]): string[] {
    if (outcome === 'copyin') {
      out.push('G')
      this.mode = 'copyIn'
      this.copyStarter = starter
      return out
    }
    if (outcome === 'copyout') out.push('H', 'd', 'c', 'C')
    else if (outcome === 'error') out.push('E')
    else out.push('T', 'D', 'C')
    if (starter === 'Q') out.push('Z')
    else if (outcome === 'error') this.mode = 'ignoreTillSync'
    return out
  }

  private leaveCopy(out: string[], how: 'C' | 'E'): void {
    out.push(how)
    if (this.copyStarter === 'Q') {
      this.mode = 'normal'
      out.push('Z')
    } else this.mode = how === 'E' ? 'ignoreTillSync' : 'normal'
  }
}

const message = fc.record<Message>({
  code: fc.constantFrom('Q', 'F', 'S', 'P', 'B', 'E', 'D', 'C', 'H', 'd', 'c', 'f'),
  outcome: fc.constantFrom<Outcome>('rows', 'rows', 'error', 'copyin', 'copyout'),
})

/** Each step: the client sends its next message, or the server handles the oldest one it has. */
const schedule = fc.array(fc.boolean(), { maxLength: 400 })

void t.test(
  'the tracker is never idle while the server still has something to answer; its size stays bounded',
  async (t) => {
    fc.assert(
      fc.property(fc.array(message, { maxLength: 200 }), schedule, (messages, steps) => {
        const tracker = new TransactionTracker()
        const server = new ServerModel()
        let sent = 0
        let processed = 0
        const deliver = (): void => {
          const m = messages[processed++] as Message
          for (const code of server.process(m)) {
            if (code === 'Z') tracker.onBackend(c('Z'), 'I')
            else tracker.onBackend(c(code))
          }
        }
        const check = (): void => {
          if (tracker.isIdle) {
            // Whatever the server has not read yet must be ignored by it, and leave it idle.
            const rest = Object.assign(new ServerModel(), server)
            const replies = messages.slice(processed, sent).flatMap((m) => rest.process(m))
            if (replies.length > 0 || rest.mode !== 'normal' || rest.extendedOpen)
              throw new Error(`idle, but the server still answers ${replies.join('')} (mode ${rest.mode})`)
          }
          if (tracker.trackedRuns > MAX_TRACKED_RUNS) throw new Error('tracker grew past its bound')
        }
        for (const clientMoves of [...steps, ...messages.map(() => true), ...messages.map(() => false)]) {
          if (clientMoves && sent < messages.length) tracker.onFrontend(c((messages[sent++] as Message).code))
          else if (processed < sent) deliver()
          check()
        }
      }),
      { numRuns: 3000 },
    )
    t.pass('3000 random sessions')
  },
)

void t.test('well-behaved sessions end idle, stray messages included', async (t) => {
  // Clients as libpq, JDBC and node-postgres drive the server: a COPY IN is ended by CopyDone or
  // CopyFail before anything else, extended batches end with Sync, and stray CopyDone, CopyFail and
  // Sync may come anywhere outside COPY. After everything is answered, the session is idle.
  const unit = fc.oneof(
    fc.constant<Message[]>([{ code: 'Q', outcome: 'rows' }]),
    fc.constant<Message[]>([{ code: 'Q', outcome: 'error' }]),
    fc.constant<Message[]>([{ code: 'Q', outcome: 'copyout' }]),
    fc.constant<Message[]>([
      { code: 'Q', outcome: 'copyin' },
      { code: 'd', outcome: 'rows' },
      { code: 'c', outcome: 'rows' },
    ]),
    fc.constant<Message[]>([
      { code: 'Q', outcome: 'copyin' },
      { code: 'f', outcome: 'rows' },
    ]),
    fc.constant<Message[]>([
      { code: 'P', outcome: 'rows' },
      { code: 'B', outcome: 'rows' },
      { code: 'E', outcome: 'rows' },
      { code: 'S', outcome: 'rows' },
    ]),
    fc.constant<Message[]>([
      { code: 'P', outcome: 'error' },
      { code: 'B', outcome: 'rows' },
      { code: 'E', outcome: 'rows' },
      { code: 'S', outcome: 'rows' },
    ]),
    fc.constant<Message[]>([
      { code: 'P', outcome: 'rows' },
      { code: 'B', outcome: 'rows' },
      { code: 'E', outcome: 'copyin' },
      { code: 'd', outcome: 'rows' },
      { code: 'c', outcome: 'rows' },
      { code: 'S', outcome: 'rows' },
    ]),
    fc.constant<Message[]>([{ code: 'c', outcome: 'rows' }]),
    fc.constant<Message[]>([{ code: 'f', outcome: 'rows' }]),
    fc.constant<Message[]>([{ code: 'S', outcome: 'rows' }]),
    fc.constant<Message[]>([
      { code: 'H', outcome: 'rows' },
      { code: 'S', outcome: 'rows' },
    ]),
  )
  fc.assert(
    fc.property(fc.array(unit, { maxLength: 60 }), fc.array(fc.boolean(), { maxLength: 300 }), (units, steps) => {
      const messages = units.flat()
      const tracker = new TransactionTracker()
      const server = new ServerModel()
      let sent = 0
      let processed = 0
      for (const clientMoves of [...steps, ...messages.map(() => true), ...messages.map(() => false)]) {
        if (clientMoves && sent < messages.length) tracker.onFrontend(c((messages[sent++] as Message).code))
        else if (processed < sent) {
          for (const code of server.process(messages[processed++] as Message)) {
            if (code === 'Z') tracker.onBackend(c('Z'), 'I')
            else tracker.onBackend(c(code))
          }
        }
      }
      if (!tracker.isIdle) throw new Error(`busy after everything was answered (${tracker.outstanding} owed)`)
    }),
    { numRuns: 3000 },
  )
  t.pass('3000 well-behaved sessions')
})

void t.test('floods of ignored messages cost no memory and leave the session idle', async (t) => {
  for (const [name, code, setup] of [
    ['CopyDone outside COPY', 'c', ''],
    ['CopyFail outside COPY', 'f', ''],
    ['Sync during COPY IN', 'S', 'Q'],
    ['Flush', 'H', ''],
  ] as const) {
    const tracker = new TransactionTracker()
    if (setup) {
      tracker.onFrontend(c('Q'))
      tracker.onBackend(c('G'))
    }
    for (let i = 0; i < 1_000_000; i++) tracker.onFrontend(c(code))
    t.ok(tracker.trackedRuns <= 2, `${name}: ${tracker.trackedRuns} run(s) after a million`)
    if (setup) {
      tracker.onFrontend(c('c'))
      tracker.onBackend(c('C'))
      tracker.onBackend(c('Z'), 'I')
    }
    if (code === 'H') {
      tracker.onFrontend(c('S'))
      tracker.onBackend(c('Z'), 'I')
    }
    t.ok(tracker.isIdle, `${name}: idle once answered`)
  }
  // A stray CopyDone while a query runs: ignored once the query is answered.
  const tracker = new TransactionTracker()
  tracker.onFrontend(c('Q'))
  for (let i = 0; i < 100_000; i++) tracker.onFrontend(c('c'))
  tracker.onBackend(c('C'))
  tracker.onBackend(c('Z'), 'I')
  t.ok(tracker.isIdle, 'CopyDone sent while a query ran does not leave the session busy')
  // Alternating pipelined requests past the bound: the tracker gives up, holds nothing, and the
  // session is never called idle again (it cannot move, and keeps working).
  const piped = new TransactionTracker()
  for (let i = 0; i < 200_000; i++) piped.onFrontend(c(i % 2 ? 'Q' : 'c'))
  t.ok(piped.overflowed, 'past the bound')
  t.equal(piped.trackedRuns, 0, 'holding nothing')
  for (let i = 0; i < 100_000; i++) piped.onBackend(c('Z'), 'I')
  t.notOk(piped.isIdle, 'never idle again')
  t.ok(piped.isBusy, 'so a cancel is still forwarded')
  // Below the bound, every answer is counted.
  const some = new TransactionTracker()
  for (let i = 0; i < 2 * (MAX_TRACKED_RUNS - 2); i++) some.onFrontend(c(i % 2 ? 'Q' : 'c'))
  t.notOk(some.overflowed)
  for (let i = 0; i < MAX_TRACKED_RUNS - 2; i++) some.onBackend(c('Z'), 'I')
  t.ok(some.isIdle, 'idle after the last answer')
})
