import t from 'tap'
import { credentialUnavailable } from '../../src/vault/vault-session.js'
import { VaultClient } from '../../src/vault/vault-client.js'
import { VaultError } from '../../src/vault/vault-error.js'
import { reply, scriptedVault } from '../support/scripted-vault.js'

// The HTTP exchange itself, against a scripted server: headers, redirects, status codes.

const clientFor = (address: string): VaultClient =>
  new VaultClient({ address, skipVerify: false, timeoutMs: 2_000, namespace: 'team' })

void t.test('every request says X-Vault-Request: true (a Vault Agent listener insists), login too', async (t) => {
  const vault = await scriptedVault((r) =>
    r.path.startsWith('auth/approle/login') ? reply.login('hvs.one', 60) : reply.creds('database/creds/app/1', 60),
  )
  t.teardown(() => vault.close())
  const client = clientFor(vault.address)
  t.teardown(() => client.close())
  await client.login('approle', { role_id: 'r' })
  client.token = 'hvs.one'
  await client.read('database/creds/app')
  await client.renewLease('database/creds/app/1', 60)
  t.equal(vault.requests.length, 3)
  for (const r of vault.requests) {
    t.equal(r.headers['x-vault-request'], 'true', `${r.method} ${r.path}`)
    t.equal(r.headers['x-vault-namespace'], 'team')
  }
  t.equal(vault.requests[0]?.headers['x-vault-token'], undefined, 'no token on a login')
  t.equal(vault.requests[1]?.headers['x-vault-token'], 'hvs.one')
  t.match(vault.requests[2], {
    method: 'PUT',
    path: 'sys/leases/renew',
    body: { lease_id: 'database/creds/app/1', increment: 60 },
  })
})

void t.test('a same-origin redirect (a standby) is followed once, with the token and the body', async (t) => {
  const vault = await scriptedVault((r) =>
    r.path === 'database/creds/app'
      ? { status: 307, headers: { Location: '/v1/database/creds/app?active=1' } }
      : r.path === 'database/creds/app?active=1'
        ? reply.creds('lease/1', 60)
        : { status: 307, headers: { Location: '/v1/loop' } },
  )
  t.teardown(() => vault.close())
  const client = clientFor(vault.address)
  t.teardown(() => client.close())
  client.token = 'hvs.tok'
  const secret = await client.read('database/creds/app')
  t.equal(secret.leaseId, 'lease/1')
  t.equal(vault.requests[1]?.headers['x-vault-token'], 'hvs.tok')
  await t.rejects(client.write('loop', { a: 1 }), { failure: 'redirected', message: /more than once/ })
  t.same(
    vault.requests.slice(2).map((r) => [r.method, r.path, r.body]),
    [
      ['POST', 'loop', { a: 1 }],
      ['POST', 'loop', { a: 1 }],
    ],
    'the method and body are sent again, and only one redirect is followed',
  )
})

void t.test('a redirect to another origin is not followed: the token never leaves for it', async (t) => {
  const elsewhere = await scriptedVault(() => reply.creds('lease/x', 60))
  t.teardown(() => elsewhere.close())
  const vault = await scriptedVault(() => ({
    status: 307,
    headers: { Location: `${elsewhere.address}/v1/database/creds/app` },
  }))
  t.teardown(() => vault.close())
  const client = clientFor(vault.address)
  t.teardown(() => client.close())
  client.token = 'hvs.secret-token'
  const err = await client.read('database/creds/app').catch((e: unknown) => e)
  t.match(err, { failure: 'redirected', isTransient: true })
  t.match((err as Error).message, `Vault redirected to ${elsewhere.address}, which vault.address does not name`)
  t.equal(elsewhere.requests.length, 0, 'the other origin got nothing')
  t.match((err as VaultError).hint(vault.address), 'Point vault.address at the active Vault node')
  t.notMatch((err as Error).message, 'hvs.secret-token')
})

void t.test('429 carries Retry-After; 412 from an agent names the header', async (t) => {
  let n = 0
  const vault = await scriptedVault(() =>
    ++n === 1
      ? {
          status: 429,
          headers: { 'Retry-After': '2' },
          body: { errors: ['request path "database/creds/app": rate limit quota exceeded'] },
        }
      : { status: 412, body: { errors: ['missing "X-Vault-Request" header'] } },
  )
  t.teardown(() => vault.close())
  const client = clientFor(vault.address)
  t.teardown(() => client.close())
  const limited = (await client.read('database/creds/app').catch((e: unknown) => e)) as VaultError
  t.match(limited, { failure: 'rate_limited', isTransient: true, retryAfterMs: 3_000, statusCode: 429 })
  const shown = credentialUnavailable(limited, vault.address)
  t.match(shown.clientError.hint, 'rate-limit quota refused the proxy')
  t.notMatch(shown.clientError.hint, 'credentials', 'not the old "check the credentials" advice')
  const agent = (await client.read('database/creds/app').catch((e: unknown) => e)) as VaultError
  t.match(agent, { failure: 'bad_request', statusCode: 412 })
  t.match(agent.hint(vault.address), 'X-Vault-Request')
})

void t.test('an answer larger than any Vault answer is cut off', async (t) => {
  const vault = await scriptedVault(() => ({ status: 200, body: { data: { big: 'x'.repeat(2 * 1024 * 1024) } } }))
  t.teardown(() => vault.close())
  const client = clientFor(vault.address)
  t.teardown(() => client.close())
  await t.rejects(client.read('kv/big'), { failure: 'server_error', message: /larger than 1048576 bytes/ })
})
