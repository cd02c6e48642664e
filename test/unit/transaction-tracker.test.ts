import t from 'tap'
import { TransactionTracker } from '../../src/proxy/transaction-tracker.js'

const c = (s: string): number => s.charCodeAt(0)
function feed(tracker: TransactionTracker, frontend: string, backend: Array<string>): void {
  for (const ch of frontend) tracker.onFrontend(c(ch))
  for (const msg of backend) {
    if (msg.startsWith('Z')) tracker.onBackend(c('Z'), msg[1] as 'I' | 'T' | 'E')
    else tracker.onBackend(c(msg))
  }
}

void t.test('simple query: idle after ReadyForQuery', async (t) => {
  const tr = new TransactionTracker()
  t.ok(tr.isIdle)
  tr.onFrontend(c('Q'))
  t.notOk(tr.isIdle)
  t.ok(tr.isBusy)
  feed(tr, '', ['T', 'D', 'C', 'ZI'])
  t.ok(tr.isIdle)
})

void t.test('pipelined extended batches with an error in a transaction: T, E, E', async (t) => {
  const tr = new TransactionTracker()
  feed(tr, 'PBES'.repeat(3), [])
  t.equal(tr.outstanding, 3)
  feed(tr, '', ['1', '2', 'C', 'ZT'])
  t.equal(tr.status, 'T')
  t.equal(tr.outstanding, 2)
  feed(tr, '', ['E', 'ZE', 'ZE'])
  t.equal(tr.status, 'E')
  t.equal(tr.outstanding, 0)
  t.notOk(tr.isIdle, 'idle only with status I')
  feed(tr, 'Q', ['C', 'ZI'])
  t.ok(tr.isIdle)
})

void t.test('Flush without Sync is not idle; the RFQ after Sync is', async (t) => {
  const tr = new TransactionTracker()
  feed(tr, 'PBDEH', ['1', '2', 'T', 'D', 'C'])
  t.equal(tr.outstanding, 0)
  t.notOk(tr.isIdle, 'a batch without its Sync is not idle')
  t.ok(tr.isBusy, 'and a cancel for it is forwarded')
  tr.onFrontend(c('S'))
  t.notOk(tr.isIdle)
  feed(tr, '', ['ZI'])
  t.ok(tr.isIdle)
})

void t.test('extended COPY FROM: two Syncs, one ReadyForQuery', async (t) => {
  const tr = new TransactionTracker()
  feed(tr, 'PBES', ['1', '2', 'G'])
  t.notOk(tr.isIdle, 'in copy')
  feed(tr, 'ddcS', ['C'])
  feed(tr, '', ['ZI'])
  t.ok(tr.isIdle)
  t.equal(tr.outstanding, 0)
})

void t.test('simple COPY FROM and COPY TO', async (t) => {
  const tr = new TransactionTracker()
  feed(tr, 'Q', ['G'])
  feed(tr, 'ddc', ['C', 'ZI'])
  t.ok(tr.isIdle)
  feed(tr, 'Q', ['H', 'd', 'd', 'c', 'C', 'ZI'])
  t.ok(tr.isIdle)
})

void t.test('COPY FROM failing on the server before CopyDone', async (t) => {
  const tr = new TransactionTracker()
  // extended: the server errors mid-stream; the client's later CopyDone is dropped by the server
  feed(tr, 'PBES', ['1', '2', 'G'])
  feed(tr, 'd', ['E'])
  feed(tr, 'dcS', ['ZI'])
  // PostgreSQL read the first Sync after the error (it ends the extended-query error state) and
  // answers it, then the second: two ReadyForQuery, and the session is idle only after both.
  t.notOk(tr.isIdle, 'the second Sync is still owed its ReadyForQuery')
  feed(tr, '', ['ZI'])
  t.ok(tr.isIdle)
  // a later COPY is still counted right
  feed(tr, 'Q', ['G'])
  feed(tr, 'dc', ['C', 'ZI'])
  t.ok(tr.isIdle)
  // simple: CopyFail
  feed(tr, 'Q', ['G'])
  feed(tr, 'df', ['E', 'ZI'])
  t.ok(tr.isIdle)
})

void t.test('asynchronous messages do not change idleness', async (t) => {
  const tr = new TransactionTracker()
  feed(tr, '', ['A', 'N', 'S'])
  t.ok(tr.isIdle)
})
