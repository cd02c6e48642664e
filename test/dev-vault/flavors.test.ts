/**
 * The dev Vault's flavors (dev-vault/flavor.ts): the same server answering with the texts and
 * fields of Vault ≥1.17, Vault ≤1.16 or OpenBao — the 403 bodies, mount_type, sys/health, lease
 * lookups and the legacy lease paths — through raw HTTP and node-vault.
 */
import nodeVault from 'node-vault'
import t from 'tap'
import type { FlavorName } from '../../dev-vault/flavor.js'
import { clusterFor } from '../support/pg-cluster.js'
import { devOnly, ENVELOPE_KEYS, vaultFor } from '../support/vault-target.js'

const cluster = await clusterFor(t)

const INVALID_TOKEN: Record<FlavorName, string[]> = {
  'vault-1.17': ['2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n'],
  'vault-1.16': ['permission denied'],
  openbao: ['permission denied'],
}

for (const flavor of ['vault-1.17', 'vault-1.16', 'openbao'] as const) {
  void t.test(
    `${flavor}: the 403 bodies for a missing, an invalid and a forbidden token`,
    { skip: devOnly('flavors') },
    async (t) => {
      const vault = await vaultFor(t, undefined, { flavor })
      t.equal(vault.dev?.flavor, flavor)

      const missing = await vault.request('GET', 'auth/token/lookup-self', { token: null })
      t.equal(missing.status, 403)
      t.equal(missing.text, '{"errors":["permission denied"]}\n', 'no token: a bare permission denied everywhere')

      const invalid = await vault.request('GET', 'auth/token/lookup-self', { token: 'hvs.not-a-token' })
      t.equal(invalid.status, 403)
      t.same(invalid.json, { errors: INVALID_TOKEN[flavor] })

      // A token that expired is as invalid as one that never existed.
      const created = await vault.call('POST', 'auth/token/create', { ttl: '1s', policies: ['default'] })
      const expiring = (created.json as { auth: { client_token: string } }).auth.client_token
      await new Promise((resolve) => setTimeout(resolve, 1100))
      const expired = await vault.request('GET', 'auth/token/lookup-self', { token: expiring })
      t.equal(expired.status, 403)
      t.same(expired.json, { errors: INVALID_TOKEN[flavor] }, 'an expired token')

      const limited = await vault.call('POST', 'auth/token/create', { policies: ['default'] })
      const token = (limited.json as { auth: { client_token: string } }).auth.client_token
      const forbidden = await vault.request('GET', 'sys/mounts', { token })
      t.equal(forbidden.status, 403)
      t.same(forbidden.json, { errors: ['1 error occurred:\n\t* permission denied\n\n'] }, 'a policy that denies')

      const client = nodeVault({ endpoint: vault.address, token: 'hvs.not-a-token' })
      const err = await client.tokenLookupSelf().then(
        () => undefined,
        (e: unknown) => e as { message: string; response?: { statusCode: number } },
      )
      t.equal(err?.response?.statusCode, 403)
      t.equal(err?.message, INVALID_TOKEN[flavor][0], 'node-vault shows the first error as its message')
    },
  )
}

void t.test(
  'mount_type: Vault flavors end every envelope with it, OpenBao has none',
  { skip: devOnly('flavors') },
  async (t) => {
    for (const flavor of ['vault-1.16', 'openbao'] as const) {
      const vault = await vaultFor(t, undefined, { flavor })
      const read = await vault.call('GET', 'auth/token/lookup-self')
      const expected = flavor === 'openbao' ? ENVELOPE_KEYS.filter((k) => k !== 'mount_type') : ENVELOPE_KEYS
      t.same(Object.keys(read.json as object), expected, `${flavor}: envelope keys`)
      const mounts = await vault.call('GET', 'sys/mounts')
      t.equal('mount_type' in (mounts.json as object), flavor !== 'openbao', `${flavor}: sys/mounts`)
      const secret = (mounts.json as { data: Record<string, { running_plugin_version: string }> }).data['secret/']
      t.match(
        secret?.running_plugin_version,
        flavor === 'openbao' ? /^v2\.\d+\.\d+\+builtin\.bao$/ : /^v1\.16\.\d+\+builtin\.vault$/,
      )
    }
  },
)

void t.test(
  'sys/health: Vault’s body or OpenBao’s shorter one, each with its version',
  { skip: devOnly('flavors') },
  async (t) => {
    const vault = await vaultFor(t, undefined, { flavor: 'openbao' })
    const bao = await vault.request('GET', 'sys/health', { token: null })
    t.equal(bao.status, 200)
    t.same(Object.keys(bao.json as object), [
      'initialized',
      'sealed',
      'standby',
      'replication_performance_mode',
      'replication_dr_mode',
      'server_time_utc',
      'version',
      'cluster_name',
      'cluster_id',
    ])
    t.match((bao.json as { version: string }).version, /^2\.\d+\.\d+$/)
    const sealStatus = await vault.request('GET', 'sys/seal-status', { token: null })
    t.match((sealStatus.json as { version: string }).version, /^2\.\d+\.\d+$/)

    const old = await vaultFor(t, undefined, { flavor: 'vault-1.16' })
    const health = (await old.request('GET', 'sys/health', { token: null })).json as Record<string, unknown>
    t.match(health.version, /^1\.16\.\d+$/)
    t.equal(health.performance_standby, false, 'Vault’s body has performance_standby')
  },
)

void t.test(
  'openbao: lease lookups show the path, the legacy sys/renew and sys/revoke paths are gone',
  { skip: devOnly('flavors') },
  async (t) => {
    for (const flavor of ['vault-1.17', 'openbao'] as const) {
      const vault = await vaultFor(t, cluster, { flavor })
      const db = await vault.database()
      await db.createDynamicRole({ name: 'flavor-rw', defaultTtl: 60, maxTtl: 600 })
      const creds = await vault.call('GET', `${db.mount}/creds/flavor-rw`)
      const leaseId = (creds.json as { lease_id: string }).lease_id
      const lookup = await vault.call('PUT', 'sys/leases/lookup', { lease_id: leaseId })
      const data = (lookup.json as { data: Record<string, unknown> }).data
      if (flavor === 'openbao') t.equal(data.path, `${db.mount}/creds/flavor-rw`, 'openbao: path')
      else t.notOk('path' in data, 'vault: no path')

      const legacy = await vault.request('PUT', 'sys/renew', { body: { lease_id: leaseId } })
      if (flavor === 'openbao') {
        t.equal(legacy.status, 404)
        t.same(legacy.json, { errors: ['1 error occurred:\n\t* unsupported path\n\n'] })
      } else t.equal(legacy.status, 200, 'vault still has sys/renew')
      await vault.call('PUT', 'sys/leases/revoke', { lease_id: leaseId })
    }
  },
)

void t.test('an unknown flavor is refused with the names that exist', async (t) => {
  const { DevVault } = await import('../../dev-vault/dev-vault-server.js')
  t.throws(
    () => new DevVault({ flavor: 'vault-2.0' as FlavorName }),
    /unknown dev Vault flavor "vault-2\.0"; use one of vault-1\.17, vault-1\.16, openbao/,
  )
})
