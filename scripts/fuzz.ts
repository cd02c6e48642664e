// npm run fuzz: the client-side fuzzer against the proxy process in front of a throwaway PostgreSQL 15.
// FUZZ_MESSAGES (default 1,000,000), FUZZ_SEED (default: random, printed), FUZZ_CONCURRENCY (default 8).
// What it sends and asserts: docs/security.md, "Fuzzing".
import { FuzzFailure, fuzzProxy, mb, MEMORY_BOUNDS } from '../test/fuzz/fuzz-proxy.js'
import { startCluster } from '../test/support/pg-cluster.js'
import { startProxyProcess } from '../test/support/proxy-process.js'

const messages = Number(process.env.FUZZ_MESSAGES ?? 1_000_000)
const seed = Number(process.env.FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31))
const concurrency = Number(process.env.FUZZ_CONCURRENCY ?? 8)

const teardowns: Array<() => unknown> = []
const cleanUp = async (): Promise<void> => {
  for (const teardown of teardowns.splice(0).reverse()) await teardown()
}

async function main(): Promise<number> {
  process.stdout.write(
    `fuzzing the proxy with ${messages} client messages, seed ${seed} (FUZZ_SEED=${seed} repeats this run)\n`,
  )
  const cluster = await startCluster()
  teardowns.push(() => cluster.stop())
  const proxy = await startProxyProcess({ teardown: (fn) => teardowns.push(fn) }, cluster)
  let lastPrinted = 0
  try {
    const report = await fuzzProxy(proxy, cluster, {
      messages,
      seed,
      concurrency,
      onBatch: (r) => {
        if (r.durationMs - lastPrinted < 10_000) return
        lastPrinted = r.durationMs
        process.stdout.write(
          `${(r.durationMs / 1000).toFixed(0)} s: ${r.messages} messages, ${r.connections} connections; resident ${mb(r.peakResidentBytes)} peak, heap used ${mb(r.peakHeapUsedBytes)} peak\n`,
        )
      },
    })
    process.stdout.write(
      [
        `ok: ${report.messages} messages (${mb(report.bytes)}) in ${report.connections} connections, ${(report.durationMs / 1000).toFixed(1)} s`,
        `  the proxy closed ${report.closedByProxy} connections itself; ${report.timedOut} were left waiting on a message that never came`,
        `  resident memory ${mb(report.firstResidentBytes)} after the first batch, ${mb(report.peakResidentBytes)} at most (bound ${mb(MEMORY_BOUNDS.residentBytes)})`,
        `  heap used ${mb(report.firstHeapUsedBytes)} after the first batch, ${mb(report.peakHeapUsedBytes)} at most (bound ${mb(MEMORY_BOUNDS.heapUsedBytes)})`,
        '  a sibling session answered select 1 after every batch, and no session was left open',
      ].join('\n') + '\n',
    )
    return 0
  } catch (err) {
    process.stdout.write(`FAIL ${err instanceof FuzzFailure ? err.message : String(err)}\n`)
    const tail = proxy.output().split('\n').slice(-20).join('\n')
    process.stdout.write(`the proxy's last log lines:\n${tail}\n`)
    return 1
  }
}

main()
  .then(async (code) => {
    await cleanUp()
    process.exit(code)
  })
  .catch(async (err: unknown) => {
    process.stderr.write(`fuzz: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
    await cleanUp()
    process.exit(1)
  })
