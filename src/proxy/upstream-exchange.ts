import type { Socket } from 'node:net'
import {
  decodeErrorFields,
  decodeParameterStatus,
  encodeMessage,
  type ErrorFields,
} from '../pgwire/backend-messages.js'
import { BackendCode, type TransactionStatus } from '../pgwire/codes.js'
import { ConnectionClosedError, MessageReader } from '../pgwire/message-reader.js'

/** What came back from requests the proxy sent on its own behalf. */
export interface ExchangeResult {
  /** DataRow values as text (the proxy only sends simple queries with text results). */
  rows: Array<Array<string | null>>
  /** The first ErrorResponse, if any request failed. */
  error: ErrorFields | undefined
  /** ParameterStatus values reported meanwhile. */
  parameters: Map<string, string>
  /** NotificationResponse messages, whole: they belong to the client, who LISTENed. */
  notifications: Buffer[]
  /** Status of the last ReadyForQuery. */
  status: TransactionStatus
  /** Bytes read after the last ReadyForQuery, for the relay to forward first. */
  pending: Buffer
}

/** The connection closed before the last ReadyForQuery; `fatal` is the FATAL the server sent first, if any. */
export class ExchangeClosedError extends ConnectionClosedError {
  override name = 'ExchangeClosedError'
  constructor(
    message: string,
    readonly fatal: ErrorFields | undefined,
  ) {
    super(message)
  }
}

/** Rows and messages of a probe or replay are small; this bounds what one can make the proxy hold. */
const MAX_MESSAGE = 64 << 20

/**
 * Sends `request` on an upstream connection that is not being relayed (a session suspended at an
 * idle point, or a fresh login) and reads until `readyForQueries` ReadyForQuery messages arrived.
 * Replies are swallowed, except notifications, which are kept for the client. Rejects if the
 * connection closes, its framing breaks, or `timeoutMs` passes first (the socket is then destroyed).
 */
export async function exchange(
  socket: Socket,
  request: Buffer,
  readyForQueries: number,
  timeoutMs: number,
  pending: Buffer = Buffer.alloc(0),
): Promise<ExchangeResult> {
  if (socket.destroyed || !socket.readable) throw new ConnectionClosedError('the upstream connection is closed')
  if (pending.length > 0) socket.unshift(pending)
  const reader = new MessageReader(socket)
  const timer = setTimeout(() => socket.destroy(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs)
  const result: ExchangeResult = {
    rows: [],
    error: undefined,
    parameters: new Map(),
    notifications: [],
    status: 'I',
    pending: Buffer.alloc(0),
  }
  try {
    socket.write(request)
    let remaining = readyForQueries
    while (remaining > 0) {
      const { code, body } = await reader.readMessage(MAX_MESSAGE)
      switch (code) {
        case BackendCode.ReadyForQuery:
          result.status = String.fromCharCode(body[0] ?? 0x49) as TransactionStatus
          remaining--
          break
        case BackendCode.DataRow:
          result.rows.push(decodeDataRow(body))
          break
        case BackendCode.ErrorResponse:
          result.error ??= decodeErrorFields(body)
          break
        case BackendCode.ParameterStatus: {
          const reported = decodeParameterStatus(body)
          if (reported) result.parameters.set(...reported)
          break
        }
        case BackendCode.NotificationResponse:
          result.notifications.push(encodeMessage(code, body))
          break
      }
    }
    result.pending = reader.detach()
    return result
  } catch (err) {
    reader.detach()
    if (err instanceof ConnectionClosedError) throw new ExchangeClosedError(err.message, result.error)
    // A bad length or an oversized message: where the next message starts is lost, and the rest of
    // this answer would reach the client as if it were its own. The connection is gone for good,
    // so callers see a closed socket and handle it as a lost upstream.
    socket.destroy()
    throw err
  } finally {
    clearTimeout(timer)
  }
}

function decodeDataRow(body: Buffer): Array<string | null> {
  const count = body.readUInt16BE(0)
  const values: Array<string | null> = []
  let offset = 2
  for (let i = 0; i < count; i++) {
    const length = body.readInt32BE(offset)
    offset += 4
    if (length < 0) values.push(null)
    else {
      values.push(body.toString('utf8', offset, offset + length))
      offset += length
    }
  }
  return values
}
