import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { freePort } from '../support/free-port.js'
import { clusterFor } from '../support/pg-cluster.js'
import { startProxy, type RunningProxy } from '../support/proxy-harness.js'
import { BufferList, errorFieldsOf, parseMessages, startupMessage, type WireMessage } from '../support/wire-builder.js'

// The proxy pointed at a fake upstream that answers its login with crafted bytes: a hostile or
// broken server gets one clean FATAL to the client, never a crash, a hang or a leaked password.
// The real cluster only provides the password the harness writes to the password file.
const cluster = await clusterFor(t)
const PASSWORD = cluster.users.scram.password

/** A socket end that records what arrives and can wait for it (used on both sides). */
class Peer {
  received: Buffer = Buffer.alloc(0)
  /** Bytes received and not yet consumed by read*(). */
  private unread: Buffer = Buffer.alloc(0)
  closed = false
  private readonly listeners = new Set<() => void>()

  constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.received = Buffer.concat([this.received, chunk])
      this.unread = Buffer.concat([this.unread, chunk])
      this.notify()
    })
    socket.on('error', () => {})
    socket.on('close', () => {
      this.closed = true
      this.notify()
    })
  }

  write(...chunks: Buffer[]): void {
    if (!this.socket.destroyed) this.socket.write(Buffer.concat(chunks))
  }

  async until(done: () => boolean, timeoutMs = 5_000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs
    while (!done()) {
      const left = deadline - Date.now()
      if (this.closed || left <= 0) return done()
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          clearTimeout(timer)
          this.listeners.delete(wake)
          resolve()
        }
        const timer = setTimeout(wake, left)
        this.listeners.add(wake)
      })
    }
    return true
  }

  async untilClosed(timeoutMs = 5_000): Promise<boolean> {
    return this.until(() => this.closed, timeoutMs)
  }

  messages(from = 0): WireMessage[] {
    return parseMessages(this.received.subarray(from))
  }

  /** An untyped startup-phase packet (SSLRequest or StartupMessage): its request code and body. */
  async readStartup(): Promise<{ code: number; body: Buffer }> {
    await this.need(8)
    const length = this.unread.readUInt32BE(0)
    await this.need(length)
    const packet = this.take(length)
    return { code: packet.readUInt32BE(4), body: packet.subarray(8) }
  }

  async readMessage(): Promise<WireMessage> {
    await this.need(5)
    const length = this.unread.readUInt32BE(1)
    await this.need(1 + length)
    const message = this.take(1 + length)
    return { type: String.fromCharCode(message[0]!), body: message.subarray(5) }
  }

  private async need(n: number): Promise<void> {
    if (!(await this.until(() => this.unread.length >= n, 10_000))) throw new Error('peer closed or stalled')
  }

  private take(n: number): Buffer {
    const out = Buffer.from(this.unread.subarray(0, n))
    this.unread = this.unread.subarray(n)
    return out
  }

  private notify(): void {
    for (const listener of [...this.listeners]) listener()
  }
}

// Backend messages the fake sends.
const auth = (code: number, data: Buffer = Buffer.alloc(0)): Buffer =>
  new BufferList().int32(code).bytes(data).message('R')
const AUTH_OK = auth(0)
const parameterStatus = (name: string, value: string): Buffer =>
  new BufferList().cstring(name).cstring(value).message('S')
const READY = new BufferList().byte(0x49).message('Z')
const errorResponse = (fields: Array<[string, string]>): Buffer => {
  const list = new BufferList()
  for (const [code, value] of fields) list.byte(code.charCodeAt(0)).cstring(value)
  return list.byte(0).message('E')
}
const saslMechanisms = (...names: string[]): Buffer => {
  const list = new BufferList()
  for (const name of names) list.cstring(name)
  return auth(10, list.byte(0).packet().subarray(4))
}

type Script = (upstream: Peer, index: number) => Promise<void>

interface Fake {
  port: number
  connections: Peer[]
  /** What the next connections do; may be swapped between steps of a test. */
  script: Script
}

