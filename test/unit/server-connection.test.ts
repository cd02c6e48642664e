import { Socket } from 'node:net'
import t from 'tap'
import { ImpossibleServerTransition, ServerConnection } from '../../src/proxy/server-connection.js'
import type { UpstreamSession } from '../../src/proxy/upstream-connector.js'
import { permanentHold } from '../../src/vault/credential-source.js'

function connection(initial: 'linked' | 'opened'): { conn: ServerConnection; socket: Socket } {
  const socket = new Socket()
  const session: UpstreamSession = {
    socket,
    processId: 4242,
    secretKey: Buffer.alloc(4),
    parameters: new Map(),
    notices: [],
    transactionStatus: 'I',
    pending: Buffer.alloc(0),
    isTls: false,
    authMethod: 'scram-sha-256',
  }
  const credential = { username: 'v-app', password: 'x', origin: 'test' }
  return { conn: new ServerConnection(session, credential, permanentHold(), 'db\0\0', initial), socket }
}

void t.test("a client's connection: linked, reset, idle in the pool, linked again, closed", (t) => {
  const { conn } = connection('linked')
  t.equal(conn.state, 'linked')
  conn.enter('resetting')
  conn.enter('idle')
  conn.enter('linked')
  conn.enter('closing')
  conn.enter('closing')
  t.equal(conn.state, 'closing', 'closing twice is one close')
  t.end()
})

void t.test('a pre-warmed connection goes idle without a reset; it is never linked straight from opened', (t) => {
  const { conn } = connection('opened')
  t.throws(() => conn.enter('linked'), ImpossibleServerTransition)
  conn.enter('idle')
  t.equal(conn.state, 'idle')
  t.end()
})

void t.test('impossible pairs are bugs: an idle connection is not reset, a closed one never comes back', (t) => {
  const { conn } = connection('linked')
  t.throws(
    () => conn.enter('idle'),
    /no transition from linked to idle/,
    'a linked connection is reset before it is pooled',
  )
  conn.enter('resetting')
  t.throws(() => conn.enter('linked'), ImpossibleServerTransition, 'not handed out mid-reset')
  conn.enter('closing')
  for (const to of ['linked', 'resetting', 'idle'] as const) t.throws(() => conn.enter(to), ImpossibleServerTransition)
  t.end()
})

void t.test('a socket that closes makes its connection closing, whatever it was doing', async (t) => {
  const { conn, socket } = connection('linked')
  conn.enter('resetting')
  conn.enter('idle')
  socket.destroy()
  await new Promise((r) => socket.once('close', r))
  t.equal(conn.state, 'closing')
  t.throws(() => conn.enter('linked'), ImpossibleServerTransition)
})
