import { createSign, generateKeyPairSync } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { clusterFor } from '../support/pg-cluster.js'
import { startProxy, type RunningProxy } from '../support/proxy-harness.js'
import { flavorUnderTest } from '../support/vault-flavor.js'
import { devOnly, eventually, vaultFor } from '../support/vault-target.js'

// Every way the proxy logs in to Vault, and what clients see when Vault cannot help.
const cluster = await clusterFor(t)
const vault = await vaultFor(t, cluster, { flavor: flavorUnderTest() })
t.comment(`dev Vault flavor: ${vault.dev?.flavor ?? 'a real Vault'}`)
const db = await vault.database()
await db.createDynamicRole({ name: 'app', defaultTtl: 60, maxTtl: 300 })
const dir = await mkdtemp(join(tmpdir(), 'pgvp-auth-'))
t.teardown(() => rm(dir, { recursive: true, force: true }))
const policyText = [
  `path "${db.mount}/creds/app" { capabilities = ["read"] }`,
  'path "sys/leases/renew" { capabilities = ["update"] }',
  'path "sys/leases/revoke" { capabilities = ["update"] }',
].join('\n')
const policy = await vault.policy('proxy', policyText)
const credentials = { vault: { mount: db.mount, role: 'app' } }

const connect = (proxy: RunningProxy): Promise<{ current: string; session: string }> => proxy.whoAmI()
const failure = (proxy: RunningProxy): Promise<Record<string, string>> =>
  connect(proxy).then(
    () => ({}),
    (e: Record<string, string>) => e,
  )

async function secretFile(name: string, content: string): Promise<string> {
  const file = join(dir, name)
  await writeFile(file, content, { mode: 0o600 })
  return file
}

async function childToken(policies: string[], extra: Record<string, unknown> = {}): Promise<string> {
  const reply = await vault.call('POST', 'auth/token/create', { policies, ...extra })
  return (reply.json as { auth: { client_token: string } }).auth.client_token
}

function signJwt(privateKey: string, claims: Record<string, unknown>): string {
  const encode = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url')
  const body = `${encode({ alg: 'RS256', typ: 'JWT' })}.${encode(claims)}`
  return `${body}.${createSign('RSA-SHA256').update(body).sign(privateKey).toString('base64url')}`
}

void t.test('AppRole: logs in, renews its token at 2/3 of the TTL, logs in again at max TTL', async (t) => {
  const approle = await vault.approle('proxy-approle', policyText, { tokenTtl: 2, tokenMaxTtl: 5 })
  const proxy = await startProxy(t, cluster, {
    vault: {
      address: vault.address,
      auth: {
        method: 'approle',
        mount: approle.mount,
        role_id: approle.roleId,
        secret_id_file: await secretFile('secret-id', approle.secretId),
      },
    },
    credentials,
  })
  let failures = 0
  const until = Date.now() + 8_000
  while (Date.now() < until) {
    await connect(proxy).then(
      (r) => void (r.current === 'app_owner' || failures++),
      (err: Error) => {
        failures++
        t.comment(`${new Date().toISOString()} connection failed: ${err.message}`)
      },
    )
    await new Promise((r) => setTimeout(r, 200))
  }
  t.equal(failures, 0, 'no connection failed')
  t.ok(proxy.logs.filter((l) => l.msg === 'logged in to Vault').length >= 2, 'logged in again')
  t.ok(
    proxy.logs.some((l) => l.msg === 'renewed the Vault token'),
    'renewed the token',
  )
  t.notMatch(proxy.logText(), approle.secretId)
})

void t.test(
  'a login token that dies early (num_uses spent: Vault revokes it and its leases) is replaced at the next Vault call',
  async (t) => {
    // Vault >= 1.17 answers the dead token's next call with "invalid token"; Vault <= 1.16 and
    // OpenBao with a bare "permission denied", which the proxy must check with lookup-self.
    const usesPolicy = `${policyText}\npath "${db.mount}/creds/short-uses" { capabilities = ["read"] }`
    const approle = await vault.approle('proxy-uses', usesPolicy, { tokenTtl: 3600, tokenMaxTtl: 3600 })
    // Two uses: the first credential, then its first renewal, which spends the token.
    await vault.call('POST', `auth/${approle.mount}/role/proxy-uses`, { token_num_uses: 2 })
    await db.createDynamicRole({ name: 'short-uses', defaultTtl: 4, maxTtl: 60 })
    const proxy = await startProxy(t, cluster, {
      vault: {
        address: vault.address,
        auth: {
          method: 'approle',
          mount: approle.mount,
          role_id: approle.roleId,
          secret_id_file: await secretFile('secret-id-uses', approle.secretId),
        },
      },
      credentials: { vault: { mount: db.mount, role: 'short-uses' } },
    })
    const first = await connect(proxy)
    t.equal(first.current, 'app_owner')
    // The renewal at about 2 s spends the token; its lease is revoked and its user dropped.
    const dropped = await eventually(
      15,
      async () => (await cluster.query('select 1 from pg_roles where rolname = $1', [first.session])).length === 0,
    )
    t.ok(dropped, "the spent token's lease was revoked")
    // Without a new login the proxy would get 403s until its token renewal, 40 minutes away.
    const back = await eventually(15, () =>
      connect(proxy).then(
        (r) => r.current === 'app_owner' && r.session !== first.session,
        () => false,
      ),
    )
    t.ok(back, 'a client gets in again on a credential of a new token')
    t.ok(proxy.logs.filter((l) => l.msg === 'logged in to Vault').length >= 2, 'logged in again')
    t.notMatch(proxy.logText(), approle.secretId)
  },
)

