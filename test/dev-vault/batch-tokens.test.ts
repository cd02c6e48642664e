/**
 * Batch tokens and non-renewable service tokens (vault/token_store.go handleCreateCommon,
 * handleRenew, handleRevokeSelf; vault/expiration.go Register and Renew; routing/router.go for
 * an auth mount's token_type): what they look like, what they refuse, and how leases created with
 * them end with them — down to the database user in PostgreSQL.
 */
import nodeVault from 'node-vault'
import t from 'tap'
import { clusterFor } from '../support/pg-cluster.js'
import { eventually, vaultFor } from '../support/vault-target.js'

const cluster = await clusterFor(t)

interface Auth {
  client_token: string
  accessor: string
  lease_duration: number
  renewable: boolean
  token_type: string
  orphan: boolean
}

interface Envelope {
  lease_id: string
  lease_duration: number
  renewable: boolean
  data: Record<string, unknown> | null
  warnings: string[] | null
  auth: Auth | null
}

async function userExists(user: string): Promise<boolean> {
  return (await cluster.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [user])).length > 0
}

void t.test(
  'a batch token: hvb., no accessor, not renewable, cannot be renewed, revoked or have children',
  async (t) => {
    const vault = await vaultFor(t)
    const policy = await vault.policy(
      'batch-read',
      'path "secret/*" { capabilities = ["read"] }\npath "auth/token/create" { capabilities = ["update"] }',
    )
    const created = (await vault.call('POST', 'auth/token/create', { type: 'batch', policies: [policy], ttl: '10m' }))
      .json as Envelope
    const auth = created.auth!
    t.match(auth.client_token, /^hvb\.[0-9A-Za-z]{100,}$/)
    t.same(
      { accessor: auth.accessor, renewable: auth.renewable, token_type: auth.token_type, orphan: auth.orphan },
      { accessor: '', renewable: false, token_type: 'batch', orphan: false },
    )
    t.equal(auth.lease_duration, 600)

    const token = auth.client_token
    const lookup = (await vault.request('GET', 'auth/token/lookup-self', { token })).json as Envelope
    t.same(
      { type: lookup.data!.type, renewable: lookup.data!.renewable, accessor: lookup.data!.accessor },
      { type: 'batch', renewable: false, accessor: '' },
    )
    t.ok((lookup.data!.ttl as number) > 590)

    const renew = await vault.request('POST', 'auth/token/renew-self', { token, body: { increment: '1h' } })
    t.equal(renew.status, 400)
    t.equal(renew.text, '{"errors":["batch tokens cannot be renewed"]}\n')
    const renewByRoot = await vault.request('POST', 'auth/token/renew', { body: { token } })
    t.same(renewByRoot.json, { errors: ['batch tokens cannot be renewed'] })

    const revoke = await vault.request('POST', 'auth/token/revoke-self', { token })
    t.equal(revoke.status, 400)
    t.same(revoke.json, { errors: ['batch tokens cannot be revoked'] })

    const child = await vault.request('POST', 'auth/token/create', { token, body: { policies: [policy] } })
    t.equal(child.status, 400)
    t.same(child.json, { errors: ['batch tokens cannot create more tokens'] })

    const client = nodeVault({ endpoint: vault.address, token })
    const err = await client.tokenRenewSelf().then(
      () => undefined,
      (e: unknown) => e as { message: string; response?: { statusCode: number } },
    )
    t.equal(err?.response?.statusCode, 400)
    t.equal(err?.message, 'batch tokens cannot be renewed', 'node-vault’s error message')
  },
)

void t.test('what a batch token may not have, and unknown types', async (t) => {
  const vault = await vaultFor(t)
  const cases: [Record<string, unknown>, string][] = [
    [{ type: 'batch', num_uses: 3 }, 'batch tokens cannot have "num_uses" set'],
    [{ type: 'batch', period: '1h' }, 'batch tokens cannot have "period" set'],
    [{ type: 'batch', explicit_max_ttl: '1h' }, 'batch tokens cannot have "explicit_max_ttl" set'],
    [{ type: 'batch' }, 'batch tokens cannot be root tokens'],
    [{ type: 'bulk' }, "invalid 'token_type' value"],
  ]
  for (const [body, message] of cases) {
    const reply = await vault.request('POST', 'auth/token/create', { body })
    t.equal(reply.status, 400, message)
    t.same(reply.json, { errors: [message] })
  }
})

void t.test('a non-renewable service token refuses renewal with "lease is not renewable"', async (t) => {
  const vault = await vaultFor(t)
  const created = (
    await vault.call('POST', 'auth/token/create', { renewable: false, ttl: '1h', policies: ['default'] })
  ).json as Envelope
  t.same([created.auth!.renewable, created.auth!.token_type], [false, 'service'])
  const token = created.auth!.client_token
  const lookup = (await vault.request('GET', 'auth/token/lookup-self', { token })).json as Envelope
  t.equal(lookup.data!.renewable, false)
  const renew = await vault.request('POST', 'auth/token/renew-self', { token })
  t.equal(renew.status, 400)
  t.same(renew.json, { errors: ['lease is not renewable'] })
})

