import type { Socket } from 'node:net'
import type { CredentialHold } from '../vault/credential-source.js'

/**
 * Gives a connection's credential hold back once the connection has closed, not when it is asked
 * to: the last hold on a superseded Vault lease lets the lease be revoked, and revocation
 * statements that end the role's sessions (`pg_terminate_backend`, docs/vault.md) would otherwise
 * reach a backend still reading its Terminate, which then ends with FATAL 57P01 in the server log:
 * a lease revoked under a live connection. A socket not closed within `timeoutMs` is destroyed,
 * which closes it.
 */
export function releaseWhenClosed(socket: Socket, hold: CredentialHold, timeoutMs: number): void {
  if (socket.closed) {
    hold.release()
    return
  }
  const timer = setTimeout(() => socket.destroy(), timeoutMs)
  timer.unref()
  // The timer goes with the socket, so a closed socket is not kept alive by it.
  socket.once('close', () => {
    clearTimeout(timer)
    hold.release()
  })
}
