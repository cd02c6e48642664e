import { EventEmitter } from 'node:events'
import { Writable } from 'node:stream'
import t from 'tap'
import type { ConfigReloader } from '../../src/ops/config-reload.js'
import { handleSignals, SAME_REQUEST_MS } from '../../src/ops/lifecycle.js'
import { createLogger } from '../../src/ops/logger.js'
import type { ProxyServer } from '../../src/proxy/proxy-server.js'

/** handleSignals with a drain that never ends, a clock the test moves, and what it did recorded. */
function harness() {
  const signals = new EventEmitter()
  const exits: number[] = []
  const messages: string[] = []
  let drains = 0
  let clock = 1_000_000
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n'))
        if (line) messages.push((JSON.parse(line) as { msg: string }).msg)
      done()
    },
  })
  const server = {
    drain: () => {
      drains++
      return new Promise<void>(() => {})
    },
  } as unknown as ProxyServer
  const reloader = { config: { shutdown_grace_ms: 30_000 } } as unknown as ConfigReloader
  handleSignals({
    server,
    ops: undefined,
    reloader,
    logger: createLogger('info', sink),
    exit: (code) => exits.push(code),
    signals,
    now: () => clock,
  })
  return {
    send: (signal: NodeJS.Signals, afterMs: number) => {
      clock += afterMs
      signals.emit(signal, signal)
    },
    exits,
    messages,
    drains: () => drains,
  }
}

void t.test("a terminal's Ctrl-C passed on again by a wrapper is one request to stop", async (t) => {
  const h = harness()
  h.send('SIGINT', 0)
  h.send('SIGTERM', 5)
  h.send('SIGINT', SAME_REQUEST_MS - 10)
  t.equal(h.drains(), 1, 'one drain')
  t.same(h.exits, [], 'no early exit: the drain goes on and leases get revoked')
  t.same(h.messages, [
    'shutting down',
    'signal repeated within 1 s: the same request to stop',
    'signal repeated within 1 s: the same request to stop',
  ])
})

void t.test('a signal 1 s or more after the first exits at once', async (t) => {
  const h = harness()
  h.send('SIGTERM', 0)
  h.send('SIGINT', SAME_REQUEST_MS)
  t.same(h.exits, [1])
  t.equal(h.messages.at(-1), 'second signal: exiting at once, without waiting for sessions or revoking leases')
})
