// Loaded into a proxy process under test (node --import): makes the session code fail on demand,
// the way a bug would, so tests can check that only that session ends. Never part of the proxy.
import { SessionState } from '../../src/proxy/session-state.js'

/** Query texts that trigger each fault, in a Query or Parse message. */
export const FAULT_QUERIES = {
  /** A throw inside a client message handler (socket data event). */
  thrown: "select 'pgvp-fault:throw'",
  /** A promise of the session's that rejects and that nobody handles. */
  rejected: "select 'pgvp-fault:reject'",
  /** A throw in a timer the session started. */
  timer: "select 'pgvp-fault:timer'",
} as const

// eslint-disable-next-line @typescript-eslint/unbound-method -- called with the session state as `this` below
const original = SessionState.prototype.onClientMessage
SessionState.prototype.onClientMessage = function (this: SessionState, code: number, message: Buffer): void {
  const text = message.toString('latin1')
  if (text.includes('pgvp-fault:throw')) throw new Error('injected fault: thrown in a message handler')
  if (text.includes('pgvp-fault:reject')) void Promise.reject(new Error('injected fault: a rejected promise'))
  if (text.includes('pgvp-fault:timer'))
    setTimeout(() => {
      throw new Error('injected fault: thrown in a timer')
    }, 0)
  original.call(this, code, message)
}
