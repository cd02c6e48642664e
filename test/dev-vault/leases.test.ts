/**
 * Leases on database creds (vault/expiration.go, sdk/framework/lease.go): renew within and beyond max TTL with Vault's
 * capping warning, renew errors, idempotent revoke, lookup, the reaper dropping the user at
 * expiry, and a token's expiry or revocation taking its leases with it.
 */
import pg from 'pg'
import t from 'tap'
import { clusterFor } from '../support/pg-cluster.js'
import { eventually, vaultFor } from '../support/vault-target.js'
import type { VaultTarget } from '../support/vault-target.js'

const cluster = await clusterFor(t)

interface Envelope {
  lease_id: string
  renewable: boolean
  lease_duration: number
  data: Record<string, unknown> | null
  warnings: string[] | null
  auth: { client_token: string } | null
  mount_type: string
}

interface Lease {
  leaseId: string
  username: string
  password: string
}

async function creds(vault: VaultTarget, mount: string, role: string, token?: string): Promise<Lease> {
  const reply = await vault.request('GET', `${mount}/creds/${role}`, { token })
  if (reply.status !== 200) throw new Error(`creds: ${reply.status} ${reply.text}`)
  const body = reply.json as Envelope
  const data = body.data as { username: string; password: string }
  return { leaseId: body.lease_id, username: data.username, password: data.password }
}

async function validUntil(user: string): Promise<number | undefined> {
  const rows = await cluster.query<{ rolvaliduntil: Date }>('SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1', [
    user,
  ])
  return rows[0]?.rolvaliduntil.getTime()
}

async function userExists(user: string): Promise<boolean> {
  return (await cluster.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [user])).length > 0
}

void t.test('renew within max TTL moves VALID UNTIL; beyond it the TTL is capped with a warning', async (t) => {
  const vault = await vaultFor(t, cluster)
  const db = await vault.database()
  await db.createDynamicRole({ name: 'app-rw', defaultTtl: 10, maxTtl: 30 })
  const lease = await creds(vault, db.mount, 'app-rw')

  const renewed = await vault.request('PUT', 'sys/leases/renew', { body: { lease_id: lease.leaseId, increment: 20 } })
  t.equal(renewed.status, 200)
  const body = renewed.json as Envelope
  t.same(
    {
      lease_id: body.lease_id,
      renewable: body.renewable,
      lease_duration: body.lease_duration,
      data: body.data,
      warnings: body.warnings,
    },
    { lease_id: lease.leaseId, renewable: true, lease_duration: 20, data: null, warnings: null },
  )
  t.equal(body.mount_type, 'system')
  const until = await validUntil(lease.username)
  t.ok(until !== undefined && Math.abs(until - (Date.now() + 25_000)) < 3000, 'VALID UNTIL ≈ now + increment + 5 s')

  const capped = (await vault.call('PUT', 'sys/leases/renew', { lease_id: lease.leaseId, increment: 3600 }))
    .json as Envelope
  t.ok(
    capped.lease_duration <= 30 && capped.lease_duration >= 27,
    `capped to what is left of max_ttl: ${capped.lease_duration}`,
  )
  t.same(capped.warnings, [
    `TTL of "1h" exceeded the effective max_ttl of "${capped.lease_duration}s"; TTL value is capped accordingly`,
  ])

  const byUrl = await vault.request('PUT', `sys/leases/renew/${lease.leaseId}`, { body: {} })
  t.equal(byUrl.status, 200, 'the lease id may be in the URL')
  t.equal((byUrl.json as Envelope).lease_duration, 10, 'no increment: the role default_ttl again')
})

