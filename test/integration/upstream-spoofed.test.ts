import t from 'tap'
import { MAX_LOGIN_BYTES } from '../../src/proxy/upstream-connector.js'
import { freePort } from '../support/free-port.js'
import { clusterFor } from '../support/pg-cluster.js'
import { startProxy, type RunningProxy } from '../support/proxy-harness.js'
import { runClient } from '../support/run-client.js'
import {
  acceptAndForge,
  askPassword,
  authRequest,
  floodParameterStatus,
  gs2Header,
  offerSasl,
  selfSignedCertificate,
  startSpoofUpstream,
  type SpoofScenario,
  type SpoofTls,
  type SpoofUpstream,
} from '../support/spoof-upstream.js'

// A spoofed upstream — a server with a self-signed certificate that does not know the login's
// password — in front of which channel_binding=require must refuse every login that is not a
// completed SCRAM-SHA-256-PLUS exchange, as libpq does, before the spoof learns anything. The real
// cluster only provides the password file the harness writes (and a sibling session's server).
const cluster = await clusterFor(t)
const PASSWORD = cluster.users.scram.password
const spoofTls = await selfSignedCertificate()

function proxyFor(spoof: SpoofUpstream, upstream: Record<string, unknown>): Promise<RunningProxy> {
  return startProxy(t, cluster, { upstream: { host: '127.0.0.1', port: spoof.port, ...upstream } })
}

async function connectError(proxy: RunningProxy): Promise<{ code: string; message: string }> {
  const err = await proxy.client().then(
    () => undefined,
    (e: unknown) => e as { code: string; message: string },
  )
  return err ?? { code: 'connected', message: 'the client connected' }
}

/** What the spoof learned: every frontend message type after startup, and whether the password was among them. */
function learned(spoof: SpoofUpstream): { types: string[]; sawPassword: boolean } {
  const messages = spoof.connections.flatMap((c) => c.messages)
  return {
    types: messages.map((m) => m.type),
    sawPassword: messages.some((m) => m.body.includes(Buffer.from(PASSWORD))),
  }
}

const GSS: SpoofScenario = async (connection) => {
  connection.write(authRequest(7))
  if (await connection.readMessage()) await acceptAndForge(connection)
}

void t.test(
  'channel_binding require: a spoofed TLS server gets 08001 naming channel binding, and no password, hash or query',
  async (t) => {
    const scenarios: Array<[string, SpoofScenario, RegExp, Record<string, unknown>?]> = [
      ['trust (AuthenticationOk at once)', acceptAndForge, /accepted the login without any authentication exchange/],
      ['MD5', askPassword(5), /asked for MD5 password authentication/],
      // allow_cleartext_password does not weaken channel_binding require.
      ['cleartext', askPassword(3), /asked for cleartext password authentication/, { allow_cleartext_password: true }],
      ['GSSAPI', GSS, /asked for GSSAPI authentication/],
      ['SCRAM-SHA-256 without PLUS', offerSasl('SCRAM-SHA-256'), /did not offer SCRAM-SHA-256-PLUS/],
    ]
    for (const [name, scenario, why, extra] of scenarios) {
      const spoof = await startSpoofUpstream(t, scenario, spoofTls)
      const proxy = await proxyFor(spoof, { sslmode: 'require', channel_binding: 'require', ...extra })
      const err = await connectError(proxy)
      t.equal(err.code, '08001', `${name}: SQLSTATE`)
      t.match(err.message, /channel binding is required \(upstream\.channel_binding: require\)/, `${name}: message`)
      t.match(err.message, why, `${name}: the reason`)
      t.ok(spoof.connections[0]?.tls, `${name}: the spoof did speak TLS`)
      t.same(learned(spoof), { types: [], sawPassword: false }, `${name}: the spoof received no message at all`)
      t.notOk(proxy.logText().includes(PASSWORD), `${name}: the password is not in the log`)
    }
  },
)

void t.test('channel_binding require with psql: the message a libpq user sees, and no forged rows', async (t) => {
  const spoof = await startSpoofUpstream(t, acceptAndForge, spoofTls)
  const proxy = await proxyFor(spoof, { sslmode: 'require', channel_binding: 'require' })
  const run = await runClient('psql', [
    '-X',
    '-At',
    '-h',
    '127.0.0.1',
    '-p',
    String(proxy.port),
    '-U',
    'app',
    '-d',
    'appdb',
    '-c',
    'select 1',
  ])
  t.not(run.code, 0, run.out)
  t.match(run.stderr, /FATAL: +pg-vault-proxy: channel binding is required/)
  t.notMatch(run.stdout, /forged/)
  t.same(learned(spoof).types, [])
})

void t.test('control: without channel_binding require, the same spoof is accepted (what libpq does too)', async (t) => {
  const spoof = await startSpoofUpstream(t, acceptAndForge, spoofTls)
  const proxy = await proxyFor(spoof, { sslmode: 'require', channel_binding: 'prefer' })
  const client = await proxy.client()
  t.same(
    (await client.query('select 1')).rows,
    [{ forged: 'forged' }],
    'sslmode require alone does not authenticate the server',
  )
  t.ok(learned(spoof).types.includes('Q'))
})

