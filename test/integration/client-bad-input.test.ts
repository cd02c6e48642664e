import { once } from 'node:events'
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { clusterFor } from '../support/pg-cluster.js'
import { startProxy, type RunningProxy } from '../support/proxy-harness.js'
import {
  BufferList,
  cancelRequest,
  gssEncRequest,
  splits,
  sslRequest,
  startupMessage,
  errorFieldsOf,
  parseMessages,
  type WireMessage,
} from '../support/wire-builder.js'

// Clients that break the startup or relay protocol, byte by byte over raw sockets: each gets what
// PostgreSQL itself would send (or silence), and nobody else notices.
const cluster = await clusterFor(t)

/** A client socket that records every byte the proxy sends and whether the proxy closed it. */
class RawClient {
  received: Buffer = Buffer.alloc(0)
  closed = false
  private readonly listeners = new Set<() => void>()

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.received = Buffer.concat([this.received, chunk])
      this.notify()
    })
    // A proxy that closes with our bytes unread resets the connection: that is a close too.
    socket.on('error', () => {})
    socket.on('close', () => {
      this.closed = true
      this.notify()
    })
  }

  static async connect(port: number): Promise<RawClient> {
    const socket = net.connect({ host: '127.0.0.1', port, noDelay: true })
    await once(socket, 'connect')
    return new RawClient(socket)
  }

  write(...chunks: Buffer[]): this {
    for (const chunk of chunks) this.socket.write(chunk)
    return this
  }

  /** Waits until `done()` holds; false if it still does not when the socket closes or time runs out. */
  async until(done: () => boolean, timeoutMs = 5_000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs
    while (!done()) {
      const left = deadline - Date.now()
      if (this.closed || left <= 0) return done()
      await this.changed(left)
    }
    return true
  }

  async untilClosed(timeoutMs = 5_000): Promise<boolean> {
    return this.until(() => this.closed, timeoutMs)
  }

  /** Messages received from byte offset `from` on. */
  messages(from = 0): WireMessage[] {
    return parseMessages(this.received.subarray(from))
  }

  async untilMessage(type: string, from = 0, count = 1, timeoutMs = 5_000): Promise<boolean> {
    return this.until(() => this.messages(from).filter((m) => m.type === type).length >= count, timeoutMs)
  }

  destroy(): void {
    this.socket.destroy()
  }

  private changed(timeoutMs: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer)
        this.listeners.delete(done)
        resolve()
      }
      const timer = setTimeout(done, timeoutMs)
      this.listeners.add(done)
    })
  }

  private notify(): void {
    for (const listener of [...this.listeners]) listener()
  }
}

/** Connects, writes `bytes`, and collects everything the proxy sends until it closes (or time runs out). */
async function exchange(
  port: number,
  bytes: Buffer[],
  timeoutMs = 3_000,
): Promise<{ data: Buffer; closed: boolean; messages: WireMessage[] }> {
  const client = await RawClient.connect(port)
  client.write(...bytes)
  const closed = await client.untilClosed(timeoutMs)
  client.destroy()
  return { data: client.received, closed, messages: client.messages() }
}

const startup = (params: Record<string, string> = {}, version?: number): Buffer =>
  startupMessage({ user: 'raw-client', database: cluster.database, ...params }, version)
const query = (sql: string): Buffer => new BufferList().cstring(sql).message('Q')
const TERMINATE = new BufferList().message('X')

/** Asserts `messages` is exactly one FATAL ErrorResponse and returns its fields. */
function onlyFatal(t: Test, messages: WireMessage[]): Record<string, string> {
  t.same(
    messages.map((m) => m.type),
    ['E'],
    'exactly one ErrorResponse',
  )
  const fields = messages[0]?.type === 'E' ? errorFieldsOf(messages[0].body) : {}
  t.equal(fields.S, 'FATAL', 'severity S')
  t.equal(fields.V, 'FATAL', 'severity V')
  return fields
}