void t.test('an 8760 h AppRole token (longer than a Node timer) is not renewed in a loop', async (t) => {
  const approle = await vault.approle('proxy-long', policyText, { tokenTtl: '8760h', tokenMaxTtl: '8760h' })
  const proxy = await startProxy(t, cluster, {
    vault: {
      address: vault.address,
      auth: {
        method: 'approle',
        mount: approle.mount,
        role_id: approle.roleId,
        secret_id_file: await secretFile('secret-id-long', approle.secretId),
      },
    },
    credentials,
  })
  t.equal((await connect(proxy)).current, 'app_owner')
  await new Promise((r) => setTimeout(r, 2_000))
  const login = proxy.logs.find((l) => l.msg === 'logged in to Vault')
  t.ok(
    Number(login?.ttlSeconds) * 1000 > 2 ** 31 - 1,
    `the token's TTL (${String(login?.ttlSeconds)} s) exceeds 2^31-1 ms`,
  )
  const renewals = proxy.logs.filter((l) => /Vault token/.test(String(l.msg)) && /renew/.test(String(l.msg)))
  t.equal(renewals.length, 0, 'no renew-self in 2 s (it was 664 before)')
  t.equal(proxy.logs.filter((l) => l.msg === 'logged in to Vault').length, 1, 'one login')
})

void t.test('a renewable token given directly is renewed at 2/3 of its TTL and outlives it', async (t) => {
  const token = await childToken([policy], { ttl: '3s', explicit_max_ttl: '60s' })
  const proxy = await startProxy(t, cluster, {
    vault: { address: vault.address, auth: { method: 'token', token } },
    credentials,
  })
  t.equal((await connect(proxy)).current, 'app_owner')
  await new Promise((r) => setTimeout(r, 5_000))
  t.ok(
    proxy.logs.some((l) => l.msg === 'renewed the Vault token'),
    'renewed',
  )
  const lookup = await vault.request('GET', 'auth/token/lookup-self', { token })
  t.equal(lookup.status, 200, 'the token is still valid after its first TTL')
  t.equal((await connect(proxy)).current, 'app_owner')
})

void t.test('token file (a Vault Agent sink): a new token written to the file is picked up', async (t) => {
  const first = await childToken([policy])
  const tokenFile = await secretFile('token', `${first}\n`)
  const proxy = await startProxy(t, cluster, {
    vault: { address: vault.address, auth: { method: 'token', token_file: tokenFile } },
    credentials,
  })
  const before = await connect(proxy)
  t.equal(before.current, 'app_owner')
  // Revoking the token revokes its leases too (the role is dropped); the agent writes a new token.
  await vault.call('POST', 'auth/token/revoke', { token: first })
  await writeFile(tokenFile, `${await childToken([policy])}\n`)
  const gone = await eventually(
    10,
    async () => (await cluster.query('select 1 from pg_roles where rolname = $1', [before.session])).length === 0,
  )
  t.ok(gone, "the revoked token's lease was revoked and its user dropped")
  const after = await connect(proxy)
  t.equal(after.current, 'app_owner')
  t.not(after.session, before.session)
  t.ok(proxy.logs.filter((l) => l.msg === 'read the Vault token file').length >= 2, 'the changed file was read again')
})

void t.test(
  'token file: a new token from the agent brings a lease of that token before the old one is revoked',
  async (t) => {
    const first = await childToken([policy])
    const tokenFile = await secretFile('token-ahead', `${first}\n`)
    const proxy = await startProxy(t, cluster, {
      vault: { address: vault.address, auth: { method: 'token', token_file: tokenFile } },
      credentials,
    })
    const before = await connect(proxy)
    // The agent writes a new token; the old one still lives (the agent revokes it later, or it expires).
    await writeFile(tokenFile, `${await childToken([policy])}\n`)
    const moved = await eventually(10, async () => {
      const r = await connect(proxy)
      return r.session !== before.session
    })
    t.ok(moved, 'new clients get a credential of the new token without any failure first')
    const after = await connect(proxy)
    await vault.call('POST', 'auth/token/revoke', { token: first })
    const gone = await eventually(
      10,
      async () => (await cluster.query('select 1 from pg_roles where rolname = $1', [before.session])).length === 0,
    )
    t.ok(gone, "the old token's lease died with it")
    t.same(await connect(proxy), after, 'clients are unaffected: they were already on the new lease')
  },
)

