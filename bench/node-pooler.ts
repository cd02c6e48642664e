/**
 * The least a Node.js session pooler does, as a floor for the connection-per-transaction benchmark
 * (`pgbench -C`), where the bare relay (bench/node-relay.ts) is no floor: it logs in afresh for
 * every client. Per client it: accepts the socket, reads the startup packet (answering an
 * SSLRequest with 'N'), writes one canned greeting (AuthenticationOk, the ParameterStatus set of
 * its first upstream login, a BackendKeyData, ReadyForQuery), takes an idle logged-in upstream
 * connection (or logs one in), then pipes bytes both ways, framing only the client's side to see
 * its Terminate. On Terminate it runs DISCARD ALL and keeps the connection for the next client.
 *
 * It does nothing else the proxy does: no credential holds, cancel keys, transaction tracking,
 * limits, linking of parameters, role check, logging or metrics. It trusts its peers and is not
 * hardened: a benchmark tool, never a product.
 *
 * Usage: node --import tsx bench/node-pooler.ts <listen port> <upstream host> <upstream port> <user> <database>
 * with the password in PGVP_BENCH_PASSWORD. Prints "listening" once bound and logged in once.
 */
import { createServer, type Socket } from 'node:net'
import { serialize } from 'pg-protocol'
import { encodeBackendKeyData, encodeParameterStatus } from '../src/pgwire/backend-messages.js'
import { UpstreamConnector, type UpstreamSession } from '../src/proxy/upstream-connector.js'
import { UpstreamEndpoint } from '../src/proxy/upstream-endpoint.js'

const [listenPort, upstreamHost, upstreamPort, user, database] = process.argv.slice(2)
const password = process.env.PGVP_BENCH_PASSWORD
if (!listenPort || !upstreamHost || !upstreamPort || !user || !database || password === undefined) {
  process.stderr.write('usage: PGVP_BENCH_PASSWORD=... node-pooler <listen port> <host> <port> <user> <database>\n')
  process.exit(1)
}

const connector = new UpstreamConnector(
  new UpstreamEndpoint({ host: upstreamHost, port: Number(upstreamPort), sslmode: 'disable' }),
  { connectTimeoutMs: 10_000, channelBinding: 'disable', allowCleartextPassword: false },
)
const credential = { username: user, password, origin: 'bench' }
const login = (): Promise<UpstreamSession> =>
  connector.connect(
    [
      ['user', user],
      ['database', database],
    ],
    credential,
  )

const idle: UpstreamSession[] = []
const RESET = serialize.query('DISCARD ALL')
const SSL_REQUEST_CODE = 80877103

function greeting(first: UpstreamSession): Buffer {
  const parts: Buffer[] = [Buffer.from([0x52, 0, 0, 0, 8, 0, 0, 0, 0])]
  for (const [name, value] of first.parameters) parts.push(encodeParameterStatus(name, value))
  parts.push(encodeBackendKeyData(1, Buffer.from([0, 0, 0, 1])), Buffer.from([0x5a, 0, 0, 0, 5, 0x49]))
  return Buffer.concat(parts)
}

/** Reads the client's startup packet (after an optional SSLRequest); resolves with what followed it. */
function readStartup(client: Socket): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let buffered = Buffer.alloc(0)
    const onData = (chunk: Buffer): void => {
      buffered = Buffer.concat([buffered, chunk])
      for (;;) {
        if (buffered.length < 8) return
        const length = buffered.readInt32BE(0)
        if (buffered.length < length) return
        const code = buffered.readInt32BE(4)
        buffered = buffered.subarray(length)
        if (code === SSL_REQUEST_CODE) {
          client.write('N')
          continue
        }
        client.off('data', onData)
        client.pause()
        resolve(buffered)
        return
      }
    }
    client.on('data', onData)
    client.once('error', reject)
  })
}

/** Runs the reset and resolves once the server is ready again (its last message is ReadyForQuery). */
function reset(upstream: UpstreamSession): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = Buffer.alloc(0)
    const onClose = (): void => reject(new Error('closed'))
    const onData = (chunk: Buffer): void => {
      seen = Buffer.concat([seen, chunk])
      // The answer ends with ReadyForQuery: 'Z', length 5, status.
      if (seen.length >= 6 && seen[seen.length - 6] === 0x5a) {
        upstream.socket.off('data', onData)
        upstream.socket.off('close', onClose)
        upstream.socket.pause()
        resolve()
      }
    }
    upstream.socket.on('data', onData)
    upstream.socket.once('close', onClose)
    upstream.socket.write(RESET)
  })
}

async function serve(client: Socket, canned: Buffer): Promise<void> {
  const rest = await readStartup(client)
  const upstream = idle.pop() ?? (await login())
  client.write(canned)
  // Frames the client's messages only to find its Terminate; everything else is forwarded as it comes.
  let pending = rest
  let open = true
  const forward = (chunk: Buffer): void => {
    pending = pending.length > 0 ? Buffer.concat([pending, chunk]) : chunk
    let offset = 0
    while (pending.length - offset >= 5) {
      const length = pending.readInt32BE(offset + 1)
      if (pending.length - offset < length + 1) break
      if (pending[offset] === 0x58) {
        if (offset > 0) upstream.socket.write(pending.subarray(0, offset))
        open = false
        client.off('data', forward)
        upstream.socket.off('data', toClient)
        client.end()
        void reset(upstream).then(
          () => idle.push(upstream),
          () => upstream.socket.destroy(),
        )
        return
      }
      offset += length + 1
    }
    if (offset > 0) upstream.socket.write(pending.subarray(0, offset))
    pending = pending.subarray(offset)
  }
  const toClient = (chunk: Buffer): void => void client.write(chunk)
  upstream.socket.on('data', toClient)
  upstream.socket.resume()
  client.on('data', forward)
  client.on('close', () => {
    if (open) upstream.socket.destroy()
  })
  client.resume()
  if (rest.length > 0) forward(Buffer.alloc(0))
}

const first = await login()
const canned = greeting(first)
idle.push(first)
const server = createServer({ noDelay: true }, (client) => {
  client.on('error', () => client.destroy())
  serve(client, canned).catch(() => client.destroy())
})
server.listen(Number(listenPort), '127.0.0.1', () => process.stdout.write('listening\n'))
process.on('SIGTERM', () => process.exit(0))
