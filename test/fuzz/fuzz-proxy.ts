// A fuzz run against a proxy process, with the invariants checked as it goes: the process stays
// up, a sibling session keeps answering, memory stays bounded, and no session is left behind.
import type pg from 'pg'
import type { PgCluster } from '../support/pg-cluster.js'
import type { ProxyProcess } from '../support/proxy-process.js'
import { eventually } from '../support/vault-target.js'
import { fuzzClients, type FuzzProgress } from './client-fuzzer.js'

/**
 * The proxy's memory may not exceed these, read from its own /metrics (process_resident_memory_bytes,
 * nodejs_heap_size_used_bytes) after every batch: every per-session structure is bounded and sessions
 * end, so a long run must stay flat. Documented in docs/security.md ("Fuzzing").
 */
export const MEMORY_BOUNDS = { residentBytes: 384 * 1024 * 1024, heapUsedBytes: 192 * 1024 * 1024 }

export interface FuzzReport extends FuzzProgress {
  seed: number
  durationMs: number
  peakResidentBytes: number
  peakHeapUsedBytes: number
  /** Resident and heap bytes after the first batch, to compare the peaks with. */
  firstResidentBytes: number
  firstHeapUsedBytes: number
}

export class FuzzFailure extends Error {}

export async function fuzzProxy(
  proxy: ProxyProcess,
  cluster: PgCluster,
  options: { messages: number; seed: number; concurrency?: number; onBatch?: (report: FuzzReport) => void },
): Promise<FuzzReport> {
  const sibling = await proxy.client()
  await selectOne(sibling, 'before the run')
  const started = Date.now()
  const report: FuzzReport = {
    seed: options.seed,
    durationMs: 0,
    messages: 0,
    connections: 0,
    bytes: 0,
    batches: 0,
    closedByProxy: 0,
    timedOut: 0,
    peakResidentBytes: 0,
    peakHeapUsedBytes: 0,
    firstResidentBytes: 0,
    firstHeapUsedBytes: 0,
  }
  const fail = (what: string): never => {
    throw new FuzzFailure(
      `${what} (seed ${options.seed}, batch ${report.batches}, after ${report.messages} messages; FUZZ_SEED=${options.seed} reproduces it)`,
    )
  }
  const progress = await fuzzClients({
    host: '127.0.0.1',
    port: proxy.port,
    database: cluster.database,
    messages: options.messages,
    seed: options.seed,
    concurrency: options.concurrency,
    check: async (progress) => {
      Object.assign(report, progress, { durationMs: Date.now() - started })
      if (proxy.exitCode() !== undefined) fail(`the proxy exited with code ${proxy.exitCode()}`)
      const resident = (await proxy.metric('process_resident_memory_bytes')) ?? fail('no process_resident_memory_bytes')
      const heap = (await proxy.metric('nodejs_heap_size_used_bytes')) ?? fail('no nodejs_heap_size_used_bytes')
      if (report.batches === 1) {
        report.firstResidentBytes = resident
        report.firstHeapUsedBytes = heap
      }
      report.peakResidentBytes = Math.max(report.peakResidentBytes, resident)
      report.peakHeapUsedBytes = Math.max(report.peakHeapUsedBytes, heap)
      if (resident > MEMORY_BOUNDS.residentBytes)
        fail(`resident memory ${mb(resident)} over ${mb(MEMORY_BOUNDS.residentBytes)}`)
      if (heap > MEMORY_BOUNDS.heapUsedBytes) fail(`heap used ${mb(heap)} over ${mb(MEMORY_BOUNDS.heapUsedBytes)}`)
      await selectOne(sibling, `after batch ${progress.batches}`).catch((err: Error) => fail(err.message))
      options.onBatch?.(report)
    },
  })
  Object.assign(report, progress, { durationMs: Date.now() - started })
  await selectOne(sibling, 'after the run').catch((err: Error) => fail(err.message))
  // Every fuzz connection is gone: only the sibling is left.
  const settled = await eventually(15, async () => (await proxy.metric('pg_vault_proxy_client_connections')) === 1)
  if (!settled)
    fail(
      `${await proxy.metric('pg_vault_proxy_client_connections')} client connections still open after the run, expected 1`,
    )
  return report
}

async function selectOne(client: pg.Client, when: string): Promise<void> {
  const { rows } = await client.query<{ one: number }>('select 1 as one')
  if (rows[0]?.one !== 1) throw new Error(`the sibling session did not answer select 1 ${when}`)
}

export function mb(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`
}
