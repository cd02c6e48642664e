import type { Socket } from 'node:net'
import { encodeErrorResponse, errorFields } from '../pgwire/backend-messages.js'

/** How long a refused socket may stay open for its FATAL to be read before it is destroyed. */
const REFUSAL_LINGER_MS = 1_000

/**
 * Slots for connections still in their startup: accepted, but their startup packet not yet read.
 * Such a connection has not chosen a route, so no route's max_client_connections counts it; this
 * limit does (pgbouncer counts logging-in clients toward max_client_conn in the same way,
 * src/client.c), so sockets that never send a startup packet cannot use up file descriptors.
 * Refused sockets are bounded too: at most `limit` of them linger for their FATAL to be read.
 */
export class StartupSlots {
  private held = 0
  private lingering = 0
  /** Whether a refusal was reported since the slots were last below the limit. */
  private refusalReported = false

  constructor(readonly limit: number) {}

  get inUse(): number {
    return this.held
  }

  /** Takes a slot; the returned release may be called any number of times. Undefined when all are taken. */
  take(): (() => void) | undefined {
    if (this.held >= this.limit) return undefined
    this.held++
    let held = true
    return () => {
      if (!held) return
      held = false
      this.held--
      this.refusalReported = false
    }
  }

  /**
   * Refuses a connection over the limit at once, without reading its startup packet (reading is
   * what the limit spares): FATAL 53300, then close. PostgreSQL's postmaster answers a connection
   * it cannot serve the same way, before reading anything (report_fork_failure_to_client,
   * src/backend/postmaster/postmaster.c). What the client sends meanwhile is read and dropped, so
   * that the close does not reset the connection before the client has read the error; when
   * `limit` refused sockets already linger, the socket is closed at once.
   * Returns true for the first refusal since the slots were last below the limit: the one worth a
   * warning in the log.
   */
  refuse(socket: Socket): boolean {
    socket.on('error', () => undefined)
    socket.end(tooManyStartups(this.limit))
    if (this.lingering < this.limit) {
      this.lingering++
      socket.resume()
      const linger = setTimeout(() => socket.destroy(), REFUSAL_LINGER_MS)
      socket.once('close', () => {
        clearTimeout(linger)
        this.lingering--
      })
    } else {
      // The reply was handed to the kernel on write (libuv writes at once to an idle socket);
      // closing now frees the descriptor within this accept, even in a burst of thousands.
      socket.destroy()
    }
    const first = !this.refusalReported
    this.refusalReported = true
    return first
  }
}

function tooManyStartups(limit: number): Buffer {
  return encodeErrorResponse(
    errorFields({
      severity: 'FATAL',
      sqlState: '53300',
      message: `sorry, too many clients already (pg-vault-proxy max_startup_connections reached: ${limit} connections have not sent their startup packet yet)`,
      hint: 'Connect again in a moment. If this persists, find the clients that connect without sending a startup packet, or raise max_startup_connections.',
    }),
  )
}