void t.test('Kubernetes: the service-account token file logs in (mount given explicitly)', async (t) => {
  const { publicKey, privateKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  })
  const mount = vault.name('k8s')
  await vault.call('POST', `sys/auth/${mount}`, { type: 'kubernetes' })
  await vault.call('POST', `auth/${mount}/config`, {
    kubernetes_host: 'https://kubernetes.default.svc',
    pem_keys: [publicKey],
  })
  await vault.call('POST', `auth/${mount}/role/proxy`, {
    bound_service_account_names: ['app'],
    bound_service_account_namespaces: ['prod'],
    token_policies: [policy],
    token_ttl: 60,
  })
  const now = Math.floor(Date.now() / 1000)
  const jwt = signJwt(privateKey, {
    iss: 'kubernetes/serviceaccount',
    sub: 'system:serviceaccount:prod:app',
    iat: now,
    exp: now + 600,
    'kubernetes.io': {
      namespace: 'prod',
      serviceaccount: { name: 'app', uid: '5b1f6d4c-1111-2222-3333-444455556666' },
    },
  })
  const proxy = await startProxy(t, cluster, {
    vault: {
      address: vault.address,
      auth: { method: 'kubernetes', role: 'proxy', mount, jwt_file: await secretFile('sa-token', jwt) },
    },
    credentials,
  })
  t.match(await connect(proxy), { current: 'app_owner', session: /^v-/ })
  t.ok(proxy.logs.some((l) => l.msg === 'logged in to Vault' && l.method === 'kubernetes'))
})

void t.test('JWT: a signed token with the right audience logs in', async (t) => {
  const { publicKey, privateKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  })
  const mount = vault.name('jwt')
  await vault.call('POST', `sys/auth/${mount}`, { type: 'jwt' })
  await vault.call('POST', `auth/${mount}/config`, { jwt_validation_pubkeys: [publicKey] })
  await vault.call('POST', `auth/${mount}/role/proxy`, {
    role_type: 'jwt',
    user_claim: 'sub',
    bound_audiences: ['pg-vault-proxy'],
    token_policies: [policy],
    token_ttl: 60,
  })
  const now = Math.floor(Date.now() / 1000)
  const jwt = signJwt(privateKey, { iss: 'ci', sub: 'deployer', aud: 'pg-vault-proxy', iat: now, exp: now + 600 })
  const proxy = await startProxy(t, cluster, {
    vault: {
      address: vault.address,
      auth: { method: 'jwt', role: 'proxy', mount, jwt_file: await secretFile('jwt', jwt) },
    },
    credentials,
  })
  t.equal((await connect(proxy)).current, 'app_owner')
})

void t.test('permission denied names the path and the fix', async (t) => {
  const narrow = await vault.policy('narrow', `path "${db.mount}/creds/other" { capabilities = ["read"] }`)
  const proxy = await startProxy(t, cluster, {
    vault: { address: vault.address, auth: { method: 'token', token: await childToken([narrow]) } },
    credentials,
  })
  const err = await failure(proxy)
  t.equal(err.code, '08001')
  t.match(
    err.message,
    `pg-vault-proxy could not obtain database credentials from Vault: Vault denied permission on ${db.mount}/creds/app`,
  )
  t.match(err.hint, `Grant the proxy's Vault policy access to ${db.mount}/creds/app`)
})

void t.test('sealed, then unsealed', { skip: devOnly('sealed switch') }, async (t) => {
  const proxy = await startProxy(
    t,
    cluster,
    {
      vault: { address: vault.address, auth: { method: 'token', token: await childToken([policy]) } },
      credentials,
    },
    { prefetchCredentials: false },
  )
  await vault.setFaults({ sealed: true })
  try {
    const err = await failure(proxy)
    t.equal(err.code, '08001')
    t.match(err.message, /Vault at http:\/\/127\.0\.0\.1:\d+ is sealed/)
  } finally {
    await vault.setFaults({ sealed: false })
  }
  t.equal((await connect(proxy)).current, 'app_owner', 'works again once unsealed')
})

void t.test(
  'Vault down: a cached credential keeps serving; without one, a clear error; then back',
  { skip: devOnly('refuse connections') },
  async (t) => {
    const token = await childToken([policy])
    const warm = await startProxy(t, cluster, {
      vault: { address: vault.address, auth: { method: 'token', token } },
      credentials,
    })
    const cold = await startProxy(
      t,
      cluster,
      { vault: { address: vault.address, auth: { method: 'token', token } }, credentials },
      { prefetchCredentials: false },
    )
    t.equal((await connect(warm)).current, 'app_owner')
    await vault.setFaults({ refuseConnections: true })
    try {
      t.equal((await connect(warm)).current, 'app_owner', 'the cached credential still serves')
      const err = await failure(cold)
      t.equal(err.code, '08001')
      t.match(err.message, /Vault is unreachable at http:\/\/127\.0\.0\.1:\d+: connection refused/)
      t.match(err.hint, 'Check vault.address')
      t.ok(
        cold.logs.some((l) => l.msg === 'Vault call failed; retrying'),
        'it retried before giving up',
      )
    } finally {
      await vault.setFaults({ refuseConnections: false })
    }
    t.equal((await connect(cold)).current, 'app_owner', 'works once Vault is back')
  },
)
