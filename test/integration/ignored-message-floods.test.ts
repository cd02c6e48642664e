import net from 'node:net'
import { serialize } from 'pg-protocol'
import t from 'tap'
import { clusterFor } from '../support/pg-cluster.js'
import { startProxy } from '../support/proxy-harness.js'
import { parseMessages, startupMessage } from '../support/wire-builder.js'

// Floods of the messages PostgreSQL reads and ignores without a reply (CopyDone and CopyFail outside
// COPY, Sync and Flush during COPY FROM STDIN: src/backend/tcop/postgres.c, copyfromparse.c), sent
// through the proxy to the real server. Each used to leave one entry per message in the proxy's
// tracker. Now the proxy's heap stays put, the session still answers and is idle afterwards (so it
// idles out), and a sibling session is unaffected.
const cluster = await clusterFor(t)
const FLOOD_BYTES = 20 * 1024 * 1024

/** A raw client through the proxy: writes with backpressure, reads until a message type arrives. */
async function connect(port: number): Promise<{
  socket: net.Socket
  send(buf: Buffer): Promise<void>
  until(type: string): Promise<string[]>
}> {
  const socket = net.connect({ host: '127.0.0.1', port })
  await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject))
  let buffered = Buffer.alloc(0)
  let waiter: (() => void) | undefined
  socket.on('data', (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk])
    waiter?.()
  })
  socket.on('close', () => waiter?.())
  const until = async (type: string): Promise<string[]> => {
    for (;;) {
      const messages = parseMessages(buffered)
      const at = messages.findIndex((m) => m.type === type)
      if (at >= 0) {
        const used = messages.slice(0, at + 1).reduce((n, m) => n + 5 + m.body.length, 0)
        buffered = buffered.subarray(used)
        return messages.slice(0, at + 1).map((m) => m.type)
      }
      if (socket.destroyed) throw new Error(`closed before ${type}; got ${messages.map((m) => m.type).join('')}`)
      await new Promise<void>((resolve) => (waiter = resolve))
    }
  }
  const send = async (buf: Buffer): Promise<void> => {
    if (!socket.write(buf)) await new Promise((resolve) => socket.once('drain', resolve))
  }
  await send(startupMessage({ user: 'flood', database: cluster.database }))
  await until('Z')
  return { socket, send, until }
}

async function flood(send: (buf: Buffer) => Promise<void>, message: Buffer): Promise<void> {
  const chunk = Buffer.concat(Array.from({ length: Math.floor(65536 / message.length) }, () => message))
  for (let sent = 0; sent < FLOOD_BYTES; sent += chunk.length) await send(chunk)
}

const COPY_DONE = serialize.copyDone()
const COPY_FAIL = serialize.copyFail('x')
const SYNC = serialize.sync()
const FLUSH = serialize.flush()

for (const [name, message, inCopy] of [
  ['CopyDone outside COPY', COPY_DONE, false],
  ['CopyFail outside COPY', COPY_FAIL, false],
  ['Sync during COPY FROM STDIN', SYNC, true],
  ['Flush during COPY FROM STDIN', FLUSH, true],
] as const) {
  void t.test(`${name}: ${FLOOD_BYTES >> 20} MB of them`, async (t) => {
    const proxy = await startProxy(t, cluster, { idle_client_timeout_ms: 1500, pool: { mode: 'none' } })
    const client = await connect(proxy.port)
    if (inCopy) {
      await client.send(serialize.query('create temp table sink (v text); copy sink from stdin'))
      await client.until('G')
    }
    global.gc?.()
    const before = process.memoryUsage().heapUsed
    await flood((buf) => client.send(buf), message)
    if (inCopy) {
      await client.send(serialize.copyDone())
      t.same((await client.until('Z')).slice(-2), ['C', 'Z'], 'the COPY ends normally')
    }
    await client.send(serialize.query('select 1'))
    t.same(await client.until('Z'), ['T', 'D', 'C', 'Z'], 'the session answers afterwards')
    const grown = process.memoryUsage().heapUsed - before
    t.ok(
      grown < 64 * 1024 * 1024,
      `the proxy's heap grew ${(grown / 2 ** 20).toFixed(1)} MB for ${FLOOD_BYTES >> 20} MB of ignored messages`,
    )
    // Idle at last: idle_client_timeout_ms ends it, which it would not if it still looked busy.
    const end = await client.until('E')
    t.same(end.at(-1), 'E', 'the idle timeout ends the session (57P05): the proxy sees it idle')
    const sibling = await proxy.client()
    t.equal((await sibling.query<{ n: number }>('select 1 as n')).rows[0]?.n, 1, 'another session answers')
    client.socket.destroy()
  })
}
