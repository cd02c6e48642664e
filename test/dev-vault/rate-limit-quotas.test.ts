/**
 * Rate-limit quotas as Vault shapes them (sys/quotas/rate-limit/:name, sys/quotas/config;
 * vault/logical_system_quotas.go, http/util.go rateLimitQuotaWrapping, quotas/quotas_rate_limit.go):
 * 429 `rate limit quota exceeded` past the limit, Retry-After and X-Ratelimit-* only when the
 * response headers are enabled, exempt paths, mount-scoped quotas and block intervals.
 */
import nodeVault from 'node-vault'
import t from 'tap'
import { devOnly, vaultFor } from '../support/vault-target.js'

interface Envelope {
  data: Record<string, unknown> | null
}

const GLOBAL = devOnly('a global quota would throttle everyone sharing the Vault')

void t.test('a global quota: 429 past the limit, health exempt, no headers by default', { skip: GLOBAL }, async (t) => {
  const vault = await vaultFor(t)
  await vault.call('POST', 'sys/quotas/rate-limit/global', { rate: 2, interval: '1m' })
  t.equal((await vault.request('GET', 'auth/token/lookup-self')).status, 200)
  t.equal((await vault.request('GET', 'auth/token/lookup-self')).status, 200)
  const refused = await vault.request('GET', 'auth/token/lookup-self')
  t.equal(refused.status, 429)
  t.equal(refused.text, '{"errors":["request path \\"auth/token/lookup-self\\": rate limit quota exceeded"]}\n')
  t.equal(refused.headers.get('retry-after'), null, 'Retry-After only with enable_rate_limit_response_headers')
  t.equal(refused.headers.get('x-ratelimit-limit'), null)
  t.equal((await vault.request('GET', 'sys/health', { token: null })).status, 200, 'sys/health is exempt')

  const client = nodeVault({ endpoint: vault.address, token: vault.token })
  const err = await client.tokenLookupSelf().then(
    () => undefined,
    (e: unknown) => e as { message: string; response?: { statusCode: number } },
  )
  t.equal(err?.response?.statusCode, 429)
  t.equal(err?.message, 'request path "auth/token/lookup-self": rate limit quota exceeded')
})

void t.test(
  'with response headers: X-Ratelimit-* on every answer, Retry-After on a refusal',
  { skip: GLOBAL },
  async (t) => {
    const vault = await vaultFor(t)
    await vault.call('POST', 'sys/quotas/config', {
      enable_rate_limit_response_headers: true,
      rate_limit_exempt_paths: ['sys/health'],
    })
    const config = ((await vault.call('GET', 'sys/quotas/config')).json as Envelope).data!
    t.same(config, {
      enable_rate_limit_audit_logging: false,
      enable_rate_limit_response_headers: true,
      rate_limit_exempt_paths: ['sys/health'],
    })
    await vault.call('POST', 'sys/quotas/rate-limit/global', { rate: 2, interval: 30 })
    const first = await vault.request('GET', 'auth/token/lookup-self')
    t.equal(first.headers.get('x-ratelimit-limit'), '2')
    t.equal(first.headers.get('x-ratelimit-remaining'), '1')
    const reset = Number(first.headers.get('x-ratelimit-reset'))
    t.ok(reset >= 28 && reset <= 30, `reset in whole seconds (${reset})`)
    t.equal((await vault.request('GET', 'auth/token/lookup-self')).headers.get('x-ratelimit-remaining'), '0')
    const refused = await vault.request('GET', 'auth/token/lookup-self')
    t.equal(refused.status, 429)
    const retryAfter = Number(refused.headers.get('retry-after'))
    t.ok(Number.isInteger(retryAfter) && retryAfter >= 28 && retryAfter <= 30, `Retry-After ${retryAfter}`)
    t.equal((await vault.request('GET', 'sys/health', { token: null })).headers.get('x-ratelimit-limit'), null)
    // Exempt paths are exactly the list written: sys/seal-status is no longer one of them.
    t.equal((await vault.request('GET', 'sys/seal-status', { token: null })).status, 429)
  },
)

void t.test('a mount quota with a block interval throttles logins only', async (t) => {
  const vault = await vaultFor(t)
  const approle = await vault.approle('limited', 'path "secret/*" { capabilities = ["read"] }', {
    tokenTtl: '10m',
    tokenMaxTtl: '1h',
  })
  const quota = vault.name('logins')
  await vault.call('POST', `sys/quotas/rate-limit/${quota}`, {
    path: `auth/${approle.mount}`,
    rate: 1,
    interval: '1m',
    block_interval: '2m',
  })
  t.teardown(() => vault.request('DELETE', `sys/quotas/rate-limit/${quota}`))
  const read = ((await vault.call('GET', `sys/quotas/rate-limit/${quota}`)).json as Envelope).data!
  t.same(read, {
    block_interval: 120,
    inheritable: false,
    interval: 60,
    name: quota,
    path: `auth/${approle.mount}/`,
    rate: 1,
    role: '',
    type: 'rate-limit',
  })
  const listed = ((await vault.call('LIST', 'sys/quotas/rate-limit')).json as Envelope).data!
  t.ok((listed.keys as string[]).includes(quota))

  const login = () =>
    vault.request('POST', `auth/${approle.mount}/login`, {
      token: null,
      body: { role_id: approle.roleId, secret_id: approle.secretId },
    })
  t.equal((await login()).status, 200)
  const refused = await login()
  t.equal(refused.status, 429)
  t.same(refused.json, { errors: [`request path "auth/${approle.mount}/login": rate limit quota exceeded`] })
  t.equal((await vault.request('GET', 'auth/token/lookup-self')).status, 200, 'other paths are not limited')

  await vault.call('DELETE', `sys/quotas/rate-limit/${quota}`)
  t.equal((await login()).status, 200, 'deleting the quota lifts it')
})

void t.test('refused quota definitions', async (t) => {
  const vault = await vaultFor(t)
  const bad = async (body: Record<string, unknown>, message: string) => {
    const reply = await vault.request('POST', `sys/quotas/rate-limit/${vault.name('bad')}`, { body })
    t.equal(reply.status, 400, message)
    t.same(reply.json, { errors: [message] })
  }
  await bad({ rate: 0 }, "'rate' is invalid")
  await bad({ rate: 5, path: 'nowhere' }, 'invalid mount path "nowhere/"')
  const first = vault.name('kv-quota')
  await vault.call('POST', `sys/quotas/rate-limit/${first}`, { rate: 100, path: 'secret' })
  t.teardown(() => vault.request('DELETE', `sys/quotas/rate-limit/${first}`))
  await bad({ rate: 5, path: 'secret/' }, `quota rule with similar properties exists under the name "${first}"`)
  t.equal((await vault.request('GET', `sys/quotas/rate-limit/${vault.name('none')}`)).status, 404)
})