void t.test('a lease created with a batch token ends when the token does: revoked, user dropped', async (t) => {
  const vault = await vaultFor(t, cluster)
  const db = await vault.database()
  await db.createDynamicRole({ name: 'batch-rw', defaultTtl: 60, maxTtl: 600 })
  const policy = await vault.policy(
    'batch-creds',
    `path "${db.mount}/creds/batch-rw" { capabilities = ["read"] }\npath "sys/leases/*" { capabilities = ["update"] }`,
  )
  const created = (
    await vault.call('POST', 'auth/token/create-orphan', { type: 'batch', policies: [policy], ttl: '3s' })
  ).json as Envelope
  t.equal(created.auth!.orphan, true)
  const token = created.auth!.client_token

  const creds = (await vault.request('GET', `${db.mount}/creds/batch-rw`, { token })).json as Envelope
  // expiration.go Register caps the lease's expiry, not the TTL the reply shows.
  t.equal(creds.lease_duration, 60, 'the reply shows the role’s TTL')
  const user = creds.data!.username as string
  t.ok(await userExists(user))
  const lookup = (await vault.call('PUT', 'sys/leases/lookup', { lease_id: creds.lease_id })).json as Envelope
  t.ok((lookup.data!.ttl as number) <= 3, `the lease itself ends with the token (ttl ${String(lookup.data!.ttl)})`)

  const renewed = (await vault.request('PUT', 'sys/leases/renew', { token, body: { lease_id: creds.lease_id } }))
    .json as Envelope
  t.ok(renewed.lease_duration <= 3, `a renewal is cut back to the token’s end (${renewed.lease_duration})`)

  t.ok(await eventually(10, async () => !(await userExists(user))), 'the reaper revoked it and dropped the user')
  const after = await vault.request('PUT', 'sys/leases/renew', { body: { lease_id: creds.lease_id } })
  t.same(after.json, { errors: ['lease not found'] })
})

void t.test('leases of a child batch token go with its parent', async (t) => {
  const vault = await vaultFor(t, cluster)
  const db = await vault.database()
  await db.createDynamicRole({ name: 'batch-rw', defaultTtl: 600, maxTtl: 600 })
  const policy = await vault.policy(
    'batch-parent',
    `path "${db.mount}/creds/*" { capabilities = ["read"] }\npath "auth/token/create" { capabilities = ["update"] }`,
  )
  const parent = ((await vault.call('POST', 'auth/token/create', { policies: [policy], ttl: '1h' })).json as Envelope)
    .auth!.client_token
  const child = (
    (await vault.request('POST', 'auth/token/create', { token: parent, body: { type: 'batch', ttl: '1h' } }))
      .json as Envelope
  ).auth!.client_token
  const creds = (await vault.request('GET', `${db.mount}/creds/batch-rw`, { token: child })).json as Envelope
  const user = creds.data!.username as string
  t.ok(await userExists(user))
  await vault.call('POST', 'auth/token/revoke', { token: parent })
  t.ok(await eventually(10, async () => !(await userExists(user))), 'revoking the parent dropped the user')
  t.equal((await vault.request('GET', 'auth/token/lookup-self', { token: child })).status, 403, 'and the child')
})

void t.test('AppRole token_type=batch, and the auth mount’s token_type', async (t) => {
  const vault = await vaultFor(t)
  const approle = await vault.approle('batch', 'path "secret/*" { capabilities = ["read"] }', {
    tokenTtl: '20m',
    tokenMaxTtl: '1h',
  })
  const role = `auth/${approle.mount}/role/batch`
  const login = async () =>
    (
      (
        await vault.call('POST', `auth/${approle.mount}/login`, {
          role_id: approle.roleId,
          secret_id: approle.secretId,
        })
      ).json as Envelope
    ).auth!

  t.equal((await login()).token_type, 'service', 'token_type default: service')
  await vault.call('POST', role, { token_type: 'batch' })
  t.equal(((await vault.call('GET', role)).json as Envelope).data!.token_type, 'batch')
  const batch = await login()
  t.same(
    { type: batch.token_type, renewable: batch.renewable, accessor: batch.accessor, ttl: batch.lease_duration },
    { type: 'batch', renewable: false, accessor: '', ttl: 1200 },
  )
  t.match(batch.client_token, /^hvb\./)
  const renew = await vault.request('POST', 'auth/token/renew-self', { token: batch.client_token })
  t.same(renew.json, { errors: ['batch tokens cannot be renewed'] })

  const periodic = await vault.request('POST', role, { body: { token_period: '1h' } })
  t.equal(periodic.status, 400)
  t.same(periodic.json, {
    errors: ["'token_type' cannot be 'batch' or 'default_batch' when set to generate periodic tokens"],
  })
  const bad = await vault.request('POST', role, { body: { token_type: 'bulk' } })
  t.same(bad.json, { errors: [`invalid 'token_type' value "bulk"`] })

  // The mount's setting: default-batch gives batch unless the role says service; batch forces it.
  await vault.call('POST', role, { token_type: 'default' })
  await vault.call('POST', `sys/auth/${approle.mount}/tune`, { token_type: 'default-batch' })
  t.equal((await login()).token_type, 'batch', 'default-batch mount, default role')
  await vault.call('POST', role, { token_type: 'service' })
  t.equal((await login()).token_type, 'service', 'default-batch mount, service role')
  await vault.call('POST', `sys/auth/${approle.mount}/tune`, { token_type: 'batch' })
  t.equal((await login()).token_type, 'batch', 'batch mount overrides the role')
  const tune = (await vault.call('GET', `sys/auth/${approle.mount}/tune`)).json as Envelope
  t.equal(tune.data!.token_type, 'batch')

  const onToken = await vault.request('POST', 'sys/auth/token/tune', { body: { token_type: 'batch' } })
  t.same(onToken.json, { errors: ["'token_type' cannot be set for 'token' or 'ns_token' auth mounts"] })
  const onSecrets = await vault.request('POST', 'sys/mounts/secret/tune', { body: { token_type: 'batch' } })
  t.same(onSecrets.json, { errors: ["'token_type' can only be modified on auth mounts"] })
  const invalid = await vault.request('POST', `sys/auth/${approle.mount}/tune`, { body: { token_type: 'bulk' } })
  t.same(invalid.json, { errors: ["invalid value for 'token_type'"] })
})
