import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { clusterFor } from '../support/pg-cluster.js'
import { startProxy } from '../support/proxy-harness.js'

const exec = promisify(execFile)
const cluster = await clusterFor(t)

const loginAs = (login: { user: string; password: string }): Record<string, unknown> => ({
  credentials: { static: { username: login.user, password: login.password } },
})

async function sessionInfo(
  proxy: Awaited<ReturnType<typeof startProxy>>,
): Promise<{ user: string; ssl: boolean; current: string }> {
  const client = await proxy.client()
  const row = (
    await client.query<{ user: string; current: string; pid: number }>(
      'select session_user as user, current_user as current, pg_backend_pid() as pid',
    )
  ).rows[0]!
  // pg_stat_ssl shows other sessions only to privileged roles, so ask as the superuser.
  const ssl = (await cluster.query<{ ssl: boolean }>('select ssl from pg_stat_ssl where pid = $1', [row.pid]))[0]?.ssl
  return { user: row.user, current: row.current, ssl: ssl === true }
}

function authOfLastSession(proxy: Awaited<ReturnType<typeof startProxy>>): unknown {
  return proxy.logs.filter((l) => l.msg === 'session started').at(-1)?.auth
}

void t.test('SCRAM-SHA-256 without TLS, and the salted key cache on the second login', async (t) => {
  const proxy = await startProxy(t, cluster)
  t.same(await sessionInfo(proxy), { user: 'scram_user', current: 'app_owner', ssl: false })
  t.equal(authOfLastSession(proxy), 'SCRAM-SHA-256')
  t.same(await sessionInfo(proxy), { user: 'scram_user', current: 'app_owner', ssl: false })
})

void t.test('md5', async (t) => {
  const proxy = await startProxy(t, cluster, loginAs(cluster.users.md5))
  t.same(await sessionInfo(proxy), { user: 'md5_user', current: 'app_owner', ssl: false })
  t.equal(authOfLastSession(proxy), 'md5')
})

void t.test(
  'cleartext password: refused without verified TLS, sent over verify-full, or when explicitly allowed',
  async (t) => {
    const refused = await startProxy(t, cluster, loginAs(cluster.users.password))
    const err = (await refused.client().catch((e: unknown) => e)) as Record<string, string>
    t.equal(err.code, '08001')
    t.match(err.message, /refused to send a cleartext password/)
    t.match(err.hint, /verify-full/)

    const verified = await startProxy(t, cluster, {
      ...loginAs(cluster.users.password),
      upstream: { host: 'localhost', sslmode: 'verify-full', sslrootcert: cluster.tls.caFile },
    })
    t.same(await sessionInfo(verified), { user: 'password_user', current: 'app_owner', ssl: true })
    t.equal(authOfLastSession(verified), 'password')

    const allowed = await startProxy(t, cluster, {
      ...loginAs(cluster.users.password),
      upstream: { allow_cleartext_password: true },
    })
    t.same(await sessionInfo(allowed), { user: 'password_user', current: 'app_owner', ssl: false })
  },
)

void t.test(
  'TLS modes: prefer and require encrypt; verify-ca and verify-full check the CA; channel binding',
  async (t) => {
    for (const sslmode of ['prefer', 'require', 'verify-ca', 'verify-full'] as const) {
      const upstream = sslmode.startsWith('verify')
        ? { sslmode, sslrootcert: cluster.tls.caFile, host: 'localhost' }
        : { sslmode }
      const proxy = await startProxy(t, cluster, { upstream })
      t.same(await sessionInfo(proxy), { user: 'scram_user', current: 'app_owner', ssl: true }, sslmode)
      t.equal(authOfLastSession(proxy), 'SCRAM-SHA-256-PLUS', `${sslmode}: channel binding used`)
    }
    const noBinding = await startProxy(t, cluster, { upstream: { sslmode: 'require', channel_binding: 'disable' } })
    await sessionInfo(noBinding)
    t.equal(authOfLastSession(noBinding), 'SCRAM-SHA-256', 'plain SCRAM over TLS (n,,) when binding is disabled')

    const plain = await startProxy(t, cluster, { upstream: { sslmode: 'allow' } })
    t.same(
      await sessionInfo(plain),
      { user: 'scram_user', current: 'app_owner', ssl: false },
      'allow starts in plaintext',
    )
  },
)

void t.test('client certificate login with sslcert and sslkey', async (t) => {
  const proxy = await startProxy(t, cluster, {
    credentials: { static: { username: cluster.users.cert.user, password: '' } },
    upstream: {
      host: 'localhost',
      sslmode: 'verify-full',
      sslrootcert: cluster.tls.caFile,
      sslcert: cluster.tls.clientCertFile,
      sslkey: cluster.tls.clientKeyFile,
    },
  })
  t.same(await sessionInfo(proxy), { user: 'cert_user', current: 'app_owner', ssl: true })
})

