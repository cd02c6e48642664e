/**
 * KV version 2 at dev mode's secret/ mount: versions, soft delete and its 404 with metadata,
 * undelete, destroy, check-and-set, metadata and listing, and the invalid-path answer.
 */
import t from 'tap'
import { ENVELOPE_KEYS, vaultFor } from '../support/vault-target.js'

interface Envelope {
  data: Record<string, unknown> | null
  warnings: string[] | null
  mount_type: string
}

interface Metadata {
  created_time: string
  custom_metadata: unknown
  deletion_time: string
  destroyed: boolean
  version: number
}

void t.test('write and read versions; the write answer is the version metadata', async (t) => {
  const vault = await vaultFor(t)
  const key = `secret/data/${vault.name('kv-versions')}/app`
  const first = (await vault.call('POST', key, { data: { user: 'a', n: 1 } })).json as Envelope
  t.equal(first.mount_type, 'kv')
  t.same(Object.keys(first.data!), ['created_time', 'custom_metadata', 'deletion_time', 'destroyed', 'version'])
  t.same(
    { ...first.data, created_time: 'x' },
    { created_time: 'x', custom_metadata: null, deletion_time: '', destroyed: false, version: 1 },
  )
  t.match(first.data!.created_time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/)
  await vault.call('PUT', key, { data: { user: 'b', n: 2 } })

  const latest = ((await vault.call('GET', key)).json as Envelope).data as {
    data: Record<string, unknown>
    metadata: Metadata
  }
  t.same(latest.data, { n: 2, user: 'b' })
  t.equal(latest.metadata.version, 2)
  const v1 = ((await vault.call('GET', `${key}?version=1`)).json as Envelope).data as { data: Record<string, unknown> }
  t.same(v1.data, { n: 1, user: 'a' })
  t.equal((await vault.request('GET', `${key}?version=9`)).status, 404)
  const missing = await vault.request('GET', `secret/data/${vault.name('kv-versions')}/nothing`)
  t.equal(missing.status, 404)
  t.equal(missing.text, '{"errors":[]}\n')
})

void t.test('soft delete answers 404 with the metadata; undelete brings it back; destroy is final', async (t) => {
  const vault = await vaultFor(t)
  const path = `${vault.name('kv-delete')}/app`
  await vault.call('POST', `secret/data/${path}`, { data: { v: 1 } })
  t.equal((await vault.request('DELETE', `secret/data/${path}`)).status, 204)
  const deleted = await vault.request('GET', `secret/data/${path}`)
  t.equal(deleted.status, 404)
  const body = deleted.json as Envelope & { request_id: string }
  t.same(Object.keys(body), ENVELOPE_KEYS)
  const data = body.data as { data: unknown; metadata: Metadata }
  t.equal(data.data, null)
  t.not(data.metadata.deletion_time, '', 'the 404 body carries the deletion time')

  t.equal((await vault.request('POST', `secret/undelete/${path}`, { body: { versions: [1] } })).status, 204)
  t.equal((await vault.request('GET', `secret/data/${path}`)).status, 200)
  t.equal((await vault.request('PUT', `secret/destroy/${path}`, { body: { versions: [1] } })).status, 204)
  const destroyed = ((await vault.request('GET', `secret/data/${path}`)).json as Envelope).data as {
    metadata: Metadata
  }
  t.equal(destroyed.metadata.destroyed, true)
  t.equal((await vault.request('POST', `secret/undelete/${path}`, { body: { versions: [1] } })).status, 204)
  t.equal((await vault.request('GET', `secret/data/${path}`)).status, 404, 'a destroyed version stays gone')
})

void t.test('check-and-set, missing data, metadata, listing, and paths outside the v2 API', async (t) => {
  const vault = await vaultFor(t)
  const base = vault.name('kv-meta')
  await vault.call('POST', `secret/data/${base}/one`, { data: { v: 1 } })
  await vault.call('POST', `secret/data/${base}/dir/two`, { data: { v: 2 } })
  const cas = await vault.request('POST', `secret/data/${base}/one`, { body: { data: { v: 3 }, options: { cas: 0 } } })
  t.equal(cas.status, 400)
  t.same(cas.json, { errors: ['check-and-set parameter did not match the current version'] })
  t.equal(
    (await vault.request('POST', `secret/data/${base}/one`, { body: { data: { v: 3 }, options: { cas: 1 } } })).status,
    200,
  )
  const noData = await vault.request('POST', `secret/data/${base}/one`, { body: { options: {} } })
  t.equal(noData.status, 400)
  t.same(noData.json, { errors: ['no data provided'] })

  const meta = ((await vault.call('GET', `secret/metadata/${base}/one`)).json as Envelope).data!
  t.same(
    {
      current_version: meta.current_version,
      oldest_version: meta.oldest_version,
      versions: Object.keys(meta.versions as object),
    },
    { current_version: 2, oldest_version: 1, versions: ['1', '2'] },
  )
  const listed = ((await vault.call('LIST', `secret/metadata/${base}`)).json as Envelope).data
  t.same(listed, { keys: ['dir/', 'one'] })

  const invalid = await vault.request('GET', `secret/${base}/one`)
  t.equal(invalid.status, 404)
  t.same((invalid.json as Envelope).warnings, [
    "Invalid path for a versioned K/V secrets engine. See the API docs for the appropriate API endpoints to use. If using the Vault CLI, use 'vault kv get' for this operation.",
  ])
  t.equal((await vault.request('DELETE', `secret/metadata/${base}/one`)).status, 204)
  t.equal(
    (await vault.request('GET', `secret/metadata/${base}/one`)).status,
    404,
    'metadata delete removes every version',
  )
})
