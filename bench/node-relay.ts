/**
 * The least any Node.js relay does: accept a TCP connection, open one to PostgreSQL, and pipe
 * bytes both ways (with backpressure and Nagle off), with no protocol, no login and no state. The
 * benchmark (bench/run.ts) runs it as a fourth target, so the proxy's cost can be split into what
 * the Node runtime spends moving bytes through a socket pair and what the proxy adds on top.
 *
 * Usage: node --import tsx bench/node-relay.ts <listen port> <upstream host> <upstream port>
 * Prints "listening" once bound. Clients log in to PostgreSQL themselves, through it.
 */
import { connect, createServer } from 'node:net'

const [listenPort, upstreamHost, upstreamPort] = process.argv.slice(2)
if (!listenPort || !upstreamHost || !upstreamPort) {
  process.stderr.write('usage: node-relay <listen port> <upstream host> <upstream port>\n')
  process.exit(1)
}

const server = createServer({ noDelay: true }, (client) => {
  const upstream = connect({ host: upstreamHost, port: Number(upstreamPort), noDelay: true })
  client.pipe(upstream)
  upstream.pipe(client)
  // Either side ending or failing ends both.
  client.on('close', () => upstream.destroy())
  upstream.on('close', () => client.destroy())
  client.on('error', () => upstream.destroy())
  upstream.on('error', () => client.destroy())
})
server.listen(Number(listenPort), '127.0.0.1', () => process.stdout.write('listening\n'))
process.on('SIGTERM', () => process.exit(0))
