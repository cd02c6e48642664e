import type { Socket } from 'node:net'
import { serialize } from 'pg-protocol'
import type {
  BackendMessage,
  DatabaseError,
  ParameterStatusMessage,
  ReadyForQueryMessage,
} from 'pg-protocol/dist/messages.js'
import { Parser } from 'pg-protocol/dist/parser.js'

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
 * that its login role still exists, and returns the ParameterStatus values the reset changed
 * (RESET ALL reports the settings it put back). Fails when the server answers either with an
 * error, is not idle afterwards, says more than a reset can, goes away, or takes longer than
 * `timeoutMs`: the caller then closes the connection instead of pooling it. Notifications for the
 * departed client that arrive meanwhile are dropped with it.
 */
export function resetServer(socket: Socket, resetQuery: string, timeoutMs: number): Promise<Map<string, string>> {
  const parser = new Parser()
  const changed = new Map<string, string>()
  let failure: Error | undefined
  let received = 0
  /** ReadyForQuery answers still to come: the reset's, then the role check's. */
  let awaited = 2
  return new Promise((resolve, reject) => {
    const done = (err?: Error): void => {
      clearTimeout(timer)
      socket.off('data', onData)
      socket.off('close', onClose)
      socket.pause()
      if (err) reject(err)
      else resolve(changed)
    }
    const timer = setTimeout(() => done(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs)
    const onMessage = (message: BackendMessage): void => {
      if (message.name === 'parameterStatus') {
        const { parameterName, parameterValue } = message as ParameterStatusMessage
        changed.set(parameterName, parameterValue)
      } else if (message.name === 'error') {
        const { message: text } = message as DatabaseError
        failure ??= new Error(awaited === 1 ? `its login role is gone: ${text}` : text)
      } else if (message.name === 'readyForQuery') {
        const { status } = message as ReadyForQueryMessage
        if (status !== 'I') failure ??= new Error(`the server is not idle afterwards (status ${status})`)
        if (--awaited === 0) done(failure)
      }
    }
    const onData = (chunk: Buffer): void => {
      received += chunk.length
      if (received > MAX_RESET_BYTES) {
        done(new Error(`the server sent more than ${MAX_RESET_BYTES} bytes in answer`))
        return
      }
      parser.parse(chunk, onMessage)
    }
    const onClose = (): void => done(new Error('the server closed the connection'))
    socket.on('data', onData)
    socket.on('close', onClose)
    socket.write(Buffer.concat([serialize.query(resetQuery), ROLE_CHECK]))
    socket.resume()
  })
}