/** Checks a complete login sequence: R(0), ParameterStatus, K with a 4-byte key, Z(I). */
function checkLogin(t: Test, messages: WireMessage[]): Map<string, string> {
  const types = messages.map((m) => m.type).join('')
  t.match(types, /^RS+KZ$/, `login sequence (${types})`)
  const auth = messages.find((m) => m.type === 'R')
  t.equal(auth?.body.length, 4, 'AuthenticationOk body is one Int32')
  t.equal(auth?.body.readInt32BE(0), 0, 'AuthenticationOk')
  const parameters = new Map<string, string>()
  for (const m of messages.filter((m) => m.type === 'S')) {
    const [name, value] = m.body.toString('utf8').split('\0')
    parameters.set(name!, value!)
  }
  t.ok(parameters.get('server_version'), 'server_version reported')
  t.ok(parameters.get('client_encoding'), 'client_encoding reported')
  t.equal(parameters.get('session_authorization'), cluster.users.scram.user, 'session_authorization')
  const key = messages.find((m) => m.type === 'K')
  t.equal(key?.body.length, 8, 'BackendKeyData: pid and a 4-byte secret')
  const ready = messages.find((m) => m.type === 'Z')
  t.equal(ready?.body.toString('latin1'), 'I', 'ReadyForQuery idle')
  return parameters
}

/** Logs in over a raw socket (after `preamble`, e.g. an SSLRequest whose 'N' is skipped). */
async function rawLogin(
  proxy: RunningProxy,
  params: Record<string, string> = {},
): Promise<{ client: RawClient; messages: WireMessage[]; pid: number; key: Buffer }> {
  const client = await RawClient.connect(proxy.port)
  client.write(startup(params))
  if (!(await client.untilMessage('Z'))) {
    throw new Error(`login failed: ${JSON.stringify(client.messages().map((m) => [m.type, errorFieldsOf(m.body)]))}`)
  }
  const messages = client.messages()
  const key = messages.find((m) => m.type === 'K')!.body
  return { client, messages, pid: key.readUInt32BE(0), key: Buffer.from(key.subarray(4)) }
}

/** Sends one simple Query and waits for its ReadyForQuery; returns the messages it produced. */
async function simpleQuery(client: RawClient, sql: string, timeoutMs = 5_000): Promise<WireMessage[]> {
  const from = client.received.length
  client.write(query(sql))
  await client.untilMessage('Z', from, 1, timeoutMs)
  return client.messages(from)
}

/** First column of the first DataRow, as text. */
function firstValue(messages: WireMessage[]): string | undefined {
  const row = messages.find((m) => m.type === 'D')
  if (!row || row.body.readInt16BE(0) < 1) return undefined
  const length = row.body.readInt32BE(2)
  return length < 0 ? undefined : row.body.toString('utf8', 6, 6 + length)
}

/** Polls until the upstream backend `pid` is gone from pg_stat_activity; false after timeoutMs. */
async function backendGone(pid: number, timeoutMs = 10_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    const rows = await cluster.query('select 1 from pg_stat_activity where pid = $1', [pid])
    if (rows.length === 0) return true
    await sleep(100)
  }
  return false
}

void t.test('SSLRequest is answered with exactly N, then the same connection logs in', async (t) => {
  const proxy = await startProxy(t, cluster)
  const client = await RawClient.connect(proxy.port)
  client.write(sslRequest())
  await client.until(() => client.received.length >= 1)
  await sleep(20) // nothing else may follow the answer byte
  t.same(client.received, Buffer.from('N'), 'one byte: N')
  client.write(startup())
  t.ok(await client.untilMessage('Z', 1), 'login completes')
  checkLogin(t, client.messages(1))
  t.equal(firstValue(await simpleQuery(client, 'select 40 + 2')), '42', 'the session runs queries')
  // PostgreSQL answers Terminate by closing, without a word, also to a client that waits for the EOF.
  const beforeTerminate = client.received.length
  client.write(TERMINATE)
  t.ok(await client.untilClosed(), 'Terminate closes the connection')
  t.same(
    client.messages(beforeTerminate).map((m) => [m.type, errorFieldsOf(m.body).C]),
    [],
    'nothing is sent after Terminate',
  )
})

