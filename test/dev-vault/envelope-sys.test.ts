/**
 * The dev Vault's HTTP contract (sdk/logical/translate_response.go, sdk/logical/response_util.go, http/sys_health.go): envelope field order, headers, 204s,
 * error bodies and codes, LIST, sys/health and seal status, mounts, and the fault switches.
 */
import t from 'tap'
import { devOnly, ENVELOPE_KEYS, vaultFor } from '../support/vault-target.js'

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

interface Envelope {
  request_id: string
  lease_id: string
  renewable: boolean
  lease_duration: number
  data: Record<string, unknown> | null
  warnings: string[] | null
  auth: unknown
  mount_type: string
}

void t.test(
  'a read answers with the envelope in Vault field order, data keys sorted, a trailing newline',
  async (t) => {
    const vault = await vaultFor(t)
    const reply = await vault.request('GET', 'auth/token/lookup-self')
    t.equal(reply.status, 200)
    t.equal(reply.headers.get('content-type'), 'application/json')
    t.equal(reply.headers.get('cache-control'), 'no-store')
    t.ok(reply.text.endsWith('}\n'), 'json.Encoder ends the body with a newline')
    const body = reply.json as Envelope
    t.same(Object.keys(body), ENVELOPE_KEYS)
    t.match(body.request_id, UUID)
    t.same(
      { lease_id: body.lease_id, renewable: body.renewable, lease_duration: body.lease_duration },
      { lease_id: '', renewable: false, lease_duration: 0 },
    )
    t.equal(body.warnings, null, 'no warnings is null, never []')
    t.equal(body.auth, null)
    t.equal(body.mount_type, 'token')
    const keys = Object.keys(body.data!)
    t.same(keys, [...keys].sort(), 'data is a Go map: keys sorted')
    t.same(
      {
        id: body.data!.id,
        policies: body.data!.policies,
        path: body.data!.path,
        display_name: body.data!.display_name,
        ttl: body.data!.ttl,
        creation_ttl: body.data!.creation_ttl,
        expire_time: body.data!.expire_time,
      },
      {
        id: vault.token,
        policies: ['root'],
        path: 'auth/token/root',
        display_name: 'root',
        ttl: 0,
        creation_ttl: 0,
        expire_time: null,
      },
      'the dev root token never expires',
    )
    t.notOk(
      'renewable' in body.data! || 'issue_time' in body.data!,
      'a token without lease times has no renewable/issue_time',
    )
  },
)

void t.test('writes without a response answer 204 with no body and no content type', async (t) => {
  const vault = await vaultFor(t)
  const name = vault.name('envelope-empty')
  const reply = await vault.request('PUT', `sys/policies/acl/${name}`, {
    body: { policy: 'path "x" { capabilities = ["read"] }' },
  })
  t.equal(reply.status, 204)
  t.equal(reply.text, '')
  t.equal(reply.headers.get('content-type'), null)
  t.equal((await vault.request('DELETE', `sys/policies/acl/${name}`)).status, 204)
})

void t.test('PUT and POST are the same; LIST and GET ?list=true are the same; an empty list is 404', async (t) => {
  const vault = await vaultFor(t)
  const a = vault.name('list-a')
  const b = vault.name('list-b')
  t.equal(
    (await vault.request('PUT', `sys/policies/acl/${a}`, { body: { policy: 'path "a" { capabilities = ["read"] }' } }))
      .status,
    204,
  )
  t.equal(
    (await vault.request('POST', `sys/policies/acl/${b}`, { body: { policy: 'path "b" { capabilities = ["read"] }' } }))
      .status,
    204,
  )
  const listed = await vault.request('LIST', 'sys/policies/acl')
  const viaGet = await vault.request('GET', 'sys/policies/acl?list=true')
  t.equal(listed.status, 200)
  t.equal(viaGet.status, 200)
  const keys = (listed.json as Envelope).data!.keys as string[]
  t.ok(keys.includes(a) && keys.includes(b) && keys.includes('default') && keys.includes('root'))
  t.same((viaGet.json as Envelope).data!.keys, keys)
  await vault.call('DELETE', `sys/policies/acl/${a}`)
  await vault.call('DELETE', `sys/policies/acl/${b}`)

  const mount = await vault.enableSecrets('empty-kv', { type: 'kv', options: { version: '2' } })
  const empty = await vault.request('LIST', `${mount}/metadata/`)
  t.equal(empty.status, 404)
  t.equal(empty.text, '{"errors":[]}\n', 'a list with no keys is 404 with an empty errors list')
})