void t.test('renew runs the custom renew_statements instead of ALTER ROLE … VALID UNTIL', async (t) => {
  const vault = await vaultFor(t, cluster)
  const db = await vault.database()
  await db.createDynamicRole({
    name: 'custom-renew',
    defaultTtl: 60,
    maxTtl: 600,
    renewStatements: [
      `ALTER ROLE "{{name}}" CONNECTION LIMIT 7; COMMENT ON ROLE "{{name}}" IS 'renewed until {{expiration}}'`,
    ],
  })
  const lease = await creds(vault, db.mount, 'custom-renew')
  const untilBefore = await validUntil(lease.username)
  await vault.call('PUT', 'sys/leases/renew', { lease_id: lease.leaseId, increment: 300 })
  const rows = await cluster.query<{ rolconnlimit: number; comment: string }>(
    `SELECT rolconnlimit, shobj_description(oid, 'pg_authid') AS comment FROM pg_roles WHERE rolname = $1`,
    [lease.username],
  )
  t.equal(rows[0]?.rolconnlimit, 7)
  t.match(rows[0]?.comment, /^renewed until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+0000$/, '{{expiration}} in Go layout')
  t.equal(await validUntil(lease.username), untilBefore, 'the default ALTER ROLE … VALID UNTIL did not run')
})

void t.test('a default_ttl above max_ttl is capped at creation with the humanDuration warning', async (t) => {
  const vault = await vaultFor(t, cluster)
  const db = await vault.database()
  await db.createDynamicRole({ name: 'long', defaultTtl: '1h', maxTtl: '1m' })
  const reply = (await vault.call('GET', `${db.mount}/creds/long`)).json as Envelope
  t.equal(reply.lease_duration, 60)
  t.same(reply.warnings, ['TTL of "1h" exceeded the effective max_ttl of "1m"; TTL value is capped accordingly'])
})

void t.test('renew errors: no lease_id, unknown lease, revoked lease', async (t) => {
  const vault = await vaultFor(t, cluster)
  const db = await vault.database()
  await db.createDynamicRole({ name: 'app-rw', defaultTtl: 60, maxTtl: 60 })
  const noId = await vault.request('PUT', 'sys/leases/renew', { body: {} })
  t.equal(noId.status, 400)
  t.same(noId.json, { errors: ['lease_id must be specified'] })
  const unknown = await vault.request('PUT', 'sys/leases/renew', {
    body: { lease_id: `${db.mount}/creds/app-rw/AAAAAAAAAAAAAAAAAAAAAAAA` },
  })
  t.equal(unknown.status, 400)
  t.same(unknown.json, { errors: ['lease not found'] })
  const lease = await creds(vault, db.mount, 'app-rw')
  await vault.call('PUT', 'sys/leases/revoke', { lease_id: lease.leaseId })
  const revoked = await vault.request('PUT', 'sys/leases/renew', { body: { lease_id: lease.leaseId } })
  t.same(revoked.json, { errors: ['lease not found'] })
})

void t.test(
  'revoke drops the user (terminating its sessions), is idempotent, and lookup then says invalid lease',
  async (t) => {
    const vault = await vaultFor(t, cluster)
    const db = await vault.database()
    await db.createDynamicRole({ name: 'app-rw', defaultTtl: 60, maxTtl: 60 })
    const lease = await creds(vault, db.mount, 'app-rw')
    const session = new pg.Client({
      host: cluster.host,
      port: cluster.port,
      database: cluster.database,
      user: lease.username,
      password: lease.password,
    })
    await session.connect()
    const ended = new Promise<Error>((resolve) => session.on('error', resolve))

    const revoked = await vault.request('PUT', 'sys/leases/revoke', { body: { lease_id: lease.leaseId } })
    t.equal(revoked.status, 204)
    t.equal(revoked.text, '')
    t.equal(await userExists(lease.username), false, 'the user is gone')
    t.match((await ended).message, /terminat/, 'its open session was terminated by the revocation statements')
    t.equal(
      (await vault.request('PUT', 'sys/leases/revoke', { body: { lease_id: lease.leaseId } })).status,
      204,
      'again: 204',
    )
    t.equal((await vault.request('PUT', `sys/leases/revoke/${lease.leaseId}`, { body: {} })).status, 204, 'by URL: 204')
    const lookup = await vault.request('PUT', 'sys/leases/lookup', { body: { lease_id: lease.leaseId } })
    t.equal(lookup.status, 400)
    t.same(lookup.json, { errors: ['invalid lease'] })
  },
)

