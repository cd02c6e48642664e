/**
 * Long TTLs: the system max (768h unless the server config says otherwise) caps leases and
 * tokens; a mount tuned with sys/mounts/<path>/tune or sys/auth/<path>/tune lets them live longer
 * (logical_system.go handleTuneWriteCommon; dynamic_system_view.go fetchTTLs). The database
 * user is created in the real PostgreSQL with a VALID UNTIL that far out.
 */
import t from 'tap'
import { clusterFor } from '../support/pg-cluster.js'
import { devOnly, vaultFor } from '../support/vault-target.js'

const cluster = await clusterFor(t)

const HOUR = 3600
const DAY_MS = 24 * HOUR * 1000

interface Envelope {
  lease_id: string
  lease_duration: number
  data: Record<string, unknown> | null
  warnings: string[] | null
  auth: { client_token: string; lease_duration: number } | null
}

/** Days from now until the user's VALID UNTIL in pg_roles. */
async function validDays(user: string): Promise<number> {
  const rows = await cluster.query<{ until: Date }>('SELECT rolvaliduntil AS until FROM pg_roles WHERE rolname = $1', [
    user,
  ])
  return (rows[0]!.until.getTime() - Date.now()) / DAY_MS
}

void t.test('a 900h database role is capped at the system max of 768h, with Vault’s warning', async (t) => {
  const vault = await vaultFor(t, cluster)
  const db = await vault.database()
  await db.createDynamicRole({ name: 'long-rw', defaultTtl: '900h', maxTtl: 0 })
  const creds = (await vault.call('GET', `${db.mount}/creds/long-rw`)).json as Envelope
  t.equal(creds.lease_duration, 768 * HOUR)
  t.same(creds.warnings, ['TTL of "900h" exceeded the effective max_ttl of "768h"; TTL value is capped accordingly'])
  const days = await validDays(creds.data!.username as string)
  t.ok(days > 31.9 && days < 32.1, `VALID UNTIL 32 days out (${days.toFixed(3)})`)
  await vault.call('PUT', 'sys/leases/revoke', { lease_id: creds.lease_id })
})

void t.test(
  'a mount tuned to max_lease_ttl=1000h issues 900h leases; PostgreSQL gets the same VALID UNTIL',
  async (t) => {
    const vault = await vaultFor(t, cluster)
    const db = await vault.database()
    await vault.call('POST', `sys/mounts/${db.mount}/tune`, { max_lease_ttl: '1000h' })
    const tuned = (await vault.call('GET', `sys/mounts/${db.mount}/tune`)).json as Envelope
    t.equal(tuned.data!.max_lease_ttl, 1000 * HOUR)
    t.equal(tuned.data!.default_lease_ttl, 768 * HOUR, 'the default is still the system’s')

    await db.createDynamicRole({ name: 'long-rw', defaultTtl: '900h', maxTtl: 0 })
    const creds = (await vault.call('GET', `${db.mount}/creds/long-rw`)).json as Envelope
    t.equal(creds.lease_duration, 900 * HOUR)
    t.equal(creds.warnings, null)
    const user = creds.data!.username as string
    const days = await validDays(user)
    t.ok(days > 37.4 && days < 37.6, `VALID UNTIL 37.5 days out (${days.toFixed(3)})`)

    const lookup = (await vault.call('PUT', 'sys/leases/lookup', { lease_id: creds.lease_id })).json as Envelope
    t.ok((lookup.data!.ttl as number) > 900 * HOUR - 5, 'the lease itself is 900h long')

    // A renewal asking for more than the role allows gets the mount's max from issue time.
    const renewed = (await vault.call('PUT', 'sys/leases/renew', { lease_id: creds.lease_id, increment: '2000h' }))
      .json as Envelope
    t.ok(renewed.lease_duration <= 1000 * HOUR && renewed.lease_duration > 1000 * HOUR - 5)
    t.match(
      renewed.warnings?.[0],
      /^TTL of "2000h" exceeded the effective max_ttl of "(999h59m5\d|1000h)s?"; TTL value is capped accordingly$/,
    )

    await vault.call('PUT', 'sys/leases/revoke', { lease_id: creds.lease_id })
    const gone = await cluster.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [user])
    t.equal(gone.length, 0, 'revocation drops the user')
  },
)

