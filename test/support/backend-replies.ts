import {
  encodeErrorResponse,
  encodeMessage,
  encodeNoticeResponse,
  errorFields,
} from '../../src/pgwire/backend-messages.js'
import { BufferList } from './wire-builder.js'

// The backend messages a scripted upstream answers queries with, beyond those the proxy itself
// sends (src/pgwire/backend-messages.ts, reused here). Layouts: PostgreSQL protocol docs,
// "Message Formats". Every column is text (type oid 25, format 0), as a simple query returns it.

const TEXT_OID = 25

export const parseComplete = (): Buffer => encodeMessage(0x31, Buffer.alloc(0)) // '1'
export const bindComplete = (): Buffer => encodeMessage(0x32, Buffer.alloc(0)) // '2'
export const closeComplete = (): Buffer => encodeMessage(0x33, Buffer.alloc(0)) // '3'
export const noData = (): Buffer => encodeMessage(0x6e, Buffer.alloc(0)) // 'n'
/** ParameterDescription for a statement without parameters. */
export const noParameters = (): Buffer => encodeMessage(0x74, Buffer.from([0, 0])) // 't'

export function rowDescription(columns: readonly string[]): Buffer {
  const body = new BufferList().int16(columns.length)
  // table oid, column number, type oid, type size, type modifier, format code
  for (const name of columns) body.cstring(name).int32(0).int16(0).int32(TEXT_OID).int16(-1).int32(-1).int16(0)
  return encodeMessage(0x54, body.packet().subarray(4)) // 'T'
}

export function dataRow(values: ReadonlyArray<string | null>): Buffer {
  const body = new BufferList().int16(values.length)
  for (const value of values) {
    if (value === null) body.int32(-1)
    else {
      const bytes = Buffer.from(value, 'utf8')
      body.int32(bytes.length).bytes(bytes)
    }
  }
  return encodeMessage(0x44, body.packet().subarray(4)) // 'D'
}

export const commandComplete = (tag: string): Buffer => encodeMessage(0x43, Buffer.from(`${tag}\0`, 'utf8')) // 'C'

export const errorResponse = (severity: 'ERROR' | 'FATAL', sqlState: string, message: string): Buffer =>
  encodeErrorResponse(errorFields({ severity, sqlState, message }))

export const noticeResponse = (severity: 'NOTICE' | 'WARNING', sqlState: string, message: string): Buffer =>
  encodeNoticeResponse(
    new Map([
      ['S', severity],
      ['V', severity],
      ['C', sqlState],
      ['M', message],
    ]),
  )
