import net from 'node:net'

/**
 * Asks the kernel for an unused TCP port on 127.0.0.1 by binding port 0 and
 * closing again. Another process may grab the port before the caller binds it,
 * so callers that can fail on a collision should retry with a fresh port.
 */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.unref()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      if (address === null || typeof address === 'string') {
        server.close()
        reject(new Error(`unexpected server address: ${String(address)}`))
        return
      }
      server.close(() => resolve(address.port))
    })
  })
}
