import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { clusterFor } from '../support/pg-cluster.js'
import { startProxy, type RunningProxy } from '../support/proxy-harness.js'
import { testCaFor } from '../support/test-ca.js'
import { devOnly, vaultFor, type VaultTarget } from '../support/vault-target.js'

// What real Vault servers do that a bare dev server does not: batch tokens, rate-limit quotas,
// agent listeners that require X-Vault-Request, standbys, TLS. Each against a dev Vault set up so.
const cluster = await clusterFor(t)
const dir = await mkdtemp(join(tmpdir(), 'pgvp-servers-'))
t.teardown(() => rm(dir, { recursive: true, force: true }))

const connect = (proxy: RunningProxy): Promise<{ current: string; session: string }> => proxy.whoAmI()
const failure = (proxy: RunningProxy): Promise<Record<string, string>> =>
  connect(proxy).then(
    () => ({}),
    (e: Record<string, string>) => e,
  )

async function setUp(vault: VaultTarget, role = 'app'): Promise<{ mount: string; policyText: string }> {
  const db = await vault.database()
  await db.createDynamicRole({ name: role, defaultTtl: 60, maxTtl: 300 })
  const policyText = [
    `path "${db.mount}/creds/${role}" { capabilities = ["read"] }`,
    'path "sys/leases/renew" { capabilities = ["update"] }',
    'path "sys/leases/revoke" { capabilities = ["update"] }',
  ].join('\n')
  return { mount: db.mount, policyText }
}

async function childToken(vault: VaultTarget, policy: string): Promise<string> {
  const reply = await vault.call('POST', 'auth/token/create', { policies: [policy] })
  return (reply.json as { auth: { client_token: string } }).auth.client_token
}

void t.test(
  'batch tokens: never renewed; a new login before the token ends, and no credential churn',
  { skip: devOnly('short batch tokens') },
  async (t) => {
    const vault = await vaultFor(t, cluster)
    const { mount, policyText } = await setUp(vault)
    const approle = await vault.approle('proxy-batch', policyText, { tokenTtl: 6, tokenMaxTtl: 6 })
    await vault.call('POST', `auth/${approle.mount}/role/proxy-batch`, { token_type: 'batch' })
    const secretIdFile = join(dir, 'secret-id-batch')
    await writeFile(secretIdFile, approle.secretId, { mode: 0o600 })
    const proxy = await startProxy(t, cluster, {
      vault: {
        address: vault.address,
        auth: { method: 'approle', mount: approle.mount, role_id: approle.roleId, secret_id_file: secretIdFile },
      },
      credentials: { vault: { mount, role: 'app' } },
    })
    let failures = 0
    const until = Date.now() + 13_000
    while (Date.now() < until) {
      await connect(proxy).then(
        (r) => void (r.current === 'app_owner' || failures++),
        (err: Error) => {
          failures++
          t.comment(`${new Date().toISOString()} connection failed: ${err.message}`)
        },
      )
      await new Promise((r) => setTimeout(r, 250))
    }
    t.equal(failures, 0, 'no connection failed across two token lifetimes')
    const logins = proxy.logs.filter((l) => l.msg === 'logged in to Vault')
    t.equal(logins[0]?.renewable, false, 'Vault issued a token that cannot be renewed')
    t.ok(logins.length >= 3, `logged in again at 2/3 of each token's TTL (${logins.length} logins)`)
    t.equal(
      proxy.logs.filter((l) => /renew the Vault token|renewed the Vault token/.test(String(l.msg))).length,
      0,
      'renew-self never called (it fails with "batch tokens cannot be renewed")',
    )
    t.same(
      proxy.logs.filter((l) => l.msg === 'upstream refused the credential'),
      [],
      "each new token's lease was in use before the old token (and its lease) ended: none was found revoked at login",
    )
    const issued = proxy.logs.filter((l) => l.msg === 'issued a database credential').length
    t.ok(issued <= logins.length + 1, `one credential per token, not more (${issued} for ${logins.length} tokens)`)
  },
)

void t.test('a Vault Agent listener that requires X-Vault-Request', { skip: devOnly('agent mode') }, async (t) => {
  const vault = await vaultFor(t, cluster, { requireRequestHeader: true })
  const { mount, policyText } = await setUp(vault)
  const bare = await fetch(`${vault.address}/v1/auth/token/lookup-self`, { headers: { 'X-Vault-Token': vault.token } })
  t.equal(bare.status, 412, 'a request without the header is refused')
  const policy = await vault.policy('proxy', policyText)
  const proxy = await startProxy(t, cluster, {
    vault: { address: vault.address, auth: { method: 'token', token: await childToken(vault, policy) } },
    credentials: { vault: { mount, role: 'app' } },
  })
  t.equal((await connect(proxy)).current, 'app_owner', 'the proxy sends it')
})

