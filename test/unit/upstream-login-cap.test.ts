import t, { type Test } from 'tap'
import { ProxyError } from '../../src/proxy/proxy-error.js'
import { MAX_LOGIN_BYTES, UpstreamConnector } from '../../src/proxy/upstream-connector.js'
import { UpstreamEndpoint } from '../../src/proxy/upstream-endpoint.js'
import { authRequest, startSpoofUpstream, type SpoofConnection } from '../support/spoof-upstream.js'
import { BufferList } from '../support/wire-builder.js'

// The login byte cap at its edge: a login of exactly MAX_LOGIN_BYTES succeeds, one byte more fails
// with upstream_login_too_large, and a single message no server could send is a protocol error.

const credential = { username: 'u', password: 'p', origin: 'test' }
const backendKeyData = new BufferList().int32(7).int32(8).message('K')
const readyForQuery = new BufferList().byte(0x49).message('Z')

/** A NoticeResponse (one M field) of exactly `size` bytes, header included. */
function notice(size: number): Buffer {
  const text = 'n'.repeat(size - 5 - 1 - 1 - 1) // header, field code, its NUL, the final NUL
  return new BufferList().byte(0x4d).cstring(text).byte(0).message('N')
}

/** A trust login whose messages total `total` bytes, the padding in one notice. */
const loginOf =
  (total: number) =>
  async (connection: SpoofConnection): Promise<void> => {
    const fixed = [authRequest(0), backendKeyData, readyForQuery]
    const padding = total - fixed.reduce((sum, b) => sum + b.length, 0)
    connection.write(fixed[0]!, notice(padding), fixed[1]!, fixed[2]!)
    await connection.untilClosed()
  }

async function login(t: Test, scenario: (c: SpoofConnection) => Promise<void>): Promise<unknown> {
  const spoof = await startSpoofUpstream(t, scenario, undefined)
  const endpoint = new UpstreamEndpoint({ host: '127.0.0.1', port: spoof.port, sslmode: 'disable' })
  const connector = new UpstreamConnector(endpoint, {
    connectTimeoutMs: 5_000,
    channelBinding: 'prefer',
    allowCleartextPassword: false,
  })
  try {
    const session = await connector.connect([['user', 'u']], credential)
    session.socket.destroy()
    return session
  } catch (err) {
    return err
  }
}

void t.test('exactly MAX_LOGIN_BYTES logs in', async (t) => {
  const session = await login(t, loginOf(MAX_LOGIN_BYTES))
  if (session instanceof Error) throw session
  const { notices } = session as { notices: Buffer[] }
  t.equal(notices[0]?.length, MAX_LOGIN_BYTES - 9 - 13 - 6, 'the notice was kept whole')
})

void t.test('one byte more fails the login with upstream_login_too_large (08001)', async (t) => {
  const err = await login(t, loginOf(MAX_LOGIN_BYTES + 1))
  t.type(err, ProxyError)
  t.equal((err as ProxyError).reason, 'upstream_login_too_large')
  t.equal((err as ProxyError).clientError.sqlState, '08001')
  t.match((err as ProxyError).message, `sent more than ${MAX_LOGIN_BYTES} bytes during login`)
})

void t.test('a single message longer than the whole cap is a broken server, said as such', async (t) => {
  const err = await login(t, async (connection) => {
    connection.write(Buffer.from([0x4e, 0x7f, 0xff, 0xff, 0xff]))
    await connection.untilClosed()
  })
  t.equal((err as ProxyError).reason, 'upstream_protocol_error')
  t.match((err as ProxyError).message, /invalid message length 2147483647/)
})