void t.test("Vault's default revocation (no revocation_statements) revokes grants and drops the user", async (t) => {
  const vault = await vaultFor(t, cluster)
  const db = await vault.database()
  await db.createDynamicRole({ name: 'plain', defaultTtl: 60, maxTtl: 60, revocationStatements: [] })
  const lease = await creds(vault, db.mount, 'plain')
  // Owned by the owner role, which Vault's login is a member of, so Vault may revoke on it.
  const owner = pg.escapeIdentifier(cluster.ownerRole)
  await cluster.query(
    `SET ROLE ${owner}; CREATE TABLE default_revocation (id int); GRANT SELECT ON default_revocation TO ${pg.escapeIdentifier(lease.username)}`,
  )
  t.equal(
    (await cluster.query(`SELECT 1 FROM information_schema.role_table_grants WHERE grantee = $1`, [lease.username]))
      .length,
    1,
  )
  await vault.call('PUT', 'sys/leases/revoke', { lease_id: lease.leaseId })
  t.equal(await userExists(lease.username), false)
})

void t.test('lookup: Vault keys, last_renewal null until renewed, then set', async (t) => {
  const vault = await vaultFor(t, cluster)
  const db = await vault.database()
  await db.createDynamicRole({ name: 'app-rw', defaultTtl: 60, maxTtl: 600 })
  const lease = await creds(vault, db.mount, 'app-rw')
  const first = (await vault.call('PUT', 'sys/leases/lookup', { lease_id: lease.leaseId })).json as Envelope
  t.equal(first.lease_id, '', 'lookup is not itself a lease')
  t.equal(first.mount_type, 'system')
  const data = first.data as Record<string, unknown>
  t.same(
    Object.keys(data).filter((k) => k !== 'path'),
    ['expire_time', 'id', 'issue_time', 'last_renewal', 'renewable', 'ttl'],
  )
  t.same(
    { id: data.id, last_renewal: data.last_renewal, renewable: data.renewable },
    { id: lease.leaseId, last_renewal: null, renewable: true },
  )
  t.ok((data.ttl as number) > 55 && (data.ttl as number) <= 60)
  t.match(data.issue_time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/)
  t.ok(Date.parse(data.expire_time as string) - Date.parse(data.issue_time as string) >= 59_000)

  await vault.call('PUT', 'sys/leases/renew', { lease_id: lease.leaseId, increment: 120 })
  const second = ((await vault.call('PUT', 'sys/leases/lookup', { lease_id: lease.leaseId })).json as Envelope).data!
  t.match(second.last_renewal, /^\d{4}-\d\d-\d\dT/)
  t.ok((second.ttl as number) > 110)
})

void t.test('expiry: the reaper revokes an expired lease and the user disappears', async (t) => {
  const vault = await vaultFor(t, cluster)
  const db = await vault.database()
  await db.createDynamicRole({ name: 'short', defaultTtl: 2, maxTtl: 2 })
  const lease = await creds(vault, db.mount, 'short')
  t.equal(await userExists(lease.username), true)
  t.ok(await eventually(10, async () => !(await userExists(lease.username))), 'dropped soon after the 2 s lease ended')
  t.same((await vault.request('PUT', 'sys/leases/renew', { body: { lease_id: lease.leaseId } })).json, {
    errors: ['lease not found'],
  })
})

