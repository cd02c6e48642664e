/**
 * Memory of idle clients: the resident set of pg-vault-proxy and of pgbouncer (session mode) at rest,
 * and with BENCH_IDLE_CLIENTS (1000) clients logged in and idle, side by side in one run.
 *
 * Each client is a bare socket that sends a startup packet, reads up to its first ReadyForQuery and
 * then sends nothing: what an application's idle pool looks like to the intermediary. The proxy logs
 * in upstream for every client (one backend each, so the cluster gets max_connections to match);
 * pgbouncer answers the login itself and only takes a server connection for a query. RSS is read
 * from /proc/<pid>/status (VmRSS) after the clients settle, and once more after they leave.
 *
 * Environment: BENCH_IDLE_CLIENTS (1000), BENCH_IDLE_BATCH (50 logins at a time), PGBOUNCER_BIN,
 * PGVP_PG_BIN. docs/performance.md has the recorded figures.
 */
import net from 'node:net'
import { readFileSync } from 'node:fs'
import { serialize } from 'pg-protocol'
import { startCluster } from '../test/support/pg-cluster.js'
import {
  HOST,
  cleanupSync,
  runBenchmark,
  ensureBuilt,
  ensureClients,
  firstLine,
  intEnv,
  markdownTable,
  sleep,
  stopAll,
  stopChild,
} from './support.js'
import { PGBOUNCER, ensurePgbouncer, startPgbouncer, startProxy, writeProxyConfig, type Started } from './targets.js'

const CLIENTS = intEnv('BENCH_IDLE_CLIENTS', 1000)
const BATCH = intEnv('BENCH_IDLE_BATCH', 50)
/** Time for the intermediary to settle (timers, lazy allocations) before its RSS is read. */
const SETTLE_MS = 2_000

/** VmRSS of a process, in bytes. */
function rssBytes(pid: number | undefined): number {
  if (pid === undefined) throw new Error('the intermediary has no pid')
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const kb = status.split('\n').find((line) => line.startsWith('VmRSS:'))
  if (!kb) throw new Error(`no VmRSS for pid ${pid}`)
  return Number(kb.replace(/\D/g, '')) * 1024
}

/** One idle client: logged in (first ReadyForQuery read), then silent until closed. */
function idleClient(port: number, user: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: HOST, port })
    const timer = setTimeout(() => {
      socket.destroy()
      reject(new Error(`no ReadyForQuery within 30 s on port ${port}`))
    }, 30_000)
    let buffered = Buffer.alloc(0)
    const onData = (chunk: Buffer): void => {
      buffered = Buffer.concat([buffered, chunk])
      // Walk whole messages: type byte, then a length that counts itself.
      let offset = 0
      while (buffered.length - offset >= 5) {
        const type = buffered[offset]
        const length = buffered.readUInt32BE(offset + 1)
        if (buffered.length - offset < 1 + length) break
        if (type === 0x45 /* ErrorResponse */) {
          clearTimeout(timer)
          socket.destroy()
          reject(new Error(`login refused: ${buffered.subarray(offset + 5, offset + 1 + length).toString('latin1')}`))
          return
        }
        if (type === 0x5a /* ReadyForQuery */) {
          clearTimeout(timer)
          socket.off('data', onData)
          resolve(socket)
          return
        }
        offset += 1 + length
      }
      buffered = buffered.subarray(offset)
    }
    socket.on('data', onData)
    socket.once('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    socket.write(serialize.startup({ user, database: 'appdb' }))
  })
}

interface Measured {
  name: string
  restBytes: number
  loadedBytes: number
  afterBytes: number
}

async function measure(name: string, target: Started, user: string): Promise<Measured> {
  await sleep(SETTLE_MS)
  const restBytes = rssBytes(target.pid())
  const clients: net.Socket[] = []
  try {
    for (let opened = 0; opened < CLIENTS; opened += BATCH) {
      const batch = Math.min(BATCH, CLIENTS - opened)
      clients.push(...(await Promise.all(Array.from({ length: batch }, () => idleClient(target.port, user)))))
    }
    await sleep(SETTLE_MS)
    const loadedBytes = rssBytes(target.pid())
    for (const socket of clients) socket.end(serialize.end())
    clients.length = 0
    await sleep(SETTLE_MS)
    return { name, restBytes, loadedBytes, afterBytes: rssBytes(target.pid()) }
  } finally {
    for (const socket of clients) socket.destroy()
  }
}

async function main(): Promise<void> {
  const { psql } = ensureClients()
  ensurePgbouncer()
  ensureBuilt('bench')
  console.log(`starting a PostgreSQL 15 cluster (max_connections for ${CLIENTS} proxy sessions) ...`)
  const cluster = await startCluster({ extraConf: [`max_connections = ${CLIENTS + 50}`] })
  try {
    const user = cluster.users.scram.user
    const results: Measured[] = []
    // One intermediary at a time, so neither's clients or backends weigh on the other's figures.
    const bouncer = await startPgbouncer(psql, cluster, CLIENTS + 10)
    results.push(await measure('pgbouncer', bouncer, user))
    await stopChild(bouncer.entry)
    const proxy = await startProxy(psql, cluster, await writeProxyConfig(cluster, CLIENTS + 10))
    results.push(await measure('proxy', proxy, user))
    await stopChild(proxy.entry)

    const mb = (bytes: number): string => (bytes / 2 ** 20).toFixed(1)
    const perClientKb = (m: Measured): number => (m.loadedBytes - m.restBytes) / 1024 / CLIENTS
    const rows = [
      [
        'target',
        'RSS at rest MB',
        `RSS with ${CLIENTS} idle clients MB`,
        'per idle client KB',
        'RSS after they left MB',
      ],
      ...results.map((m) => [m.name, mb(m.restBytes), mb(m.loadedBytes), perClientKb(m).toFixed(1), mb(m.afterBytes)]),
    ]
    const [bouncerResult, proxyResult] = results as [Measured, Measured]
    console.log(
      [
        '',
        `node ${process.version}; ${firstLine(PGBOUNCER, ['--version'])}`,
        '',
        ...markdownTable(rows, [false, true, true, true, true]),
        '',
        `per idle client: proxy/pgbouncer = ${(perClientKb(proxyResult) / perClientKb(bouncerResult)).toFixed(1)}x`,
        `target (#12): under 25 KB per idle client: ${perClientKb(proxyResult) < 25 ? 'MET' : 'MISSED'} (${perClientKb(proxyResult).toFixed(1)} KB); under 60 MB at rest: ${proxyResult.restBytes < 60 * 2 ** 20 ? 'MET' : 'MISSED'} (${mb(proxyResult.restBytes)} MB)`,
      ].join('\n'),
    )
  } finally {
    await stopAll()
    await cluster.stop()
    cleanupSync()
  }
}

runBenchmark(main)
