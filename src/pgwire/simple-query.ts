import type { Socket } from 'node:net'
import { serialize } from 'pg-protocol'
import type { BackendMessage, DataRowMessage, DatabaseError } from 'pg-protocol/dist/messages.js'
import { Parser } from 'pg-protocol/dist/parser.js'

/**
 * Runs one simple Query on an authenticated upstream socket and returns its rows as text. For the
 * proxy's own checks (`pg-vault-proxy check`), never on a client's session: pg-protocol's parser is
 * the right tool here, where a few small backend messages are decoded.
 */
export async function simpleQuery(
  socket: Socket,
  sql: string,
  pending: Buffer = Buffer.alloc(0),
): Promise<Array<Array<string | null>>> {
  const parser = new Parser()
  const rows: Array<Array<string | null>> = []
  let failure: DatabaseError | undefined
  return new Promise((resolve, reject) => {
    const cleanup = (): void => {
      socket.off('data', onData)
      socket.off('close', onClose)
    }
    const onMessage = (message: BackendMessage): void => {
      if (message.name === 'dataRow') rows.push((message as DataRowMessage).fields as Array<string | null>)
      else if (message.name === 'error') failure = message as DatabaseError
      else if (message.name === 'readyForQuery') {
        cleanup()
        if (failure) reject(failure)
        else resolve(rows)
      }
    }
    const onData = (chunk: Buffer): void => parser.parse(chunk, onMessage)
    const onClose = (): void => {
      cleanup()
      reject(failure ?? new Error('the server closed the connection during the query'))
    }
    socket.on('data', onData)
    socket.on('close', onClose)
    if (pending.length > 0) parser.parse(pending, onMessage)
    socket.write(serialize.query(sql))
    socket.resume()
  })
}