void t.test(
  'a lease whose revocation fails stays: renew says expired, revoke reports the error, a fix lets it go',
  async (t) => {
    const vault = await vaultFor(t, cluster)
    const db = await vault.database()
    await db.createDynamicRole({ name: 'stuck', defaultTtl: 1, maxTtl: 1, revocationStatements: ['SELECT 1/0'] })
    const lease = await creds(vault, db.mount, 'stuck')
    await new Promise((resolve) => setTimeout(resolve, 1500))
    const renew = await vault.request('PUT', 'sys/leases/renew', { body: { lease_id: lease.leaseId } })
    t.equal(renew.status, 400)
    t.same(renew.json, { errors: ['lease expired'] })
    const lookup = ((await vault.call('PUT', 'sys/leases/lookup', { lease_id: lease.leaseId })).json as Envelope).data!
    t.equal(lookup.renewable, false)
    t.ok((lookup.ttl as number) <= 0, 'ttl counts past expiry')
    const revoke = await vault.request('PUT', 'sys/leases/revoke', { body: { lease_id: lease.leaseId } })
    t.equal(revoke.status, 400)
    t.same(revoke.json, {
      errors: ['failed to revoke entry: resp: (*logical.Response)(nil) err: ERROR: division by zero (SQLSTATE 22012)'],
    })
    t.equal(await userExists(lease.username), true, 'the user is still there')

    // Revocation uses the role's current statements while the role exists; the reaper retries.
    await vault.call('POST', `${db.mount}/roles/stuck`, { revocation_statements: `DROP ROLE IF EXISTS "{{name}}"` })
    t.ok(
      await eventually(40, async () => !(await userExists(lease.username))),
      'a later attempt of the reaper succeeds',
    )
    t.same((await vault.request('PUT', 'sys/leases/lookup', { body: { lease_id: lease.leaseId } })).json, {
      errors: ['invalid lease'],
    })
  },
)

void t.test('a deleted role: its leases still revoke with the statements they were issued with', async (t) => {
  const vault = await vaultFor(t, cluster)
  const db = await vault.database()
  await db.createDynamicRole({ name: 'ephemeral', defaultTtl: 60, maxTtl: 60 })
  const lease = await creds(vault, db.mount, 'ephemeral')
  await vault.call('DELETE', `${db.mount}/roles/ephemeral`)
  t.equal(await userExists(lease.username), true, 'deleting the role does not revoke')
  const renew = await vault.request('PUT', 'sys/leases/renew', { body: { lease_id: lease.leaseId } })
  t.equal(renew.status, 400)
  t.same(renew.json, {
    errors: [
      'failed to renew entry: resp: (*logical.Response)(nil) err: error during renew: could not find role with name "ephemeral"',
    ],
  })
  await vault.call('PUT', 'sys/leases/revoke', { lease_id: lease.leaseId })
  t.equal(await userExists(lease.username), false)
})

void t.test("a token's expiry revokes the leases it created, even those with time left", async (t) => {
  const vault = await vaultFor(t, cluster)
  const db = await vault.database()
  await db.createDynamicRole({ name: 'app-rw', defaultTtl: 60, maxTtl: 60 })
  const policy = await vault.policy('leases-app-rw', `path "${db.mount}/creds/app-rw" { capabilities = ["read"] }`)
  const token = ((await vault.call('POST', 'auth/token/create', { policies: [policy], ttl: '2s' })).json as Envelope)
    .auth!.client_token
  const lease = await creds(vault, db.mount, 'app-rw', token)
  t.equal(await userExists(lease.username), true)
  t.ok(
    await eventually(12, async () => !(await userExists(lease.username))),
    'the user is dropped once the token expires',
  )
  t.same((await vault.request('PUT', 'sys/leases/lookup', { body: { lease_id: lease.leaseId } })).json, {
    errors: ['invalid lease'],
  })
})

void t.test("revoke-self revokes the token's leases too", async (t) => {
  const vault = await vaultFor(t, cluster)
  const db = await vault.database()
  await db.createDynamicRole({ name: 'app-rw', defaultTtl: 60, maxTtl: 60 })
  const policy = await vault.policy('leases-self', `path "${db.mount}/creds/app-rw" { capabilities = ["read"] }`)
  const token = ((await vault.call('POST', 'auth/token/create', { policies: [policy], ttl: '5m' })).json as Envelope)
    .auth!.client_token
  const lease = await creds(vault, db.mount, 'app-rw', token)
  t.equal((await vault.request('POST', 'auth/token/revoke-self', { token, body: {} })).status, 204)
  t.ok(await eventually(10, async () => !(await userExists(lease.username))))
})
