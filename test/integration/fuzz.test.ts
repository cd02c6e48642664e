import t from 'tap'
import { fuzzProxy, mb, MEMORY_BOUNDS } from '../fuzz/fuzz-proxy.js'
import { clusterFor } from '../support/pg-cluster.js'
import { startProxyProcess } from '../support/proxy-process.js'

// A short run of the client-side fuzzer (`npm run fuzz` runs a million messages): random and
// mutated startup packets and frontend messages over real sockets to the proxy process.
const cluster = await clusterFor(t)
const MESSAGES = Number(process.env.FUZZ_MESSAGES ?? 20_000)
const SEED = Number(process.env.FUZZ_SEED ?? 20_251_203)

void t.test(`${MESSAGES} fuzzed client messages: the proxy stays up, bounded, and serving`, async (t) => {
  const proxy = await startProxyProcess(t, cluster)
  const report = await fuzzProxy(proxy, cluster, { messages: MESSAGES, seed: SEED })
  t.ok(report.messages >= MESSAGES, `${report.messages} messages in ${report.connections} connections sent`)
  t.ok(report.closedByProxy > 0, `the proxy closed ${report.closedByProxy} broken connections itself`)
  t.ok(
    report.peakResidentBytes > 0 && report.peakResidentBytes <= MEMORY_BOUNDS.residentBytes,
    `peak resident ${mb(report.peakResidentBytes)}`,
  )
  t.ok(
    report.peakHeapUsedBytes > 0 && report.peakHeapUsedBytes <= MEMORY_BOUNDS.heapUsedBytes,
    `peak heap used ${mb(report.peakHeapUsedBytes)}`,
  )
  t.equal(proxy.exitCode(), undefined, 'the proxy is still running')
  t.comment(
    `seed ${SEED}; ${(report.durationMs / 1000).toFixed(1)} s; ${report.timedOut} connections left waiting (a length the proxy still waits on)`,
  )
})