void t.test('a rate-limit quota: the proxy waits as Retry-After asks', { skip: devOnly('quotas') }, async (t) => {
  const vault = await vaultFor(t, cluster)
  const { mount, policyText } = await setUp(vault)
  const policy = await vault.policy('proxy', policyText)
  const token = await childToken(vault, policy)
  await vault.call('POST', 'sys/quotas/config', { enable_rate_limit_response_headers: true })
  await vault.call('POST', 'sys/quotas/rate-limit/creds', { path: `${mount}/creds`, rate: 1, interval: '3s' })
  // This read spends the window (quotas count per client address, and the proxy is on this host).
  await vault.call('GET', `${mount}/creds/app`)
  const proxy = await startProxy(
    t,
    cluster,
    {
      vault: { address: vault.address, auth: { method: 'token', token } },
      credentials: { vault: { mount, role: 'app' } },
    },
    { prefetchCredentials: false },
  )
  t.equal((await connect(proxy)).current, 'app_owner', 'the client got in once the window passed')
  const retries = proxy.logs.filter((l) => l.msg === 'Vault call failed; retrying')
  t.ok(retries.length >= 1, 'the proxy was rate-limited')
  t.match(retries[0], { err: /rate limit quota exceeded/ })
  t.ok(Number(retries[0]?.delayMs) >= 1_000, `it waited as asked (${String(retries[0]?.delayMs)} ms)`)
})

void t.test('a standby that redirects elsewhere, or knows no active node', { skip: devOnly('standby') }, async (t) => {
  const vault = await vaultFor(t, cluster)
  const active = await vaultFor(t, cluster)
  const { mount, policyText } = await setUp(vault)
  const policy = await vault.policy('proxy', policyText)
  const proxy = await startProxy(
    t,
    cluster,
    {
      vault: { address: vault.address, auth: { method: 'token', token: await childToken(vault, policy) } },
      credentials: { vault: { mount, role: 'app' } },
    },
    { prefetchCredentials: false },
  )
  await vault.setFaults({ standby: true, standbyForwarding: false, activeAddress: active.address })
  const redirected = await failure(proxy)
  t.equal(redirected.code, '08001')
  t.match(redirected.message, `Vault redirected to ${active.address}, which vault.address does not name`)
  t.match(redirected.hint, 'Point vault.address at the active Vault node')
  await vault.setFaults({ activeAddress: '' })
  const noActive = await failure(proxy)
  t.equal(noActive.code, '08001')
  t.match(noActive.message, /no active Vault instance found/)
  t.ok(
    proxy.logs.some((l) => l.msg === 'Vault call failed; retrying'),
    'a 503 is retried',
  )
  await vault.setFaults({ standby: false })
  t.equal((await connect(proxy)).current, 'app_owner', 'works once the node is active')
})

void t.test(
  'TLS: vault.ca_cert trusts the dev Vault; without it, a clear error',
  { skip: devOnly('TLS') },
  async (t) => {
    const ca = await testCaFor(t)
    const vault = await vaultFor(t, cluster, { tls: { ...ca.server, ca: ca.caCert } })
    t.match(vault.address, /^https:/)
    const { mount, policyText } = await setUp(vault)
    const policy = await vault.policy('proxy', policyText)
    const caFile = join(dir, 'vault-ca.pem')
    await writeFile(caFile, ca.caCert)
    const client = await ca.client('pg-vault-proxy')
    const certFile = join(dir, 'client.pem')
    const keyFile = join(dir, 'client.key')
    await writeFile(certFile, client.cert)
    await writeFile(keyFile, client.key, { mode: 0o600 })
    const token = await childToken(vault, policy)
    const credentials = { vault: { mount, role: 'app' } }
    const trusted = await startProxy(t, cluster, {
      vault: {
        address: vault.address,
        ca_cert: caFile,
        client_cert: certFile,
        client_key: keyFile,
        auth: { method: 'token', token },
      },
      credentials,
    })
    t.equal((await connect(trusted)).current, 'app_owner')
    const untrusted = await startProxy(
      t,
      cluster,
      { vault: { address: vault.address, auth: { method: 'token', token } }, credentials },
      { prefetchCredentials: false },
    )
    const err = await failure(untrusted)
    t.equal(err.code, '08001')
    t.match(err.message, 'TLS certificate not trusted (set vault.ca_cert)')
  },
)