void t.test('GSSENCRequest is answered N; GSS then SSL then startup logs in', async (t) => {
  const proxy = await startProxy(t, cluster)
  const gss = await RawClient.connect(proxy.port)
  gss.write(gssEncRequest())
  await gss.until(() => gss.received.length >= 1)
  await sleep(20)
  t.same(gss.received, Buffer.from('N'), 'GSSENCRequest: one byte N')
  gss.write(sslRequest())
  await gss.until(() => gss.received.length >= 2)
  await sleep(20)
  t.same(gss.received, Buffer.from('NN'), 'then SSLRequest: N')
  gss.write(startup())
  t.ok(await gss.untilMessage('Z', 2), 'login completes')
  checkLogin(t, gss.messages(2))
  gss.destroy()

  // The other order too, as libpq may use either, and all three packets in one write.
  const ssl = await RawClient.connect(proxy.port)
  ssl.write(Buffer.concat([sslRequest(), gssEncRequest(), startup()]))
  t.ok(await ssl.untilMessage('Z', 2), 'SSL then GSS then startup in one write: login completes')
  t.equal(ssl.received.subarray(0, 2).toString('latin1'), 'NN', 'SSL then GSS: N, N')
  checkLogin(t, ssl.messages(2))
  ssl.destroy()
})

void t.test('a second SSLRequest or GSSENCRequest is an unsupported protocol version', async (t) => {
  const proxy = await startProxy(t, cluster)
  const cases = [
    { name: 'SSL twice', packets: [sslRequest(), sslRequest()], version: '1234.5679', answers: 'N' },
    { name: 'GSS twice', packets: [gssEncRequest(), gssEncRequest()], version: '1234.5680', answers: 'N' },
    {
      name: 'SSL, GSS, SSL',
      packets: [sslRequest(), gssEncRequest(), sslRequest()],
      version: '1234.5679',
      answers: 'NN',
    },
  ]
  for (const { name, packets, version, answers } of cases) {
    const { data, closed } = await exchange(proxy.port, packets)
    t.equal(data.subarray(0, answers.length).toString('latin1'), answers, `${name}: answered ${answers} first`)
    const fields = onlyFatal(t, parseMessages(data.subarray(answers.length)))
    t.equal(fields.C, '0A000', `${name}: SQLSTATE`)
    t.equal(fields.M, `unsupported frontend protocol ${version}: server supports 3.0 to 3.0`, `${name}: message`)
    t.ok(closed, `${name}: closed`)
  }
})

void t.test('packets that are not a startup packet are closed without a byte', async (t) => {
  const proxy = await startProxy(t, cluster)
  const oversized = Buffer.alloc(10_005 + 4)
  oversized.writeUInt32BE(10_005, 0) // body of 10001 bytes: one more than PostgreSQL accepts
  oversized.writeUInt32BE(0x30000, 4)
  const cases: Array<[string, Buffer[]]> = [
    ['TLS ClientHello (direct SSL)', [Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03])]],
    ['startup packet body of 10001 bytes', [oversized]],
    ['length 10005 announced, only the header sent', [oversized.subarray(0, 8)]],
    ['length 7', [Buffer.from([0, 0, 0, 7, 0, 3, 0])]],
    ['length 4', [Buffer.from([0, 0, 0, 4])]],
    ['length 0', [Buffer.from([0, 0, 0, 0, 0, 3, 0, 0])]],
    ['length -1', [Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 3, 0, 0])]],
    ['CancelRequest with a 2-byte key', [new BufferList().int32(80877102).int32(1).int16(7).packet()]],
  ]
  for (const [name, bytes] of cases) {
    const { data, closed } = await exchange(proxy.port, bytes)
    t.ok(closed, `${name}: closed`)
    t.equal(data.length, 0, `${name}: no bytes sent`)
  }
  t.equal(firstValue(await simpleQuery((await rawLogin(proxy)).client, 'select 1')), '1', 'the proxy still serves')
})

