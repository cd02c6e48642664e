/**
 * Tokens and ACL policies (vault/token_store.go, vault/policy.go, vault/request_handling.go): auth/token/create with a narrow
 * policy, the auth block, lookup-self, renew-self within and beyond max TTL, expiry, revocation,
 * and path-level permission denial with globs, `+` segments and deny.
 */
import t from 'tap'
import { eventually, vaultFor } from '../support/vault-target.js'
import type { VaultTarget } from '../support/vault-target.js'

interface Auth {
  client_token: string
  accessor: string
  policies: string[]
  token_policies: string[]
  metadata: Record<string, string> | null
  lease_duration: number
  renewable: boolean
  entity_id: string
  token_type: string
  orphan: boolean
  mfa_requirement: null
  num_uses: number
}

interface Envelope {
  data: Record<string, unknown> | null
  warnings: string[] | null
  auth: Auth | null
  lease_duration: number
  mount_type: string
}

async function createToken(vault: VaultTarget, body: Record<string, unknown>, token?: string): Promise<Envelope> {
  const reply = await vault.request('POST', 'auth/token/create', { body, token })
  if (reply.status !== 200) throw new Error(`token create: ${reply.status} ${reply.text}`)
  return reply.json as Envelope
}

const DENIED = { errors: ['1 error occurred:\n\t* permission denied\n\n'] }

void t.test(
  'auth/token/create: the auth block in Vault order, default policy added, a warning for a missing policy',
  async (t) => {
    const vault = await vaultFor(t)
    const reader = await vault.policy('reader', 'path "secret/data/app/*" { capabilities = ["read"] }')
    const created = await createToken(vault, {
      policies: [reader],
      ttl: '1h',
      display_name: 'ci job',
      meta: { team: 'db' },
    })
    t.equal(created.mount_type, 'token')
    t.equal(created.data, null)
    t.equal(created.lease_duration, 0, 'the token is in auth, not a lease of the response')
    t.equal(created.warnings, null)
    const auth = created.auth!
    t.same(Object.keys(auth), [
      'client_token',
      'accessor',
      'policies',
      'token_policies',
      'metadata',
      'lease_duration',
      'renewable',
      'entity_id',
      'token_type',
      'orphan',
      'mfa_requirement',
      'num_uses',
    ])
    t.match(auth.client_token, /^hvs\./)
    t.same(auth.policies, ['default', reader].sort())
    t.same(auth.token_policies, auth.policies)
    t.same(auth.metadata, { team: 'db' })
    t.same(
      {
        lease_duration: auth.lease_duration,
        renewable: auth.renewable,
        token_type: auth.token_type,
        orphan: auth.orphan,
        num_uses: auth.num_uses,
      },
      { lease_duration: 3600, renewable: true, token_type: 'service', orphan: false, num_uses: 0 },
    )

    const self = (await vault.request('GET', 'auth/token/lookup-self', { token: auth.client_token })).json as Envelope
    const data = self.data!
    t.same(
      {
        display_name: data.display_name,
        path: data.path,
        policies: data.policies,
        creation_ttl: data.creation_ttl,
        renewable: data.renewable,
        orphan: data.orphan,
      },
      {
        display_name: 'token-ci-job',
        path: 'auth/token/create',
        policies: auth.policies,
        creation_ttl: 3600,
        renewable: true,
        orphan: false,
      },
    )
    t.ok((data.ttl as number) > 3590 && (data.ttl as number) <= 3600)
    t.type(data.issue_time, 'string')
    t.type(data.expire_time, 'string')

    const withMissing = await createToken(vault, { policies: [vault.name('no-such-policy')], ttl: '1m' })
    t.same(withMissing.warnings, [`Policy "${vault.name('no-such-policy')}" does not exist`])
  },
)