void t.test(
  'verify-ca with the wrong CA, and verify-full with a certificate for another name, fail clearly',
  async (t) => {
    const wrongCa = await startProxy(t, cluster, {
      upstream: { sslmode: 'verify-ca', sslrootcert: cluster.tls.wrongCaFile },
    })
    const err = (await wrongCa.client().catch((e: unknown) => e)) as Record<string, string>
    t.equal(err.code, '08001')
    t.match(err.message, /could not establish TLS with the upstream server at 127\.0\.0\.1:\d+ \(sslmode verify-ca\)/)

    // A server certificate valid under its own CA but naming another host.
    const dir = await mkdtemp(join(tmpdir(), 'pgvp-name-'))
    t.teardown(() => rm(dir, { recursive: true, force: true }))
    const ca = join(dir, 'ca'),
      srv = join(dir, 'srv')
    await exec('openssl', [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      `${ca}.key`,
      '-out',
      `${ca}.crt`,
      '-days',
      '2',
      '-subj',
      '/CN=name-test-ca',
    ])
    await exec('openssl', [
      'req',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      `${srv}.key`,
      '-out',
      `${srv}.csr`,
      '-subj',
      '/CN=db.example.internal',
    ])
    await exec('openssl', [
      'x509',
      '-req',
      '-in',
      `${srv}.csr`,
      '-CA',
      `${ca}.crt`,
      '-CAkey',
      `${ca}.key`,
      '-CAcreateserial',
      '-out',
      `${srv}.crt`,
      '-days',
      '2',
    ])
    const misnamed = await startProxy(t, cluster, {
      upstream: { sslmode: 'verify-full', sslrootcert: `${ca}.crt`, host: '127.0.0.1' },
    })
    // Serve the misnamed certificate by swapping the server's files in place and reloading.
    const certPath = (
      await cluster.query<{ setting: string }>("select setting from pg_settings where name = 'ssl_cert_file'")
    )[0]!.setting
    const keyPath = (
      await cluster.query<{ setting: string }>("select setting from pg_settings where name = 'ssl_key_file'")
    )[0]!.setting
    const original = { cert: await readFile(certPath), key: await readFile(keyPath) }
    const { writeFile } = await import('node:fs/promises')
    const swap = async (cert: Buffer, key: Buffer): Promise<void> => {
      await writeFile(certPath, cert)
      await writeFile(keyPath, key)
      await cluster.query('select pg_reload_conf()')
      await new Promise((r) => setTimeout(r, 300))
    }
    await swap(await readFile(`${srv}.crt`), await readFile(`${srv}.key`))
    try {
      const nameErr = (await misnamed.client().catch((e: unknown) => e)) as Record<string, string>
      t.equal(nameErr.code, '08001')
      t.match(nameErr.message, /verify-full.*(altnames|does not match)/i)
      t.match(nameErr.hint, /name upstream\.host/)
    } finally {
      await swap(original.cert, original.key)
    }
  },
)

void t.test('a refused login: 28P01 naming the login user, and the password never in a log', async (t) => {
  const secret = 'definitely-wrong-password-4711'
  const proxy = await startProxy(t, cluster, { credentials: { static: { username: 'scram_user', password: secret } } })
  const err = (await proxy.client().catch((e: unknown) => e)) as Record<string, string>
  t.equal(err.code, '28P01')
  t.match(err.message, /pg-vault-proxy: the upstream server refused the login as "scram_user"/)
  t.notMatch(proxy.logText(), secret)
  t.notMatch(proxy.logText(), cluster.users.scram.password)
})

void t.test('an unreachable upstream: 08001 naming host and port', async (t) => {
  const proxy = await startProxy(t, cluster, { upstream: { port: 1 } })
  const err = (await proxy.client().catch((e: unknown) => e)) as Record<string, string>
  t.equal(err.code, '08001')
  t.match(err.message, 'could not connect to the upstream server at 127.0.0.1:1: connection refused')
})

void t.test('upstream over a Unix socket', async (t) => {
  const proxy = await startProxy(t, cluster, { upstream: { host: cluster.socketDir } })
  const client = await proxy.client()
  t.equal((await client.query<{ u: string }>('select current_user as u')).rows[0]?.u, 'app_owner')
})

void t.test(
  'channel_binding require against the real server: SCRAM-SHA-256-PLUS works; md5 and cert logins are refused',
  async (t) => {
    const proxy = await startProxy(t, cluster, { upstream: { sslmode: 'require', channel_binding: 'require' } })
    t.same(await sessionInfo(proxy), { user: 'scram_user', current: 'app_owner', ssl: true })
    t.equal(authOfLastSession(proxy), 'SCRAM-SHA-256-PLUS')

    // The real server asks md5_user for an MD5 hash: no channel binding is possible, so libpq refuses.
    const md5 = await startProxy(t, cluster, {
      ...loginAs(cluster.users.md5),
      upstream: { sslmode: 'require', channel_binding: 'require' },
    })
    const md5Err = (await md5.client().catch((e: unknown) => e)) as Record<string, string>
    t.equal(md5Err.code, '08001')
    t.match(md5Err.message, /channel binding is required .* asked for MD5 password authentication/)

    // Certificate authentication ends in AuthenticationOk without any SASL exchange.
    const cert = await startProxy(t, cluster, {
      credentials: { static: { username: cluster.users.cert.user, password: '' } },
      upstream: {
        host: 'localhost',
        sslmode: 'verify-full',
        sslrootcert: cluster.tls.caFile,
        sslcert: cluster.tls.clientCertFile,
        sslkey: cluster.tls.clientKeyFile,
        channel_binding: 'require',
      },
    })
    const certErr = (await cert.client().catch((e: unknown) => e)) as Record<string, string>
    t.equal(certErr.code, '08001')
    t.match(certErr.message, /channel binding is required .* without any authentication exchange/)
  },
)
