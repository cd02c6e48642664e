// Drives random client connections at a running proxy over real sockets (test/fuzz/frontend-arbitraries.ts),
// and checks between batches that the proxy is unharmed. Used by `npm run fuzz` (scripts/fuzz.ts)
// and, for a short run, by test/integration/fuzz.test.ts.
import { connect, type Socket } from 'node:net'
import fc from 'fast-check'
import { serialize } from 'pg-protocol'
import { startupMessage } from '../support/wire-builder.js'
import { scenario, type Scenario } from './frontend-arbitraries.js'

export interface FuzzOptions {
  host: string
  port: number
  database: string
  /** Stop after this many messages (startup packets included) were written. */
  messages: number
  seed: number
  /** Connections open at once. */
  concurrency?: number
  /** Connections per batch; `check` runs after each batch. */
  batch?: number
  /** Called after every batch with the totals so far; throw to stop (an invariant broken). */
  check?: (progress: FuzzProgress) => Promise<void>
}

export interface FuzzProgress {
  messages: number
  connections: number
  bytes: number
  batches: number
  /** Connections the proxy closed itself, and those the fuzzer had to give up waiting on. */
  closedByProxy: number
  timedOut: number
}

/** How long a connection may sit with nothing happening before the fuzzer drops it. */
const QUIET_MS = 300

/**
 * Runs scenarios until `messages` were sent. Reproducible from `seed` (batch k samples with seed
 * + k); the caller reports the seed with any failure.
 */
export async function fuzzClients(options: FuzzOptions): Promise<FuzzProgress> {
  const concurrency = options.concurrency ?? 8
  const batchSize = options.batch ?? 50
  const progress: FuzzProgress = { messages: 0, connections: 0, bytes: 0, batches: 0, closedByProxy: 0, timedOut: 0 }
  const login = startupMessage({ user: 'fuzz', database: options.database, application_name: 'fuzz' })
  while (progress.messages < options.messages) {
    const scenarios = fc.sample(scenario, { numRuns: batchSize, seed: options.seed + progress.batches })
    let next = 0
    const worker = async (): Promise<void> => {
      while (next < scenarios.length && progress.messages < options.messages) {
        const current = scenarios[next++] as Scenario
        const outcome = await runConnection(options, current.startup ?? login, current.messages)
        progress.connections++
        progress.messages += outcome.messages
        progress.bytes += outcome.bytes
        if (outcome.end === 'closed') progress.closedByProxy++
        if (outcome.end === 'timeout') progress.timedOut++
      }
    }
    await Promise.all(Array.from({ length: concurrency }, worker))
    progress.batches++
    await options.check?.({ ...progress })
  }
  return progress
}

interface ConnectionOutcome {
  messages: number
  bytes: number
  end: 'closed' | 'ready' | 'timeout'
}

/**
 * One connection: the startup packet, the messages, then a Sync, and wait until the proxy closes
 * the connection, answers the Sync (ReadyForQuery after our last write), or goes quiet.
 */
function runConnection(options: FuzzOptions, startup: Buffer, messages: Buffer[]): Promise<ConnectionOutcome> {
  return new Promise((resolve) => {
    const socket: Socket = connect({ host: options.host, port: options.port })
    socket.setNoDelay(true)
    let sent = 0
    let bytes = 0
    let written = false
    let quiet: NodeJS.Timeout | undefined
    let settled = false
    const done = (end: ConnectionOutcome['end']): void => {
      if (settled) return
      settled = true
      clearTimeout(quiet)
      socket.destroy()
      resolve({ messages: sent, bytes, end })
    }
    const armQuiet = (): void => {
      clearTimeout(quiet)
      quiet = setTimeout(() => done('timeout'), QUIET_MS)
    }
    socket.on('error', () => done('closed'))
    socket.on('close', () => done('closed'))
    socket.on('data', (chunk: Buffer) => {
      // A ReadyForQuery once everything was written: the proxy took it all and the session is well.
      const tail = chunk.length - 6
      if (written && tail >= 0 && chunk[tail] === 0x5a && chunk.readInt32BE(tail + 1) === 5) done('ready')
      else armQuiet()
    })
    socket.on('connect', () => {
      for (const message of [startup, ...messages, Buffer.from(serialize.sync())]) {
        if (socket.destroyed || !socket.writable) break
        socket.write(message)
        sent++
        bytes += message.length
      }
      written = true
      armQuiet()
    })
  })
}