async function fakeUpstream(t: Test, script: Script): Promise<Fake> {
  const fake: Fake = { port: 0, connections: [], script }
  const server = net.createServer((socket) => {
    const peer = new Peer(socket)
    const index = fake.connections.push(peer) - 1
    fake.script(peer, index).catch(() => socket.destroy())
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  fake.port = (server.address() as net.AddressInfo).port
  t.teardown(async () => {
    for (const peer of fake.connections) peer.socket.destroy()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
  return fake
}

/**
 * A proxy in front of a fake upstream. It pre-warms nothing (pool.min_idle 0): each fake scripts its
 * connections in order, and a background login of the pool would take a client's turn.
 */
async function proxyFor(t: Test, fake: Fake, upstream: Record<string, unknown> = {}): Promise<RunningProxy> {
  return startProxy(t, cluster, {
    upstream: { host: '127.0.0.1', port: fake.port, sslmode: 'disable', ...upstream },
    pool: { min_idle: 0 },
  })
}

/** The fake's side of a successful trust login: R(0), ParameterStatus, K, Z(I). */
async function acceptLogin(upstream: Peer): Promise<void> {
  const { code } = await upstream.readStartup()
  if (code !== 0x30000) throw new Error(`expected a StartupMessage, got code ${code}`)
  upstream.write(
    AUTH_OK,
    parameterStatus('server_version', '15.99'),
    parameterStatus('client_encoding', 'UTF8'),
    new BufferList()
      .int32(4242)
      .bytes(Buffer.from([1, 2, 3, 4]))
      .message('K'),
    READY,
  )
}

/** Reads the proxy's SASLInitialResponse and returns its client nonce. */
async function readClientNonce(upstream: Peer): Promise<string> {
  const { type, body } = await upstream.readMessage()
  if (type !== 'p') throw new Error(`expected SASLInitialResponse, got ${type}`)
  const data = body.subarray(body.indexOf(0) + 5).toString('utf8')
  const nonce = /,r=([^,]+)/.exec(data)?.[1]
  if (!nonce) throw new Error(`no nonce in ${data}`)
  return nonce
}

const serverFirst = (nonce: string): Buffer =>
  auth(11, Buffer.from(`r=${nonce},s=${randomBytes(16).toString('base64')},i=4096`))

/** Connects a raw client, sends a StartupMessage, and waits for the proxy to finish with it. */
async function connectClient(proxy: RunningProxy): Promise<Peer> {
  const socket = net.connect({ host: '127.0.0.1', port: proxy.port })
  await once(socket, 'connect')
  const client = new Peer(socket)
  client.write(startupMessage({ user: 'raw-client', database: 'appdb' }))
  return client
}

/** A login that must fail: exactly one FATAL ErrorResponse, then the proxy closes. Returns its fields. */
async function expectStartupFatal(t: Test, proxy: RunningProxy, timeoutMs = 5_000): Promise<Record<string, string>> {
  const client = await connectClient(proxy)
  const closed = await client.untilClosed(timeoutMs)
  client.socket.destroy()
  const messages = client.messages()
  t.same(
    messages.map((m) => m.type),
    ['E'],
    'exactly one ErrorResponse',
  )
  t.ok(closed, 'the proxy closed the connection')
  const fields = messages[0]?.type === 'E' ? errorFieldsOf(messages[0].body) : {}
  t.equal(fields.S, 'FATAL', 'severity S')
  t.equal(fields.V, 'FATAL', 'severity V')
  return fields
}

/** A client that logs in through the proxy to the fake and waits for ReadyForQuery. */
async function loggedInClient(t: Test, proxy: RunningProxy): Promise<Peer> {
  const client = await connectClient(proxy)
  t.ok(await client.until(() => client.messages().some((m) => m.type === 'Z')), 'logged in through the fake')
  return client
}

void t.test('AuthenticationOk before SCRAM completed is a refused downgrade', async (t) => {
  const cases: Array<{ name: string; script: Script; message: RegExp }> = [
    {
      name: 'R(0) right after the SASLInitialResponse',
      script: async (upstream) => {
        await upstream.readStartup()
        upstream.write(saslMechanisms('SCRAM-SHA-256'))
        await readClientNonce(upstream)
        upstream.write(AUTH_OK)
      },
      message: /SCRAM authentication without proving it knows the password/,
    },
    {
      name: 'R(0) instead of SASLFinal',
      script: async (upstream) => {
        await upstream.readStartup()
        upstream.write(saslMechanisms('SCRAM-SHA-256'))
        upstream.write(serverFirst(`${await readClientNonce(upstream)}server`))
        await upstream.readMessage() // client-final-message
        upstream.write(AUTH_OK)
      },
      message: /SCRAM authentication without proving it knows the password/,
    },
    {
      name: 'SASLFinal with a wrong server signature',
      script: async (upstream) => {
        await upstream.readStartup()
        upstream.write(saslMechanisms('SCRAM-SHA-256'))
        upstream.write(serverFirst(`${await readClientNonce(upstream)}server`))
        await upstream.readMessage()
        upstream.write(auth(12, Buffer.from(`v=${randomBytes(32).toString('base64')}`)), AUTH_OK)
      },
      message: /SCRAM.*server signature mismatch/,
    },
  ]
  for (const { name, script, message } of cases) {
    const fake = await fakeUpstream(t, script)
    const proxy = await proxyFor(t, fake)
    const fields = await expectStartupFatal(t, proxy)
    t.equal(fields.C, '08001', `${name}: SQLSTATE`)
    t.match(fields.M, message, `${name}: message`)
  }
})

void t.test('a server-first nonce that does not extend the client nonce fails SCRAM', async (t) => {
  const cases: Array<[string, (clientNonce: string) => string]> = [
    ['an unrelated nonce', () => `${randomBytes(18).toString('base64')}server`],
    ['the client nonce, not extended', (clientNonce) => clientNonce],
    ['a prefix of the client nonce', (clientNonce) => clientNonce.slice(0, 10)],
  ]
  for (const [name, nonceFor] of cases) {
    const fake = await fakeUpstream(t, async (upstream) => {
      await upstream.readStartup()
      upstream.write(saslMechanisms('SCRAM-SHA-256'))
      upstream.write(serverFirst(nonceFor(await readClientNonce(upstream))))
      await upstream.readMessage()
      upstream.write(AUTH_OK)
    })
    const proxy = await proxyFor(t, fake)
    const fields = await expectStartupFatal(t, proxy)
    t.equal(fields.C, '08001', `${name}: SQLSTATE`)
    t.match(fields.M, /SCRAM/, `${name}: message names SCRAM`)
    t.match(fields.M, /nonce/, `${name}: message names the nonce`)
    const upstream = fake.connections[0]!
    await upstream.untilClosed(2_000)
    t.same(
      upstream.messages(upstream.received.readUInt32BE(0)).map((m) => m.type),
      ['p'],
      `${name}: only the SASLInitialResponse was sent, no proof`,
    )
  }
})

void t.test('an ErrorResponse without a SQLSTATE during startup reaches the client as a FATAL', async (t) => {
  const broken: Array<[string, Buffer]> = [
    [
      'no C field',
      errorResponse([
        ['S', 'FATAL'],
        ['V', 'FATAL'],
        ['M', 'no sqlstate here'],
      ]),
    ],
    ['no fields at all', errorResponse([])],
    ['only a message', errorResponse([['M', 'only a message']])],
    ['an unterminated last field', Buffer.from('E\0\0\0\x11SFATAL\0Mtrunc', 'latin1')],
  ]
  let reply = broken[0]![1]
  const fake = await fakeUpstream(t, async (upstream, index) => {
    if (index === broken.length) return acceptLogin(upstream)
    await upstream.readStartup()
    upstream.write(reply)
  })
  const proxy = await proxyFor(t, fake)
  for (const [name, bytes] of broken) {
    reply = bytes
    const fields = await expectStartupFatal(t, proxy)
    t.match(fields.C, /^[0-9A-Z]{5}$/, `${name}: a SQLSTATE (${fields.C})`)
    t.ok(fields.M, `${name}: a message (${fields.M})`)
    if (name === 'no C field') t.match(fields.M, 'no sqlstate here', `${name}: the upstream's message is kept`)
  }
  const client = await loggedInClient(t, proxy)
  client.socket.destroy()
})

void t.test('absurd message lengths from the upstream fail fast without allocating', async (t) => {
  const cases: Array<[string, Buffer, RegExp]> = [
    ['R with length 2^31 - 1', Buffer.from([0x52, 0x7f, 0xff, 0xff, 0xff]), /invalid message length 2147483647/],
    ['E with length 2^32 - 1', Buffer.from([0x45, 0xff, 0xff, 0xff, 0xff]), /invalid message length 4294967295/],
    ['R with length 3', Buffer.from([0x52, 0, 0, 0, 3]), /invalid message length 3/],
    ['R with length 4 (no request code)', Buffer.from([0x52, 0, 0, 0, 4]), /truncated authentication request/],
  ]
  for (const [name, bytes, message] of cases) {
    const fake = await fakeUpstream(t, async (upstream) => {
      await upstream.readStartup()
      upstream.write(bytes) // and nothing more: the socket stays open
    })
    const proxy = await proxyFor(t, fake)
    const before = process.memoryUsage().arrayBuffers
    const started = Date.now()
    const fields = await expectStartupFatal(t, proxy, 3_000)
    t.equal(fields.C, '08001', `${name}: SQLSTATE`)
    t.match(fields.M, message, `${name}: message`)
    t.ok(Date.now() - started < 2_000, `${name}: answered without waiting for a body or a timeout`)
    t.ok(process.memoryUsage().arrayBuffers - before < 64 * 1024 * 1024, `${name}: no large buffer allocated`)
  }
})

void t.test('authentication methods the proxy cannot answer', async (t) => {
  const cases: Array<[number, RegExp]> = [
    [7, /GSSAPI/],
    [9, /SSPI/],
    [2, /Kerberos V5/],
    [99, /authentication code 99/],
  ]
  for (const [code, name] of cases) {
    const fake = await fakeUpstream(t, async (upstream) => {
      await upstream.readStartup()
      upstream.write(auth(code))
    })
    const proxy = await proxyFor(t, fake)
    const fields = await expectStartupFatal(t, proxy)
    t.equal(fields.C, '08001', `code ${code}: SQLSTATE`)
    t.match(fields.M, /cannot answer the upstream server's authentication request/, `code ${code}: message`)
    t.match(fields.M, name, `code ${code}: names the method`)
  }
  const noScram = await fakeUpstream(t, async (upstream) => {
    await upstream.readStartup()
    upstream.write(saslMechanisms('OAUTHBEARER'))
  })
  const fields = await expectStartupFatal(t, await proxyFor(t, noScram))
  t.equal(fields.C, '08001', 'SASL without SCRAM: SQLSTATE')
  t.match(fields.M, /no supported SASL mechanism/, 'SASL without SCRAM: message')
})

void t.test('a cleartext password request without verified TLS is refused and the password never sent', async (t) => {
  const fake = await fakeUpstream(t, async (upstream) => {
    await upstream.readStartup()
    upstream.write(auth(3))
    await upstream.readMessage()
  })
  const proxy = await proxyFor(t, fake)
  const fields = await expectStartupFatal(t, proxy)
  t.equal(fields.C, '08001', 'SQLSTATE')
  t.match(fields.M, /refused to send a cleartext password/, 'message')
  const upstream = fake.connections[0]!
  await upstream.untilClosed(2_000)
  const afterStartup = upstream.received.subarray(upstream.received.readUInt32BE(0))
  t.notOk(
    parseMessages(afterStartup).some((m) => m.type === 'p'),
    'no PasswordMessage reached the fake',
  )
  t.notOk(upstream.received.includes(Buffer.from(PASSWORD)), 'the password never reached the fake')
  t.notOk(proxy.logText().includes(PASSWORD), 'nor the log')
})

void t.test('TLS negotiation faults', async (t) => {
  const sslThen = (answer: Buffer, then?: (upstream: Peer) => Promise<void>): Script => {
    return async (upstream) => {
      const { code } = await upstream.readStartup()
      if (code !== 80877103) throw new Error(`expected SSLRequest, got ${code}`)
      upstream.write(answer)
      if (then) await then(upstream)
    }
  }

  const plain = await fakeUpstream(t, sslThen(Buffer.from('N')))
  let fields = await expectStartupFatal(t, await proxyFor(t, plain, { sslmode: 'require' }))
  t.equal(fields.C, '08001', 'require, answered N: SQLSTATE')
  t.match(fields.M, /requires TLS/, 'require, answered N: message')

  const stuffed = await fakeUpstream(t, sslThen(Buffer.concat([Buffer.from('S'), AUTH_OK, READY])))
  fields = await expectStartupFatal(t, await proxyFor(t, stuffed, { sslmode: 'prefer' }))
  t.equal(fields.C, '08001', 'S plus plaintext: SQLSTATE')
  t.match(fields.M, /unencrypted data after the SSL response/, 'S plus plaintext: message')

  const secret = 'upstream-text-that-must-not-be-shown'
  const erroring = await fakeUpstream(
    t,
    sslThen(
      errorResponse([
        ['S', 'FATAL'],
        ['C', '28000'],
        ['M', secret],
      ]),
    ),
  )
  fields = await expectStartupFatal(t, await proxyFor(t, erroring, { sslmode: 'prefer' }))
  t.equal(fields.C, '08001', 'ErrorResponse to SSLRequest: SQLSTATE')
  t.notMatch(fields.M, secret, 'ErrorResponse to SSLRequest: the unauthenticated text is not shown')

  // Control: prefer carries on in plaintext after N.
  const prefer = await fakeUpstream(t, sslThen(Buffer.from('N'), acceptLogin))
  const client = await loggedInClient(t, await proxyFor(t, prefer, { sslmode: 'prefer' }))
  client.socket.destroy()
})

void t.test('the upstream closing during login is FATAL 08001', async (t) => {
  const cases: Array<[string, Script]> = [
    [
      'right after the StartupMessage',
      async (upstream) => {
        await upstream.readStartup()
        upstream.socket.end()
      },
    ],
    [
      'in the middle of a message header',
      async (upstream) => {
        await upstream.readStartup()
        upstream.socket.end(Buffer.from([0x52, 0, 0]))
      },
    ],
    [
      'in the middle of SCRAM',
      async (upstream) => {
        await upstream.readStartup()
        upstream.write(saslMechanisms('SCRAM-SHA-256'))
        await readClientNonce(upstream)
        upstream.socket.end()
      },
    ],
    [
      'after AuthenticationOk, before ReadyForQuery',
      async (upstream) => {
        await upstream.readStartup()
        upstream.socket.end(Buffer.concat([AUTH_OK, parameterStatus('server_version', '15.99')]))
      },
    ],
    [
      'with a reset',
      async (upstream) => {
        await upstream.readStartup()
        upstream.socket.resetAndDestroy()
      },
    ],
  ]
  for (const [name, script] of cases) {
    const fake = await fakeUpstream(t, script)
    const fields = await expectStartupFatal(t, await proxyFor(t, fake))
    t.equal(fields.C, '08001', `${name}: SQLSTATE`)
    t.match(
      fields.M,
      /could not connect to the upstream server|closed the connection|connection reset/,
      `${name}: message`,
    )
  }
})

void t.test(
  'faults after login: garbage is 08006, an upstream FATAL is relayed with the reason it ends the session',
  async (t) => {
    const QUERY = new BufferList().cstring('select 1').message('Q')
    const afterQuery = (act: (upstream: Peer) => void): Script => {
      return async (upstream) => {
        await acceptLogin(upstream)
        for (;;) {
          const { type } = await upstream.readMessage()
          if (type === 'Q') return act(upstream)
        }
      }
    }
    const run = async (name: string, act: (upstream: Peer) => void): Promise<{ client: Peer; reply: Buffer }> => {
      const fake = await fakeUpstream(t, afterQuery(act))
      const client = await loggedInClient(t, await proxyFor(t, fake))
      const from = client.received.length
      client.write(QUERY)
      t.ok(await client.untilClosed(), `${name}: the client is closed`)
      client.socket.destroy()
      return { client, reply: client.received.subarray(from) }
    }

    for (const [name, garbage] of [
      ['unknown type byte', Buffer.from([0x79, 0, 0, 0, 4])],
      ['length below 4', Buffer.from([0x44, 0, 0, 0, 1])],
      ['length over 1 GB', Buffer.from([0x44, 0x7f, 0xff, 0xff, 0xff])],
    ] as const) {
      const { reply } = await run(name, (upstream) => upstream.write(garbage))
      const messages = parseMessages(reply)
      t.same(
        messages.map((m) => m.type),
        ['E'],
        `${name}: one ErrorResponse`,
      )
      const fields = errorFieldsOf(messages[0]?.body ?? Buffer.alloc(0))
      t.equal(fields.S, 'FATAL', `${name}: FATAL`)
      t.equal(fields.C, '08006', `${name}: SQLSTATE`)
    }

    const fatal = errorResponse([
      ['S', 'FATAL'],
      ['V', 'FATAL'],
      ['C', '57P01'],
      ['M', 'terminating connection due to administrator command'],
      ['F', 'postgres.c'],
      ['L', '3191'],
      ['R', 'ProcessInterrupts'],
    ])
    const { reply } = await run('FATAL 57P01', (upstream) => upstream.socket.end(fatal))
    const relayed = parseMessages(reply)
    t.same(
      relayed.map((m) => m.type),
      ['E'],
      'FATAL 57P01: one ErrorResponse, nothing after it',
    )
    const { D: detail, ...serverFields } = errorFieldsOf(relayed[0]?.body ?? Buffer.alloc(0))
    t.same(serverFields, errorFieldsOf(fatal.subarray(5)), 'FATAL 57P01: every field the server sent, as it sent it')
    t.match(
      detail,
      /request in flight.*never replays statements/,
      'FATAL 57P01: the proxy says why it did not reconnect',
    )

    const silent = await run('close without a word', (upstream) => upstream.socket.end())
    const fields = errorFieldsOf(parseMessages(silent.reply)[0]?.body ?? Buffer.alloc(0))
    t.equal(fields.C, '08006', 'close without a word: FATAL 08006')
    t.match(fields.M, /lost the connection to the upstream server/, 'close without a word: message')
  },
)

void t.test('a FATAL is never spliced into a message the client is receiving', async (t) => {
  // A DataRow of 105 bytes that the fake sends in two parts.
  const row = new BufferList().int16(1).int32(94).bytes(Buffer.alloc(94, 0x61)).message('D')
  const QUERY = new BufferList().cstring('select 1').message('Q')
  const loginThenHalfRow = async (upstream: Peer): Promise<void> => {
    await acceptLogin(upstream)
    for (;;) if ((await upstream.readMessage()).type === 'Q') break
    upstream.write(row.subarray(0, 50))
  }

  // The upstream breaks framing right after finishing a message that was split across writes.
  const tailThenGarbage = await fakeUpstream(t, async (upstream) => {
    await loginThenHalfRow(upstream)
    await sleep(50)
    upstream.write(row.subarray(50), Buffer.from([0x79, 0, 0, 0, 4]))
  })
  let client = await loggedInClient(t, await proxyFor(t, tailThenGarbage))
  let from = client.received.length
  client.write(QUERY)
  t.ok(await client.untilClosed(), 'garbage after a split message: closed')
  let reply = client.received.subarray(from)
  t.same(
    parseMessages(reply).map((m) => m.type),
    ['D', 'E'],
    'garbage after a split message: the whole DataRow, then the FATAL',
  )
  t.same(parseMessages(reply)[0]?.body, row.subarray(5), 'the DataRow arrived intact')
  t.equal(errorFieldsOf(parseMessages(reply)[1]?.body ?? Buffer.alloc(0)).C, '08006', 'then FATAL 08006')
  client.socket.destroy()

  // The client breaks the protocol while a DataRow is half relayed to it.
  const halfRow = await fakeUpstream(t, loginThenHalfRow)
  client = await loggedInClient(t, await proxyFor(t, halfRow))
  from = client.received.length
  client.write(QUERY)
  await client.until(() => client.received.length - from >= 50)
  client.write(Buffer.from([0x79, 0, 0, 0, 4]))
  t.ok(await client.untilClosed(), 'client violation mid-DataRow: closed')
  reply = client.received.subarray(from)
  t.same(reply, row.subarray(0, 50), 'client violation mid-DataRow: nothing is written into the half-sent message')
  client.socket.destroy()
})

void t.test('an upstream that accepts and never answers times out at connect_timeout_ms', async (t) => {
  const fake = await fakeUpstream(t, async () => {})
  const proxy = await proxyFor(t, fake, { connect_timeout_ms: 300 })
  const started = Date.now()
  const fields = await expectStartupFatal(t, proxy)
  t.equal(fields.C, '08001', 'SQLSTATE')
  t.match(fields.M, /timed out/, 'message')
  t.ok(Date.now() - started < 3_000, `within a few seconds (${Date.now() - started} ms)`)

  const dead = await startProxy(t, cluster, {
    upstream: { host: '127.0.0.1', port: await freePort(), sslmode: 'disable' },
  })
  const refused = await expectStartupFatal(t, dead)
  t.equal(refused.C, '08001', 'connection refused: SQLSTATE')
  t.match(refused.M, /connection refused/, 'connection refused: message')
})
