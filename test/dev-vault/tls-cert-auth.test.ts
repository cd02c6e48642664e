/**
 * The dev Vault over TLS, with a CA made at test time (test/support/test-ca.ts), and the cert auth
 * method: a role naming the CA, a login with the client certificate of the TLS connection through
 * raw HTTPS and node-vault, and the refusals (builtin/credential/cert/path_login.go).
 */
import { execFileSync } from 'node:child_process'
import https from 'node:https'
import nodeVault from 'node-vault'
import t from 'tap'
import type { FlavorName } from '../../dev-vault/flavor.js'
import { testCaFor } from '../support/test-ca.js'
import type { KeyPair } from '../support/test-ca.js'
import { devOnly, vaultFor } from '../support/vault-target.js'
import type { VaultTarget } from '../support/vault-target.js'

const ca = await testCaFor(t)
const TLS = devOnly('TLS with a test CA')

interface Reply {
  status: number
  json: {
    errors?: string[]
    auth?: { client_token: string; metadata: Record<string, string>; lease_duration: number; policies: string[] }
    data?: Record<string, unknown>
  }
}

/** One HTTPS request presenting `client` (or no certificate). */
function httpsCall(address: string, method: string, path: string, client?: KeyPair, body?: unknown): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const request = https.request(
      `${address}/v1/${path}`,
      { method, ca: ca.caCert, cert: client?.cert, key: client?.key, headers: { 'Content-Type': 'application/json' } },
      (response) => {
        let text = ''
        response.setEncoding('utf8')
        response.on('data', (chunk: string) => (text += chunk))
        response.on('end', () =>
          resolve({ status: response.statusCode ?? 0, json: (text ? JSON.parse(text) : {}) as Reply['json'] }),
        )
      },
    )
    request.on('error', reject)
    request.end(body === undefined ? undefined : JSON.stringify(body))
  })
}

/** The subject key identifier as `openssl x509 -ext subjectKeyIdentifier` prints it, in Vault's form. */
function opensslKeyId(pem: string): string {
  const out = execFileSync('openssl', ['x509', '-noout', '-ext', 'subjectKeyIdentifier'], { input: pem }).toString()
  // The last line holds the identifier, indented.
  return out.trim().split('\n').at(-1)!.trim().toLowerCase()
}

async function tlsVault(t: Parameters<typeof vaultFor>[0], flavor?: FlavorName): Promise<VaultTarget> {
  return vaultFor(t, undefined, { flavor, tls: { ...ca.server, ca: ca.caCert } })
}

async function certRole(vault: VaultTarget, name: string, extra: Record<string, unknown> = {}): Promise<void> {
  await vault.call('POST', `auth/cert/certs/${name}`, {
    certificate: ca.caCert,
    token_policies: ['cert-reader'],
    token_ttl: '20m',
    ...extra,
  })
}

void t.test(
  'over TLS: https address, the helpers and node-vault trust the test CA, others do not',
  { skip: TLS },
  async (t) => {
    const vault = await tlsVault(t)
    t.match(vault.address, /^https:\/\/127\.0\.0\.1:\d+$/)
    t.equal((await vault.call('GET', 'auth/token/lookup-self')).status, 200)
    const client = nodeVault({ endpoint: vault.address, token: vault.token, requestOptions: { ca: ca.caCert } })
    const health = (await client.health()) as { initialized: boolean }
    t.equal(health.initialized, true, 'node-vault with requestOptions.ca')
    const untrusting = await fetch(`${vault.address}/v1/sys/health`).then(
      () => 'connected',
      (err: Error) => String((err.cause as { code?: string } | undefined)?.code ?? err.message),
    )
    t.match(untrusting, /SELF_SIGNED|UNABLE_TO_VERIFY|unable to verify/i, 'a client without the CA refuses the server')
  },
)