void t.test(
  'a narrow policy: allowed paths work, others answer 403 "1 error occurred: permission denied"',
  async (t) => {
    const vault = await vaultFor(t)
    const kv = await vault.enableSecrets('acl-kv', { type: 'kv', options: { version: '2' } })
    for (const key of ['app/one', 'app/deep/two', 'team/a/config', 'team/b/config', 'app/secret-admin']) {
      await vault.call('POST', `${kv}/data/${key}`, { data: { key } })
    }
    const policy = await vault.policy(
      'acl-narrow',
      `
# reads below app/, by glob
path "${kv}/data/app/*" { capabilities = ["read"] }
# but never this one: deny beats the glob
path "${kv}/data/app/secret-admin" { capabilities = ["deny"] }
# one config per team, by segment wildcard
path "${kv}/data/team/+/config" { capabilities = ["read"] }
path "${kv}/metadata/app/" { capabilities = ["list"] }
`,
    )
    const token = (await createToken(vault, { policies: [policy], ttl: '10m' })).auth!.client_token
    const status = async (method: string, path: string, body?: unknown) =>
      (await vault.request(method, path, { token, body })).status

    t.equal(await status('GET', `${kv}/data/app/one`), 200)
    t.equal(await status('GET', `${kv}/data/app/deep/two`), 200, 'a * glob spans segments')
    t.equal(await status('GET', `${kv}/data/team/a/config`), 200, '+ matches one segment')
    t.equal(await status('LIST', `${kv}/metadata/app`), 200, 'list is checked against the path with a trailing slash')
    const denied = await vault.request('GET', `${kv}/data/app/secret-admin`, { token })
    t.equal(denied.status, 403)
    t.same(denied.json, DENIED, 'deny wins over a matching glob')
    t.same(
      (await vault.request('GET', `${kv}/data/team/a/b/config`, { token })).json,
      DENIED,
      '+ does not span segments',
    )
    t.same(
      (await vault.request('POST', `${kv}/data/app/one`, { token, body: { data: {} } })).json,
      DENIED,
      'read does not allow writes',
    )
    t.same((await vault.request('GET', 'sys/mounts', { token })).json, DENIED)
    t.equal(await status('GET', 'auth/token/lookup-self'), 200, 'the default policy lets a token look itself up')
  },
)

void t.test('create vs update: a write to a new key needs create, to an existing one update', async (t) => {
  const vault = await vaultFor(t)
  const kv = await vault.enableSecrets('acl-create', { type: 'kv', options: { version: '2' } })
  await vault.call('POST', `${kv}/data/existing`, { data: { v: 1 } })
  const createOnly = await vault.policy('acl-create-only', `path "${kv}/data/*" { capabilities = ["create"] }`)
  const token = (await createToken(vault, { policies: [createOnly], ttl: '10m' })).auth!.client_token
  t.equal((await vault.request('POST', `${kv}/data/fresh`, { token, body: { data: { v: 1 } } })).status, 200)
  t.same((await vault.request('POST', `${kv}/data/existing`, { token, body: { data: { v: 2 } } })).json, DENIED)
})

void t.test(
  'child tokens: policies must be a subset of the parent; revoking the parent revokes the child',
  async (t) => {
    const vault = await vaultFor(t)
    const a = await vault.policy('child-a', 'path "a/*" { capabilities = ["read"] }')
    const b = await vault.policy('child-b', 'path "b/*" { capabilities = ["read"] }')
    const maker = await vault.policy('child-maker', 'path "auth/token/create" { capabilities = ["update"] }')
    const parent = (await createToken(vault, { policies: [a, maker], ttl: '10m' })).auth!.client_token
    const outside = await vault.request('POST', 'auth/token/create', { token: parent, body: { policies: [b] } })
    t.equal(outside.status, 400)
    t.same(outside.json, { errors: ['child policies must be subset of parent'] })
    const child = (await createToken(vault, { policies: [a], ttl: '5m' }, parent)).auth!
    t.same(child.policies, ['default', a].sort())
    t.equal((await vault.request('POST', 'auth/token/revoke-self', { token: parent, body: {} })).status, 204)
    t.equal(
      (await vault.request('GET', 'auth/token/lookup-self', { token: child.client_token })).status,
      403,
      'the child went with the parent',
    )
  },
)