void t.test('missing token, bad token, no mount, unsupported path and operation, bad JSON', async (t) => {
  const vault = await vaultFor(t)
  const missing = await vault.request('GET', 'auth/token/lookup-self', { token: null })
  t.equal(missing.status, 403)
  t.equal(missing.text, '{"errors":["permission denied"]}\n')

  const bad = await vault.request('GET', 'auth/token/lookup-self', { token: 'hvs.not-a-token' })
  t.equal(bad.status, 403)
  t.same(bad.json, { errors: ['2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n'] })

  const noMount = await vault.request('GET', 'nomount/x')
  t.equal(noMount.status, 404)
  t.same(noMount.json, { errors: ['no handler for route "nomount/x". route entry not found.'] })

  const noPath = await vault.request('GET', 'sys/no-such-endpoint')
  t.equal(noPath.status, 404)
  t.same(noPath.json, { errors: ['1 error occurred:\n\t* unsupported path\n\n'] })

  const wrongOperation = await vault.request('DELETE', 'auth/token/lookup-self')
  t.equal(wrongOperation.status, 405)
  t.same(wrongOperation.json, { errors: ['1 error occurred:\n\t* unsupported operation\n\n'] })

  const badJson = await vault.request('POST', 'sys/policies/acl/x', {
    headers: { 'Content-Type': 'application/json' },
    body: undefined,
  })
  t.equal(badJson.status, 400, 'an empty body where a field is required')
  const malformed = await fetch(`${vault.address}/v1/sys/policies/acl/x`, {
    method: 'POST',
    headers: { 'X-Vault-Token': vault.token },
    body: '{"policy": ',
  })
  t.equal(malformed.status, 400)
  t.match(((await malformed.json()) as { errors: string[] }).errors[0], /^failed to parse JSON input: /)

  const bearer = await fetch(`${vault.address}/v1/auth/token/lookup-self`, {
    headers: { Authorization: `Bearer ${vault.token}` },
  })
  t.equal(bearer.status, 200, 'Authorization: Bearer works as X-Vault-Token')
})

void t.test('sys/health: body in Vault field order, status codes and their query overrides, HEAD', async (t) => {
  const vault = await vaultFor(t)
  const reply = await vault.request('GET', 'sys/health', { token: null })
  t.equal(reply.status, 200)
  t.ok(reply.text.endsWith('}\n'))
  const body = reply.json as Record<string, unknown>
  t.same(Object.keys(body).slice(0, 3), ['initialized', 'sealed', 'standby'], 'struct order, not an envelope')
  t.same(
    { initialized: body.initialized, sealed: body.sealed, standby: body.standby },
    { initialized: true, sealed: false, standby: false },
  )
  t.type(body.server_time_utc, 'number')
  t.type(body.cluster_name, 'string')
  t.equal((await vault.request('GET', 'sys/health?activecode=299', { token: null })).status, 299)
  const badQuery = await vault.request('GET', 'sys/health?standbycode=abc', { token: null })
  t.equal(badQuery.status, 400)
  t.same(badQuery.json, { errors: [] })
  const head = await fetch(`${vault.address}/v1/sys/health`, { method: 'HEAD' })
  t.equal(head.status, 200)
  t.equal(await head.text(), '')
})