void t.test('cert auth: a role with the CA, a login with the client certificate', { skip: TLS }, async (t) => {
  const vault = await tlsVault(t)
  await vault.enableAuth('cert', 'cert')
  await vault.policy('cert-reader', 'path "secret/*" { capabilities = ["read"] }')
  await certRole(vault, 'web', { display_name: 'web-clients' })
  const role = (await vault.call('GET', 'auth/cert/certs/web')).json as Reply['json']
  t.equal(role.data!.certificate, ca.caCert)
  t.equal(role.data!.display_name, 'web-clients')
  t.same(role.data!.token_policies, ['cert-reader'])

  const client = await ca.client('app-client')
  const login = await httpsCall(vault.address, 'POST', 'auth/cert/login', client, {})
  t.equal(login.status, 200)
  const auth = login.json.auth!
  t.same(auth.policies, ['cert-reader', 'default'])
  t.equal(auth.lease_duration, 1200)
  t.equal(auth.metadata.cert_name, 'web')
  t.equal(auth.metadata.common_name, 'app-client')
  t.match(auth.metadata.serial_number, /^\d+$/, 'the serial number in decimal')
  t.match(auth.metadata.subject_key_id, /^[0-9a-f]{2}(:[0-9a-f]{2}){19}$/, 'hex pairs joined with ":"')
  t.match(auth.metadata.authority_key_id, /^[0-9a-f]{2}(:[0-9a-f]{2}){19}$/)
  t.equal(auth.metadata.authority_key_id, opensslKeyId(ca.caCert), 'the CA’s key id, as openssl reads it')
  t.equal(auth.metadata.subject_key_id, opensslKeyId(client.cert))
  const lookup = await vault.request('GET', 'auth/token/lookup-self', { token: auth.client_token })
  t.equal((lookup.json as Reply['json']).data!.display_name, 'cert-web-clients')
  t.equal((lookup.json as Reply['json']).data!.path, 'auth/cert/login')

  const renewed = await vault.request('POST', 'auth/token/renew-self', { token: auth.client_token })
  t.equal(renewed.status, 200, 'the token renews while the role stands')

  const viaNodeVault = nodeVault({
    endpoint: vault.address,
    requestOptions: { ca: ca.caCert, cert: client.cert, key: client.key },
  })
  // node-vault 0.12's certLogin throws before sending (its request schema has no properties), so
  // the login goes through write(), which the proxy would use too.
  const loggedIn = (await viaNodeVault.write('auth/cert/login', { name: 'web' })) as { auth: { client_token: string } }
  t.match(loggedIn.auth.client_token, /^hvs\./)
  viaNodeVault.token = loggedIn.auth.client_token
  const self = (await viaNodeVault.tokenLookupSelf()) as { data: { meta: Record<string, string> } }
  t.equal(self.data.meta.common_name, 'app-client')
})

void t.test('cert auth refusals', { skip: TLS }, async (t) => {
  const vault = await tlsVault(t)
  await vault.enableAuth('cert', 'cert')
  await certRole(vault, 'only-db', { allowed_common_names: ['db-*'] })
  const client = await ca.client('app-client')

  const noCert = await httpsCall(vault.address, 'POST', 'auth/cert/login')
  t.same([noCert.status, noCert.json], [400, { errors: ['client certificate must be supplied'] }])
  const untrusted = await httpsCall(vault.address, 'POST', 'auth/cert/login', await ca.untrustedClient('app-client'))
  t.same(
    [untrusted.status, untrusted.json],
    [400, { errors: ['invalid certificate or no client certificate supplied'] }],
  )
  const wrongName = await httpsCall(vault.address, 'POST', 'auth/cert/login', client)
  t.same(wrongName.json, { errors: ['no chain matching all constraints could be found for this login certificate'] })
  const dbClient = await ca.client('db-migrations')
  t.equal((await httpsCall(vault.address, 'POST', 'auth/cert/login', dbClient)).status, 200, 'db-* matches')
  const otherRole = await httpsCall(vault.address, 'POST', 'auth/cert/login', dbClient, { name: 'nothing' })
  t.same(otherRole.json, { errors: ['invalid certificate or no client certificate supplied'] }, 'name limits the roles')

  const missing = await vault.request('POST', 'auth/cert/certs/empty', { body: {} })
  t.same(missing.json, { errors: ['missing certificate'] })
  const garbage = await vault.request('POST', 'auth/cert/certs/bad', { body: { certificate: 'not a PEM' } })
  t.same(garbage.json, { errors: ['failed to parse certificate'] })
})

void t.test('cert login without TLS, and OpenBao’s text', { skip: TLS }, async (t) => {
  const plain = await vaultFor(t)
  await plain.enableAuth('cert', 'cert')
  await certRole(plain, 'web')
  const noTls = await plain.request('POST', 'auth/cert/login', { token: null, body: {} })
  t.same([noTls.status, noTls.json], [400, { errors: ['tls connection required'] }])

  const bao = await tlsVault(t, 'openbao')
  await bao.enableAuth('cert', 'cert')
  await certRole(bao, 'web')
  const noCert = await httpsCall(bao.address, 'POST', 'auth/cert/login')
  t.same(noCert.json, { errors: ['no client certificate found'] })
})