void t.test(
  'renew-self: within max TTL, capped beyond it with the warning; root and non-renewable tokens refuse',
  async (t) => {
    const vault = await vaultFor(t)
    const token = (await createToken(vault, { policies: ['default'], ttl: '60s', explicit_max_ttl: '90s' })).auth!
      .client_token
    const within = (await vault.request('POST', 'auth/token/renew-self', { token, body: { increment: '30s' } }))
      .json as Envelope
    t.same(
      { token: within.auth!.client_token, lease_duration: within.auth!.lease_duration, warnings: within.warnings },
      { token, lease_duration: 30, warnings: null },
    )

    const capped = (await vault.request('POST', 'auth/token/renew-self', { token, body: { increment: 120 } }))
      .json as Envelope
    const left = capped.auth!.lease_duration
    t.ok(left <= 90 && left >= 88, `capped at what is left of explicit_max_ttl: ${left}`)
    t.same(capped.warnings, [
      `TTL of "2m" exceeded the effective max_ttl of "1m${left - 60}s"; TTL value is capped accordingly`,
    ])

    const root = await vault.request('POST', 'auth/token/renew-self', { body: {} })
    t.equal(root.status, 400)
    t.same(root.json, { errors: ['invalid lease ID'] }, 'a non-expiring token has no lease to renew')

    const fixed = (await createToken(vault, { policies: ['default'], ttl: '60s', renewable: false })).auth!
    t.equal(fixed.renewable, false)
    const notRenewable = await vault.request('POST', 'auth/token/renew-self', { token: fixed.client_token, body: {} })
    t.equal(notRenewable.status, 400)
    t.same(notRenewable.json, { errors: ['lease is not renewable'] })
  },
)

void t.test('an expired token is an invalid token; a revoked one too', async (t) => {
  const vault = await vaultFor(t)
  const short = (await createToken(vault, { policies: ['default'], ttl: '1s' })).auth!.client_token
  t.equal((await vault.request('GET', 'auth/token/lookup-self', { token: short })).status, 200)
  const expired = await eventually(
    5,
    async () => (await vault.request('GET', 'auth/token/lookup-self', { token: short })).status === 403,
  )
  t.ok(expired, 'refused once its TTL is over')
  t.same((await vault.request('GET', 'auth/token/lookup-self', { token: short })).json, {
    errors: ['2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n'],
  })

  const other = (await createToken(vault, { policies: ['default'], ttl: '1h' })).auth!.client_token
  t.equal((await vault.request('POST', 'auth/token/revoke', { body: { token: other } })).status, 204)
  t.equal((await vault.request('GET', 'auth/token/lookup-self', { token: other })).status, 403)
})

void t.test('num_uses: a limited-use token answers that many requests, then is revoked', async (t) => {
  const vault = await vaultFor(t)
  const token = (await createToken(vault, { policies: ['default'], ttl: '1h', num_uses: 2 })).auth!.client_token
  t.equal((await vault.request('GET', 'auth/token/lookup-self', { token })).status, 200)
  t.equal((await vault.request('GET', 'auth/token/lookup-self', { token })).status, 200)
  t.equal((await vault.request('GET', 'auth/token/lookup-self', { token })).status, 403, 'the third use is refused')
})

void t.test('policies: read shape, missing is 404, default cannot be deleted, bad HCL is refused', async (t) => {
  const vault = await vaultFor(t)
  const text = 'path "secret/data/x" {\n  capabilities = ["read", "list"]\n}\n'
  const name = await vault.policy('shape', text)
  const read = (await vault.call('GET', `sys/policies/acl/${name}`)).json as Envelope
  t.equal(read.data!.name, name)
  t.equal(read.data!.policy, text)
  t.equal(read.mount_type, 'system')
  const missing = await vault.request('GET', `sys/policies/acl/${vault.name('missing-policy')}`)
  t.equal(missing.status, 404)
  t.equal(missing.text, '{"errors":[]}\n')
  const deleteDefault = await vault.request('DELETE', 'sys/policies/acl/default')
  t.equal(deleteDefault.status, 400)
  t.same(deleteDefault.json, { errors: ['cannot delete default policy'] })
  const bad = await vault.request('PUT', `sys/policies/acl/${vault.name('bad')}`, {
    body: { policy: 'path "x" { capabilities = ' },
  })
  t.equal(bad.status, 400)
  t.match((bad.json as { errors: string[] }).errors[0], /^failed to parse policy: /)
})