void t.test(
  'sealed: every path answers 503 "Vault is sealed"; health says so; unseal restores',
  { skip: devOnly('the sealed switch') },
  async (t) => {
    const vault = await vaultFor(t)
    await vault.setFaults({ sealed: true })
    const health = await vault.request('GET', 'sys/health', { token: null })
    t.equal(health.status, 503)
    const body = health.json as Record<string, unknown>
    t.equal(body.sealed, true)
    t.notOk('cluster_name' in body || 'cluster_id' in body, 'a sealed Vault does not know its cluster')
    t.equal((await vault.request('GET', 'sys/health?sealedcode=200', { token: null })).status, 200)
    const status = await vault.request('GET', 'sys/seal-status', { token: null })
    t.equal(status.status, 200)
    t.equal((status.json as { sealed: boolean }).sealed, true)
    for (const [method, path] of [
      ['GET', 'auth/token/lookup-self'],
      ['GET', 'secret/data/x'],
      ['PUT', 'sys/leases/renew'],
    ] as const) {
      const reply = await vault.request(method, path)
      t.equal(reply.status, 503, `${method} ${path}`)
      t.equal(reply.text, '{"errors":["Vault is sealed"]}\n')
    }
    await vault.setFaults({ sealed: false })
    t.equal((await vault.request('GET', 'auth/token/lookup-self')).status, 200)
  },
)

void t.test('standby: sys/health answers 429 unless standbyok', { skip: devOnly('the standby switch') }, async (t) => {
  const vault = await vaultFor(t)
  await vault.setFaults({ standby: true })
  const health = await vault.request('GET', 'sys/health', { token: null })
  t.equal(health.status, 429)
  t.equal((health.json as { standby: boolean }).standby, true)
  t.equal((await vault.request('GET', 'sys/health?standbyok=true', { token: null })).status, 200)
  t.equal((await vault.request('GET', 'sys/health?standbycode=472', { token: null })).status, 472)
})

void t.test(
  'fault switches: latency, 500s on chosen paths, refused connections',
  { skip: devOnly('fault switches') },
  async (t) => {
    const vault = await vaultFor(t)
    await vault.setFaults({ latencyMs: 300 })
    const started = Date.now()
    await vault.call('GET', 'auth/token/lookup-self')
    t.ok(Date.now() - started >= 290, 'the answer waited for the added latency')
    await vault.setFaults({ latencyMs: 0, serverErrors: true, serverErrorPaths: ['secret/'] })
    const failed = await vault.request('GET', 'secret/data/x')
    t.equal(failed.status, 500)
    t.match((failed.json as { errors: string[] }).errors[0], /^1 error occurred:\n\t\* internal error/)
    t.equal((await vault.request('GET', 'auth/token/lookup-self')).status, 200, 'other paths are unaffected')
    await vault.setFaults({ serverErrors: false })

    await vault.setFaults({ refuseConnections: true })
    const refused = await fetch(`${vault.address}/v1/sys/health`).catch((err: unknown) => err as Error)
    t.type(refused, Error)
    t.equal(((refused as Error).cause as NodeJS.ErrnoException | undefined)?.code, 'ECONNREFUSED')
    await vault.setFaults({ refuseConnections: false })
    t.equal((await vault.request('GET', 'sys/health')).status, 200, 'listening again on the same port')
  },
)

void t.test(
  'the fault control path works over HTTP with the root token',
  { skip: devOnly('the /v1/sys/dev/faults control path') },
  async (t) => {
    const vault = await vaultFor(t)
    const path = 'sys/dev/faults'
    t.equal((await vault.request('GET', path, { token: null })).status, 403)
    const shown = await vault.request('GET', path)
    t.same(shown.json, {
      latencyMs: 0,
      serverErrors: false,
      serverErrorPaths: [],
      refuseConnections: false,
      sealed: false,
      standby: false,
      standbyForwarding: true,
      activeAddress: '',
    })
    const sealed = await vault.request('POST', path, { body: { sealed: true } })
    t.equal(sealed.status, 200)
    t.equal((sealed.json as { sealed: boolean }).sealed, true)
    t.equal((await vault.request('GET', 'secret/data/x')).status, 503)
    t.equal(
      (await vault.request('POST', path, { body: { sealed: false } })).status,
      200,
      'unsealing works while sealed',
    )
    const unknown = await vault.request('POST', path, { body: { melted: true } })
    t.equal(unknown.status, 400)
    t.same(unknown.json, { errors: ['unknown fault "melted"'] })

    t.equal((await vault.request('POST', path, { body: { refuseConnectionsMs: 500 } })).status, 200)
    await new Promise((resolve) => setTimeout(resolve, 100))
    t.type(await fetch(`${vault.address}/v1/sys/health`).catch((err: unknown) => err), Error, 'refused for a while')
    await new Promise((resolve) => setTimeout(resolve, 700))
    t.equal((await vault.request('GET', 'sys/health')).status, 200, 'and back after refuseConnectionsMs')
  },
)