void t.test('malformed startup messages get the FATAL PostgreSQL sends', async (t) => {
  const proxy = await startProxy(t, cluster)
  const layout = 'invalid startup packet layout: expected terminator as last byte'
  const cases: Array<{ name: string; packet: Buffer; code: string; message: string | RegExp }> = [
    {
      name: 'no list terminator',
      packet: new BufferList().int32(0x30000).cstring('user').cstring('x').packet(),
      code: '08P01',
      message: layout,
    },
    {
      name: 'a byte after the terminator',
      packet: new BufferList().int32(0x30000).cstring('user').cstring('x').byte(0).byte(0x41).packet(),
      code: '08P01',
      message: layout,
    },
    {
      name: 'a name without a value',
      packet: new BufferList().int32(0x30000).cstring('user').cstring('x').cstring('database').byte(0).packet(),
      code: '08P01',
      message: layout,
    },
    {
      name: 'empty body',
      packet: new BufferList().int32(0x30000).packet(),
      code: '08P01',
      message: layout,
    },
    {
      name: 'no user',
      packet: startupMessage({ database: cluster.database }),
      code: '28000',
      message: 'no PostgreSQL user name specified in startup packet',
    },
    {
      name: 'empty user',
      packet: startupMessage({ user: '', database: cluster.database }),
      code: '28000',
      message: 'no PostgreSQL user name specified in startup packet',
    },
    {
      name: 'protocol 2.0',
      packet: startupMessage({ user: 'x' }, 0x20000),
      code: '0A000',
      message: 'unsupported frontend protocol 2.0: server supports 3.0 to 3.0',
    },
    {
      name: 'protocol 4.0',
      packet: startupMessage({ user: 'x' }, 0x40000),
      code: '0A000',
      message: 'unsupported frontend protocol 4.0: server supports 3.0 to 3.0',
    },
  ]
  for (const { name, packet, code, message } of cases) {
    const { messages, closed } = await exchange(proxy.port, [packet])
    const fields = onlyFatal(t, messages)
    t.equal(fields.C, code, `${name}: SQLSTATE`)
    t.match(fields.M, message, `${name}: message`)
    t.ok(closed, `${name}: closed`)
  }
})

void t.test('protocol 3.2 and _pq_ options get one NegotiateProtocolVersion before AuthenticationOk', async (t) => {
  const proxy = await startProxy(t, cluster)
  const cases: Array<{ name: string; packet: Buffer; options: string[] }> = [
    { name: 'protocol 3.2', packet: startup({}, 0x30002), options: [] },
    { name: '3.0 with _pq_.foo', packet: startup({ '_pq_.foo': 'bar' }), options: ['_pq_.foo'] },
    {
      name: '3.2 with two _pq_ options',
      packet: startup({ '_pq_.a': '1', '_pq_.b': '2' }, 0x30002),
      options: ['_pq_.a', '_pq_.b'],
    },
  ]
  for (const { name, packet, options } of cases) {
    const client = await RawClient.connect(proxy.port)
    client.write(packet)
    t.ok(await client.untilMessage('Z'), `${name}: login completes`)
    const messages = client.messages()
    t.equal(messages.filter((m) => m.type === 'v').length, 1, `${name}: exactly one v`)
    t.equal(messages[0]?.type, 'v', `${name}: v comes first, before AuthenticationOk`)
    const v = messages[0]!.body
    t.equal(v.readUInt32BE(0), 0x30000, `${name}: newest supported version 3.0`)
    t.equal(v.readUInt32BE(4), options.length, `${name}: option count`)
    t.same(v.subarray(8).toString('utf8').split('\0').slice(0, -1), options, `${name}: unrecognised options`)
    checkLogin(t, messages.slice(1))
    t.equal(firstValue(await simpleQuery(client, 'select 7')), '7', `${name}: the session works`)
    client.destroy()
  }
  const plain = await rawLogin(proxy)
  t.notOk(
    plain.messages.some((m) => m.type === 'v'),
    'a plain 3.0 startup gets no NegotiateProtocolVersion',
  )
  plain.client.destroy()
})