void t.test('a token with ttl 8760h: capped at 768h until auth/token is tuned', async (t) => {
  const vault = await vaultFor(t)
  const capped = (await vault.call('POST', 'auth/token/create', { ttl: '8760h', policies: ['default'] }))
    .json as Envelope
  t.equal(capped.auth!.lease_duration, 768 * HOUR)
  t.same(capped.warnings, ['TTL of "8760h" exceeded the effective max_ttl of "768h"; TTL value is capped accordingly'])

  await vault.call('POST', 'sys/auth/token/tune', { max_lease_ttl: '8760h' })
  const long = (await vault.call('POST', 'auth/token/create', { ttl: '8760h', policies: ['default'] })).json as Envelope
  t.equal(long.auth!.lease_duration, 8760 * HOUR)
  t.equal(long.warnings, null)
  const lookup = await vault.request('GET', 'auth/token/lookup-self', { token: long.auth!.client_token })
  t.ok(((lookup.json as Envelope).data!.ttl as number) > 8760 * HOUR - 5)
  const renewed = (
    await vault.request('POST', 'auth/token/renew-self', {
      token: long.auth!.client_token,
      body: { increment: '8760h' },
    })
  ).json as Envelope
  t.ok(renewed.auth!.lease_duration > 8760 * HOUR - 5, 'renewable to the tuned max')
})

void t.test('AppRole logins get token_ttl=8760h on a tuned auth mount', async (t) => {
  const vault = await vaultFor(t)
  const approle = await vault.approle('long', 'path "secret/*" { capabilities = ["read"] }', {
    tokenTtl: '8760h',
    tokenMaxTtl: '8760h',
  })
  const credentials = { role_id: approle.roleId, secret_id: approle.secretId }
  const before = (await vault.call('POST', `auth/${approle.mount}/login`, credentials)).json as Envelope
  t.equal(before.auth!.lease_duration, 768 * HOUR, 'the system max caps the login first')
  await vault.call('POST', `sys/auth/${approle.mount}/tune`, { max_lease_ttl: '8760h', default_lease_ttl: '8760h' })
  const login = (await vault.call('POST', `auth/${approle.mount}/login`, credentials)).json as Envelope
  t.equal(login.auth!.lease_duration, 8760 * HOUR)
})

void t.test('tune checks a change as Vault does; "system" goes back to the server’s value', async (t) => {
  const vault = await vaultFor(t)
  const mount = await vault.enableSecrets('tune-kv', { type: 'kv', options: { version: '2' } })
  const bad = await vault.request('POST', `sys/mounts/${mount}/tune`, {
    body: { default_lease_ttl: '2h', max_lease_ttl: '1h' },
  })
  t.equal(bad.status, 400)
  t.same(bad.json, { errors: ['backend max lease TTL of 3600 would be less than backend default lease TTL of 7200'] })

  await vault.call('POST', `sys/mounts/${mount}/tune`, { default_lease_ttl: '1h', max_lease_ttl: '2h' })
  let tuned = ((await vault.call('GET', `sys/mounts/${mount}/tune`)).json as Envelope).data!
  t.same([tuned.default_lease_ttl, tuned.max_lease_ttl], [HOUR, 2 * HOUR])
  await vault.call('POST', `sys/mounts/${mount}/tune`, { max_lease_ttl: 'system' })
  tuned = ((await vault.call('GET', `sys/mounts/${mount}/tune`)).json as Envelope).data!
  t.same([tuned.default_lease_ttl, tuned.max_lease_ttl], [HOUR, 768 * HOUR])
  const listed = ((await vault.call('GET', `sys/mounts/${mount}`)).json as Envelope).data!
  t.same(listed.config, { default_lease_ttl: HOUR, force_no_cache: false, max_lease_ttl: 0 }, 'the mount’s own values')

  const enableBad = await vault.request('POST', `sys/mounts/${vault.name('tune-bad')}`, {
    body: { type: 'kv', config: { default_lease_ttl: '800h' } },
  })
  t.equal(enableBad.status, 400)
  t.same(enableBad.json, { errors: ['given default lease TTL greater than system max lease TTL of 2764800'] })
})

void t.test(
  'a server started with max_lease_ttl=8760h issues year-long tokens untuned',
  { skip: devOnly('the server config') },
  async (t) => {
    const vault = await vaultFor(t, undefined, { maxLeaseTtlSeconds: 8760 * HOUR })
    const token = (await vault.call('POST', 'auth/token/create', { ttl: '8760h', policies: ['default'] }))
      .json as Envelope
    t.equal(token.auth!.lease_duration, 8760 * HOUR)
    const tuned = ((await vault.call('GET', 'sys/auth/token/tune')).json as Envelope).data!
    t.same([tuned.default_lease_ttl, tuned.max_lease_ttl], [768 * HOUR, 8760 * HOUR])
    const { DevVault } = await import('../../dev-vault/dev-vault-server.js')
    t.throws(
      () => new DevVault({ defaultLeaseTtlSeconds: 2 * HOUR, maxLeaseTtlSeconds: HOUR }),
      /default_lease_ttl \(7200 s\) cannot be greater than max_lease_ttl \(3600 s\)/,
    )
  },
)