void t.test('sys/mounts: enable, conflict, list with data copied to the top level, read, tune, disable', async (t) => {
  const vault = await vaultFor(t)
  const path = vault.name('mounts-db')
  t.equal((await vault.request('POST', `sys/mounts/${path}`, { body: { type: 'database' } })).status, 204)
  t.teardown(() => vault.request('DELETE', `sys/mounts/${path}`))
  const again = await vault.request('POST', `sys/mounts/${path}`, { body: { type: 'database' } })
  t.equal(again.status, 409)
  t.same(again.json, { errors: [`path is already in use at ${path}/`] })

  const list = await vault.request('GET', 'sys/mounts')
  const body = list.json as Record<string, unknown> & Envelope
  t.equal((body.data![`${path}/`] as { type: string }).type, 'database')
  t.same(body[`${path}/`], body.data![`${path}/`], 'sys/mounts copies data keys to the top level')
  t.same(
    (body.data!['secret/'] as { type: string; options: unknown }).options,
    { version: '2' },
    'dev mode mounts kv-v2 at secret/',
  )
  t.equal((body.data!['sys/'] as { type: string }).type, 'system')
  t.equal(body.mount_type, 'system')

  const one = await vault.request('GET', `sys/mounts/${path}`)
  t.equal((one.json as Envelope).data!.type, 'database')
  t.equal(
    (await vault.request('POST', `sys/mounts/${path}/tune`, { body: { default_lease_ttl: '1h', max_lease_ttl: '2h' } }))
      .status,
    204,
  )
  const tuned = (await vault.call('GET', `sys/mounts/${path}/tune`)).json as Envelope
  t.same({ d: tuned.data!.default_lease_ttl, m: tuned.data!.max_lease_ttl }, { d: 3600, m: 7200 })

  const unknownType = await vault.request('POST', `sys/mounts/${vault.name('nope')}`, {
    body: { type: 'no-such-engine' },
  })
  t.equal(unknownType.status, 400)
  t.same(unknownType.json, { errors: ['plugin not found in the catalog: no-such-engine'] })

  t.equal((await vault.request('DELETE', `sys/mounts/${path}`)).status, 204)
  const gone = await vault.request('GET', `sys/mounts/${path}`)
  t.equal(gone.status, 400)
  t.same(gone.json, { errors: [`No secret engine mount at ${path}/`] })
})

void t.test(
  'sys/auth: enable an auth method, list it next to token/, refuse a second one at the same path',
  async (t) => {
    const vault = await vaultFor(t)
    const path = vault.name('auth-approle')
    t.equal((await vault.request('POST', `sys/auth/${path}`, { body: { type: 'approle' } })).status, 204)
    t.teardown(() => vault.request('DELETE', `sys/auth/${path}`))
    const listed = (await vault.call('GET', 'sys/auth')).json as Envelope
    t.equal((listed.data![`${path}/`] as { type: string }).type, 'approle')
    t.equal((listed.data!['token/'] as { type: string }).type, 'token')
    const again = await vault.request('POST', `sys/auth/${path}`, { body: { type: 'approle' } })
    t.equal(again.status, 409)
    t.same(again.json, { errors: [`path is already in use at ${path}/`] })
  },
)

void t.test(
  'response wrapping is refused rather than silently ignored',
  { skip: devOnly('response wrapping is not emulated') },
  async (t) => {
    const vault = await vaultFor(t)
    const reply = await vault.request('GET', 'auth/token/lookup-self', { headers: { 'X-Vault-Wrap-TTL': '60s' } })
    t.equal(reply.status, 400)
  },
)
