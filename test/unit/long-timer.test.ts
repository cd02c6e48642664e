import { mock } from 'node:test'
import t from 'tap'
import { MAX_TIMER_MS, setLongTimeout } from '../../src/vault/long-timer.js'

// Fake timers (node:test's MockTimers, with Date): a 900 h wait must not fire early, and must fire once.

const HOUR = 3_600_000

void t.test('a delay beyond 2^31-1 ms waits for it, in re-armed steps, and fires once', async (t) => {
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 })
  t.teardown(() => mock.timers.reset())
  let fired = 0
  setLongTimeout(() => fired++, 900 * HOUR)
  mock.timers.tick(1)
  t.equal(fired, 0, 'not after 1 ms (what a plain setTimeout would do)')
  mock.timers.tick(MAX_TIMER_MS)
  t.equal(fired, 0, 'not after the first step')
  mock.timers.tick(900 * HOUR - MAX_TIMER_MS - 2)
  t.equal(fired, 0, 'not a millisecond early')
  mock.timers.tick(1)
  t.equal(fired, 1, 'at the deadline')
  mock.timers.tick(10 * MAX_TIMER_MS)
  t.equal(fired, 1, 'and only once')
})

void t.test('cleared before or between steps, it never fires; a short or negative delay fires promptly', async (t) => {
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 })
  t.teardown(() => mock.timers.reset())
  let fired = 0
  const early = setLongTimeout(() => fired++, 8760 * HOUR)
  mock.timers.tick(3 * MAX_TIMER_MS)
  early.clear()
  mock.timers.tick(8760 * HOUR)
  t.equal(fired, 0)
  setLongTimeout(() => fired++, -5)
  mock.timers.tick(0)
  t.equal(fired, 1)
  const short = setLongTimeout(() => fired++, 1_000)
  mock.timers.tick(999)
  t.equal(fired, 1)
  mock.timers.tick(1)
  t.equal(fired, 2)
  short.clear()
})

void t.test('real timers: what Node does with a long delay, and what setLongTimeout does', async (t) => {
  let plain = 0
  let long = 0
  process.once('warning', () => undefined) // TimeoutOverflowWarning, expected here
  const overflow = setTimeout(() => plain++, MAX_TIMER_MS + 1)
  const timer = setLongTimeout(() => long++, MAX_TIMER_MS + 1)
  await new Promise((r) => setTimeout(r, 50))
  clearTimeout(overflow)
  timer.clear()
  t.equal(plain, 1, 'Node fires a plain setTimeout of 2^31 ms after 1 ms')
  t.equal(long, 0, 'setLongTimeout does not')
})
