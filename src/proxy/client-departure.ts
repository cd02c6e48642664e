import type { Socket } from 'node:net'
import { ConnectionClosedError } from '../pgwire/message-reader.js'

/**
 * Notices a client leaving while the proxy keeps it waiting before the greeting (at
 * pool.max_server_connections). A client sends nothing until it is greeted, so reading only shows
 * its end; anything it does send stays with the socket's MessageReader, which pauses after one chunk.
 */
export function watchDeparture(socket: Socket): { signal: AbortSignal; abort(reason: Error): void; stop(): void } {
  const controller = new AbortController()
  const left = (): void =>
    controller.abort(new ConnectionClosedError('the client left while waiting for a server connection'))
  const wasPaused = socket.isPaused()
  socket.once('end', left)
  socket.once('close', left)
  if (socket.readableEnded || socket.destroyed) left()
  else socket.resume()
  return {
    signal: controller.signal,
    /** Ends the wait for another reason (the proxy drains). */
    abort: (reason) => controller.abort(reason),
    stop: () => {
      socket.off('end', left)
      socket.off('close', left)
      if (wasPaused) socket.pause()
    },
  }
}
