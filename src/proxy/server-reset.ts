import type { Socket } from 'node:net'
import { serialize } from 'pg-protocol'
import { decodeErrorFields, decodeParameterStatus } from '../pgwire/backend-messages.js'
import { BackendCode } from '../pgwire/codes.js'
import { ReplyScanner } from '../pgwire/reply-scanner.js'

/** A reset answers with a CommandComplete, a few ParameterStatus and a ReadyForQuery: far less than this. */
const MAX_RESET_BYTES = 64 * 1024
/**
 * Sent with the reset, in the same write: whether the connection's login role still exists. A lease
 * revoked behind the proxy's back (`vault lease revoke`) drops the role without ending its sessions,
 * and such a session fails later with "invalid role OID" (GetUserNameFromId,
 * src/backend/utils/init/miscinit.c). A separate Query, since DISCARD ALL cannot run inside the
 * implicit transaction of a multi-statement one.
 */
const ROLE_CHECK = serialize.query('SELECT session_user')

/**
 * Runs the pool's reset query on an idle server connection whose client has left, then checks
 * that its login role still exists, and writes the ParameterStatus values the reset changed
 * (RESET ALL reports the settings it put back) into `parameters`. Fails when the server answers either with an
 * error, is not idle afterwards, says more than a reset can, goes away, or takes longer than
 * `timeoutMs`: the caller then closes the connection instead of pooling it. Notifications for the
 * departed client that arrive meanwhile are dropped with it.
 */
export function resetServer(
  socket: Socket,
  resetQuery: string,
  timeoutMs: number,
  parameters: Map<string, string>,
): Promise<void> {
  let failure: Error | undefined
  /** ReadyForQuery answers still to come: the reset's, then the role check's. */
  let awaited = 2
  const scanner = new ReplyScanner(MAX_RESET_BYTES, (code, body) => {
    if (code === BackendCode.ParameterStatus) {
      const reported = decodeParameterStatus(body)
      if (reported) parameters.set(...reported)
    } else if (code === BackendCode.ErrorResponse) {
      const text = decodeErrorFields(body).get('M') ?? 'no message'
      failure ??= new Error(awaited === 1 ? `its login role is gone: ${text}` : text)
    } else if (code === BackendCode.ReadyForQuery) {
      const status = String.fromCharCode(body[0] ?? 0)
      if (status !== 'I') failure ??= new Error(`the server is not idle afterwards (status ${status})`)
      return --awaited === 0
    }
    return false
  })
  return new Promise((resolve, reject) => {
    const done = (err?: Error): void => {
      clearTimeout(timer)
      socket.off('data', onData)
      socket.off('close', onClose)
      socket.pause()
      if (err) reject(err)
      else resolve()
    }
    const timer = setTimeout(() => done(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs)
    const onData = (chunk: Buffer): void => {
      try {
        // What follows the last answer (nothing, from an idle server) is dropped with the departed client.
        if (scanner.push(chunk) !== undefined) done(failure)
      } catch (err) {
        done(err as Error)
      }
    }
    const onClose = (): void => done(new Error('the server closed the connection'))
    socket.on('data', onData)
    socket.on('close', onClose)
    socket.write(Buffer.concat([serialize.query(resetQuery), ROLE_CHECK]))
    socket.resume()
  })
}
