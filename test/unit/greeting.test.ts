import { Parser } from 'pg-protocol/dist/parser.js'
import type { BackendMessage } from 'pg-protocol/dist/messages.js'
import t from 'tap'
import {
  decodeParameterStatus,
  encodeBackendKeyData,
  encodeGreeting,
  encodeMessage,
  encodeNegotiateProtocolVersion,
  encodeParameterStatus,
  encodeReadyForQuery,
} from '../../src/pgwire/backend-messages.js'
import { BackendCode } from '../../src/pgwire/codes.js'

const parameters = new Map([
  ['application_name', 'café ☕'],
  ['client_encoding', 'UTF8'],
  ['TimeZone', ''],
  ['server_version', '15.8 (Debian 15.8-1)'],
])
const secretKey = Buffer.from([1, 2, 3, 4])
const notice = encodeMessage(BackendCode.NoticeResponse, Buffer.from('SNOTICE\0C00000\0Mhello\0\0'))

void t.test('the greeting is the messages it stands for, in order, in one buffer', async (t) => {
  const negotiate = encodeNegotiateProtocolVersion(0, ['_pq_.x'])
  const one = encodeGreeting({
    negotiate,
    parameters,
    processId: 0x7fff_fff0,
    secretKey,
    notices: [notice],
    status: 'T',
  })
  const parts = Buffer.concat([
    negotiate,
    encodeMessage(BackendCode.Authentication, Buffer.alloc(4)),
    ...[...parameters].map(([name, value]) => encodeParameterStatus(name, value)),
    encodeBackendKeyData(0x7fff_fff0, secretKey),
    notice,
    encodeReadyForQuery('T'),
  ])
  t.same(one, parts)
})

void t.test('a client library reads it: parameters with multi-byte values, key, status', async (t) => {
  const one = encodeGreeting({ parameters, processId: 42, secretKey, notices: [], status: 'I' })
  const seen: BackendMessage[] = []
  new Parser().parse(one, (message) => seen.push(message))
  t.same(
    seen.map((m) => m.name),
    ['authenticationOk', ...[...parameters].map(() => 'parameterStatus'), 'backendKeyData', 'readyForQuery'],
  )
  const reported = new Map(
    seen
      .filter((m) => m.name === 'parameterStatus')
      .map((m) => [
        (m as unknown as { parameterName: string }).parameterName,
        (m as unknown as { parameterValue: string }).parameterValue,
      ]),
  )
  t.same(reported, parameters)
  const key = seen.find((m) => m.name === 'backendKeyData') as unknown as { processID: number; secretKey: number }
  t.equal(key.processID, 42)
  t.equal(key.secretKey, 0x01020304)
  t.equal((seen.at(-1) as unknown as { status: string }).status, 'I')
})

void t.test(
  'decodeParameterStatus reads what encodeParameterStatus writes, and refuses a body without its terminators',
  async (t) => {
    for (const [name, value] of parameters)
      t.same(decodeParameterStatus(encodeParameterStatus(name, value).subarray(5)), [name, value], name)
    t.equal(decodeParameterStatus(Buffer.from('TimeZone')), undefined, 'no terminator')
    t.equal(decodeParameterStatus(Buffer.from('TimeZone\0UTC')), undefined, 'the value unterminated')
  },
)