void t.test('channel_binding require without TLS: refused, nothing sent', async (t) => {
  const spoof = await startSpoofUpstream(t, offerSasl('SCRAM-SHA-256'), undefined)
  const proxy = await proxyFor(spoof, { sslmode: 'prefer', channel_binding: 'require' })
  const err = await connectError(proxy)
  t.equal(err.code, '08001')
  t.match(err.message, /channel binding is required .*the connection does not use TLS/)
  t.notOk(spoof.connections[0]?.tls)
  t.same(learned(spoof).types, [])
})

void t.test(
  'the GS2 header the spoof receives: y over TLS without a PLUS offer, n otherwise, p= with PLUS',
  async (t) => {
    const cases: Array<[string, SpoofTls | undefined, string[], Record<string, unknown>, string, string]> = [
      [
        'prefer, TLS, no PLUS offered',
        spoofTls,
        ['SCRAM-SHA-256'],
        { sslmode: 'require', channel_binding: 'prefer' },
        'SCRAM-SHA-256',
        'y,,',
      ],
      [
        'prefer, no TLS',
        undefined,
        ['SCRAM-SHA-256'],
        { sslmode: 'prefer', channel_binding: 'prefer' },
        'SCRAM-SHA-256',
        'n,,',
      ],
      [
        'disable, TLS',
        spoofTls,
        ['SCRAM-SHA-256'],
        { sslmode: 'require', channel_binding: 'disable' },
        'SCRAM-SHA-256',
        'n,,',
      ],
      [
        'disable, TLS, PLUS offered',
        spoofTls,
        ['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256'],
        { sslmode: 'require', channel_binding: 'disable' },
        'SCRAM-SHA-256',
        'n,,',
      ],
      [
        'prefer, TLS, PLUS offered',
        spoofTls,
        ['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256'],
        { sslmode: 'require', channel_binding: 'prefer' },
        'SCRAM-SHA-256-PLUS',
        'p=tls-server-end-point,,',
      ],
    ]
    for (const [name, tls, offer, upstream, mechanism, header] of cases) {
      const spoof = await startSpoofUpstream(t, offerSasl(...offer), tls)
      const proxy = await proxyFor(spoof, upstream)
      const err = await connectError(proxy)
      t.equal(err.code, '08001', `${name}: the spoof cannot finish SCRAM`)
      const [first] = spoof.connections[0]?.messages ?? []
      t.equal(first?.type, 'p', `${name}: a SASLInitialResponse`)
      if (first) t.same(gs2Header(first), { mechanism, header }, name)
    }
  },
)

void t.test(
  'PLUS offered without TLS, or over a certificate with no channel binding hash: refused as libpq does, nothing sent',
  async (t) => {
    const stripped = await startSpoofUpstream(t, offerSasl('SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256'), undefined)
    let err = await connectError(await proxyFor(stripped, { sslmode: 'prefer', channel_binding: 'prefer' }))
    t.equal(err.code, '08001')
    t.match(err.message, /offered SCRAM-SHA-256-PLUS authentication over a connection without TLS/)
    t.same(learned(stripped).types, [])

    const ed25519 = await startSpoofUpstream(
      t,
      offerSasl('SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256'),
      await selfSignedCertificate('ed25519'),
    )
    err = await connectError(await proxyFor(ed25519, { sslmode: 'require', channel_binding: 'prefer' }))
    t.equal(err.code, '08001')
    t.match(err.message, /channel binding is not supported for Ed25519 certificates/)
    t.same(learned(ed25519).types, [])
  },
)

void t.test(
  'a login flooded with ParameterStatus fails at the login byte cap; the process and a sibling session carry on',
  async (t) => {
    const FLOOD = 64 << 20
    const spoof = await startSpoofUpstream(t, floodParameterStatus(FLOOD), undefined)
    const port = await freePort()
    const proxy = await startProxy(t, cluster, {
      routes: [
        {
          name: 'spoofed',
          listen: `127.0.0.1:${port}`,
          users: ['victim'],
          upstream: { host: '127.0.0.1', port: spoof.port },
        },
        { name: 'app', listen: `127.0.0.1:${port}` },
      ],
    })
    const sibling = await proxy.client({ port, user: 'app' })
    t.equal((await sibling.query<{ u: string }>('select current_user as u')).rows[0]?.u, 'app_owner')

    const err = (await proxy.client({ port, user: 'victim' }).catch((e: unknown) => e)) as Record<string, string>
    t.equal(err.code, '08001')
    t.match(err.message, `sent more than ${MAX_LOGIN_BYTES} bytes during login`)
    const [flood] = spoof.connections
    await flood?.untilClosed()
    t.ok(flood?.closed, 'the proxy closed the flooding connection')
    // The spoof writes only as fast as the proxy reads: what it got rid of is what the proxy read, plus
    // the sockets' kernel buffers (a few MiB on loopback), nowhere near the 64 MiB it had to send.
    const written = flood?.bytesWritten ?? FLOOD
    t.ok(written > MAX_LOGIN_BYTES, `the spoof sent more than the cap (${written} bytes)`)
    t.ok(written < 24 << 20, `the proxy stopped reading long before the flood ended (${written} bytes)`)

    t.equal(
      (await sibling.query<{ n: number }>('select 1 as n')).rows[0]?.n,
      1,
      'the open sibling session still answers',
    )
    const fresh = await proxy.client({ port, user: 'app' })
    t.equal((await fresh.query<{ n: number }>('select 2 as n')).rows[0]?.n, 2, 'a new session still logs in')
  },
)