void t.test('startup parameters: replication refused, GUCs forwarded, upstream errors relayed', async (t) => {
  const proxy = await startProxy(t, cluster)
  for (const value of ['true', 'database', 'on']) {
    const { messages, closed } = await exchange(proxy.port, [startup({ replication: value })])
    const fields = onlyFatal(t, messages)
    t.equal(fields.C, '0A000', `replication=${value}: SQLSTATE`)
    t.match(fields.M, /replication/, `replication=${value}: message`)
    t.ok(closed, `replication=${value}: closed`)
  }

  const latin1 = await rawLogin(proxy, { client_encoding: 'LATIN1' })
  const parameters = checkLogin(t, latin1.messages)
  t.equal(parameters.get('client_encoding'), 'LATIN1', 'client_encoding forwarded verbatim')
  t.equal(firstValue(await simpleQuery(latin1.client, 'show client_encoding')), 'LATIN1')
  latin1.client.destroy()

  const { messages, closed } = await exchange(proxy.port, [startup({ no_such_guc: '1' })])
  const fields = onlyFatal(t, messages)
  t.equal(fields.C, '42704', 'unknown GUC: the upstream SQLSTATE')
  t.match(fields.M, /unrecognized configuration parameter "no_such_guc"/, 'unknown GUC: the upstream message')
  t.ok(closed, 'unknown GUC: closed')

  // Within PostgreSQL's limit from the client, over it once the proxy adds the login user and role.
  const big = await exchange(proxy.port, [startup({ application_name: 'a'.repeat(9_940) })])
  const tooLong = onlyFatal(t, big.messages)
  t.equal(tooLong.C, '54000', 'oversized upstream startup packet: SQLSTATE')
  t.match(tooLong.M, /over PostgreSQL's limit of 10000/, 'oversized upstream startup packet: says why')
})

void t.test('a client that sends nothing, or not all of it, is closed silently at startup_timeout_ms', async (t) => {
  const proxy = await startProxy(t, cluster, { startup_timeout_ms: 300 })
  const silent = await RawClient.connect(proxy.port)
  const started = Date.now()
  t.ok(await silent.untilClosed(5_000), 'closed')
  t.ok(Date.now() - started >= 250, `not before the timeout (${Date.now() - started} ms)`)
  t.equal(silent.received.length, 0, 'no bytes sent')

  const partial = await RawClient.connect(proxy.port)
  partial.write(startup().subarray(0, 10))
  t.ok(await partial.untilClosed(5_000), 'half a startup packet: closed')
  t.equal(partial.received.length, 0, 'half a startup packet: no bytes sent')

  const afterSsl = await RawClient.connect(proxy.port)
  afterSsl.write(sslRequest())
  t.ok(await afterSsl.untilClosed(5_000), 'SSLRequest then silence: closed')
  t.same(afterSsl.received, Buffer.from('N'), 'SSLRequest then silence: only the N')

  // The timer covers the startup packet only: a logged-in session may idle past it.
  const idle = await rawLogin(proxy)
  await sleep(500)
  t.notOk(idle.client.closed, 'a logged-in session outlives the startup timeout')
  t.equal(firstValue(await simpleQuery(idle.client, 'select 1')), '1')
  idle.client.destroy()
})

void t.test('past max_startup_connections a client gets one FATAL 53300 before it sends a byte', async (t) => {
  const proxy = await startProxy(t, cluster, { max_startup_connections: 2 })
  const holders = [await RawClient.connect(proxy.port), await RawClient.connect(proxy.port)]
  let accepted = false
  for (let i = 0; i < 100 && !accepted; i++) {
    accepted = proxy.server.status().sessions.connections === 2
    if (!accepted) await sleep(20)
  }
  t.ok(accepted, 'both holders were accepted')
  const refused = await RawClient.connect(proxy.port)
  t.ok(await refused.untilClosed(), 'closed without the client sending anything')
  const fields = onlyFatal(t, refused.messages())
  t.equal(fields.C, '53300')
  t.match(fields.M, /^sorry, too many clients already \(pg-vault-proxy max_startup_connections reached: 2 /)
  t.match(fields.H, /max_startup_connections/)
  // A holder that now sends its startup packet logs in: the slots were held, not broken.
  holders[0]!.write(startup())
  t.ok(await holders[0]!.untilMessage('Z'), 'a holder completes its login')
  for (const h of holders) h.destroy()
})

void t.test('SSLRequest + StartupMessage split at every byte offset logs in', async (t) => {
  const proxy = await startProxy(t, cluster)
  const bytes = Buffer.concat([sslRequest(), startup()])
  const failures: number[] = []
  for (const [head, tail, offset] of splits(bytes)) {
    const client = await RawClient.connect(proxy.port)
    client.write(head)
    await sleep(5)
    client.write(tail)
    const ok = (await client.untilMessage('Z', 1)) && client.received[0] === 0x4e
    const types = client
      .messages(1)
      .map((m) => m.type)
      .join('')
    if (!ok || !/^RS+KZ$/.test(types)) failures.push(offset)
    client.destroy()
  }
  t.same(failures, [], `login succeeded at all ${bytes.length + 1} offsets`)
})

void t.test('a Query split at every byte offset is relayed whole', async (t) => {
  const proxy = await startProxy(t, cluster)
  const { client } = await rawLogin(proxy)
  const message = query('select 6 * 7')
  const failures: number[] = []
  for (const [head, tail, offset] of splits(message)) {
    const from = client.received.length
    client.write(head)
    await sleep(5)
    client.write(tail)
    await client.untilMessage('Z', from)
    const reply = client.messages(from)
    if (firstValue(reply) !== '42' || reply.some((m) => m.type === 'E')) failures.push(offset)
  }
  t.same(failures, [], `query answered at all ${message.length + 1} offsets`)
  // Two messages in one write, and one message in one-byte writes.
  const from = client.received.length
  client.write(Buffer.concat([query('select 1'), query('select 2')]))
  await client.untilMessage('Z', from, 2)
  t.equal(client.messages(from).filter((m) => m.type === 'D').length, 2, 'two pipelined queries')
  const bytewise = client.received.length
  for (const byte of query('select 3')) {
    client.write(Buffer.from([byte]))
    await sleep(1)
  }
  await client.untilMessage('Z', bytewise)
  t.equal(firstValue(client.messages(bytewise)), '3', 'a query written one byte at a time')
  client.destroy()
})

void t.test('a protocol violation after login ends that session only', async (t) => {
  const proxy = await startProxy(t, cluster)
  const healthy = await proxy.client()
  const cases: Array<{ name: string; bytes: Buffer; message: string }> = [
    { name: 'unknown type byte y', bytes: Buffer.from([0x79, 0, 0, 0, 4]), message: "invalid message type 'y'" },
    { name: 'NUL type byte', bytes: Buffer.from([0, 0, 0, 0, 4]), message: 'invalid message type 0x00' },
    {
      name: 'Query of length 2',
      bytes: Buffer.from([0x51, 0, 0, 0, 2]),
      message: "invalid length 2 for message type 'Q'",
    },
    {
      name: 'Sync of length 10005',
      bytes: Buffer.from([0x53, 0, 0, 0x27, 0x15]),
      message: "invalid length 10005 for message type 'S'",
    },
    {
      name: 'Query of length 2^31 - 1',
      bytes: Buffer.from([0x51, 0x7f, 0xff, 0xff, 0xff]),
      message: "invalid length 2147483647 for message type 'Q'",
    },
  ]
  for (const { name, bytes, message } of cases) {
    const { client } = await rawLogin(proxy)
    const upstreamPid = Number(firstValue(await simpleQuery(client, 'select pg_backend_pid()')))
    // Another session is mid-query while this one breaks the protocol.
    const busy = healthy.query<{ n: number }>('select pg_sleep(0.2), 1 as n')
    const from = client.received.length
    client.write(bytes)
    t.ok(await client.untilClosed(), `${name}: closed`)
    const fields = onlyFatal(t, client.messages(from))
    t.equal(fields.C, '08P01', `${name}: SQLSTATE`)
    t.equal(fields.M, message, `${name}: message`)
    t.equal((await busy).rows[0]?.n, 1, `${name}: the concurrent query completed`)
    t.equal((await healthy.query<{ n: number }>('select 2 as n')).rows[0]?.n, 2, `${name}: the other session works`)
    t.ok(await backendGone(upstreamPid), `${name}: the upstream backend went away`)
  }
  t.equal(firstValue(await simpleQuery((await rawLogin(proxy)).client, 'select 5')), '5', 'new sessions still start')
})

void t.test('a CancelRequest with a wrong key is dropped silently and cancels nothing', async (t) => {
  const proxy = await startProxy(t, cluster)
  const session = await rawLogin(proxy)
  const wrongKey = Buffer.from(session.key.map((b) => b ^ 0xff))
  const cancels: Array<[string, Buffer[]]> = [
    ['right pid, wrong key', [cancelRequest(session.pid, wrongKey)]],
    ['unknown pid', [cancelRequest(session.pid ^ 0x1234_5678, session.key)]],
    ['wrong key after SSLRequest', [sslRequest(), cancelRequest(session.pid, wrongKey)]],
  ]
  for (const [name, bytes] of cancels) {
    const from = session.client.received.length
    session.client.write(query('select 1 from pg_sleep(0.6)'))
    await sleep(150)
    const { data, closed } = await exchange(proxy.port, bytes)
    t.ok(closed, `${name}: the cancel connection is closed`)
    const expected = bytes.length === 2 ? 'N' : ''
    t.equal(data.toString('latin1'), expected, `${name}: no bytes besides the SSL answer`)
    t.ok(await session.client.untilMessage('Z', from), `${name}: the query finished`)
    const reply = session.client.messages(from)
    t.notOk(
      reply.some((m) => m.type === 'E'),
      `${name}: not cancelled`,
    )
    t.equal(firstValue(reply), '1', `${name}: the row arrived`)
  }

  // Control: the right key does cancel, so the checks above can fail.
  const from = session.client.received.length
  session.client.write(query('select pg_sleep(5)'))
  await sleep(150)
  const { data, closed } = await exchange(proxy.port, [sslRequest(), cancelRequest(session.pid, session.key)])
  t.ok(closed, 'right key: the cancel connection is closed')
  t.equal(data.toString('latin1'), 'N', 'right key: no bytes besides the SSL answer')
  t.ok(await session.client.untilMessage('Z', from, 1, 4_000), 'right key: the query ended early')
  const error = session.client.messages(from).find((m) => m.type === 'E')
  t.equal(error && errorFieldsOf(error.body).C, '57014', 'right key: query_canceled')
  session.client.destroy()
})

void t.test('max_client_connections: the next client gets FATAL 53300', async (t) => {
  const proxy = await startProxy(t, cluster, { max_client_connections: 2 })
  const first = await proxy.client()
  const second = await proxy.client()
  const { messages, closed } = await exchange(proxy.port, [startup()])
  const fields = onlyFatal(t, messages)
  t.equal(fields.C, '53300', 'SQLSTATE too_many_connections')
  t.match(fields.M, /max_client_connections/, 'the message names the setting')
  t.ok(closed, 'closed')
  t.equal((await first.query<{ n: number }>('select 1 as n')).rows[0]?.n, 1, 'admitted sessions are unaffected')

  await second.end()
  let admitted = false
  for (let i = 0; i < 50 && !admitted; i++) {
    const attempt = await RawClient.connect(proxy.port)
    attempt.write(startup())
    admitted = (await attempt.untilMessage('Z')) && !attempt.messages().some((m) => m.type === 'E')
    attempt.destroy()
    if (!admitted) await sleep(100)
  }
  t.ok(admitted, 'once a client leaves, a new one is admitted')
})

void t.test('a client that vanishes mid-query frees its upstream backend', async (t) => {
  const proxy = await startProxy(t, cluster)
  const other = await proxy.client()
  const { client } = await rawLogin(proxy)
  const upstreamPid = Number(firstValue(await simpleQuery(client, 'select pg_backend_pid()')))
  t.ok(upstreamPid > 0, 'upstream pid')
  client.write(query('select pg_sleep(2)'))
  let running = false
  for (let i = 0; i < 50 && !running; i++) {
    const rows = await cluster.query<{ query: string }>(
      "select query from pg_stat_activity where pid = $1 and state = 'active'",
      [upstreamPid],
    )
    running = rows[0]?.query.includes('pg_sleep') ?? false
    if (!running) await sleep(20)
  }
  t.ok(running, 'the query is running upstream')
  client.destroy()
  t.equal((await other.query<{ n: number }>('select 3 as n')).rows[0]?.n, 3, 'the other session is unaffected')
  t.ok(await backendGone(upstreamPid), 'the upstream backend went away')
  t.equal((await other.query<{ n: number }>('select 4 as n')).rows[0]?.n, 4, 'the other session still works')
})
