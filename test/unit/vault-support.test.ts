import t from 'tap'
import { parseConfig } from '../../src/config/load-config.js'
import { resolveVaultSettings } from '../../src/config/vault-settings.js'
import { RefusalBackoff } from '../../src/vault/refusal-backoff.js'
import { withRetry } from '../../src/vault/retry.js'
import { retryAfterMs, toVaultError, VaultError } from '../../src/vault/vault-error.js'

const base = { owner_role: 'o', upstream: { host: 'h' } }

void t.test('Vault errors are classified by shape, with the path and what to do', async (t) => {
  const api = (statusCode: number, errors: string[]): unknown => ({ response: { statusCode, body: { errors } } })
  t.match(toVaultError({ code: 'ECONNREFUSED', message: 'x' }, 'database/creds/app', 'http://127.0.0.1:1'), {
    failure: 'unreachable',
    message: 'Vault is unreachable at http://127.0.0.1:1: connection refused',
  })
  t.match(toVaultError(api(503, ['Vault is sealed']), 'p', 'a'), { failure: 'sealed', isTransient: true })
  const denied = toVaultError(api(403, ['1 error occurred:\n\t* permission denied\n\n']), 'database/creds/app', 'a')
  t.match(denied, { failure: 'permission_denied', isTransient: false, path: 'database/creds/app' })
  t.equal(denied.message, 'Vault denied permission on database/creds/app (permission denied)')
  t.match(denied.hint('a'), "Grant the proxy's Vault policy access to database/creds/app")
  const invalid = toVaultError(api(403, ['2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n']), 'p', 'a')
  t.match(invalid, { failure: 'invalid_token', message: /permission denied; invalid token/ })
  const limited = toVaultError(
    { response: { statusCode: 429, body: { errors: ['rate limit quota exceeded'] }, headers: { 'retry-after': '7' } } },
    'p',
    'a',
  )
  t.match(
    limited,
    { failure: 'rate_limited', isTransient: true, retryAfterMs: 8_000 },
    'one second more: Vault truncates',
  )
  t.match(toVaultError(api(429, ['rate limit quota exceeded']), 'p', 'a'), { retryAfterMs: undefined })
  t.match(toVaultError(api(400, ['unknown role: nope']), 'database/creds/nope', 'a'), {
    failure: 'bad_request',
    message: /unknown role: nope/,
  })
  t.match(toVaultError(api(500, ['1 error occurred:\n\t* "x" is not an allowed role\n\n']), 'p', 'a'), {
    failure: 'server_error',
    isTransient: true,
  })
  t.match(toVaultError(api(404, []), 'p', 'a'), { failure: 'not_found' })
})

void t.test('Retry-After: delta-seconds or an HTTP date', async (t) => {
  const now = Date.parse('2026-12-03T10:00:00Z')
  t.equal(retryAfterMs('3', now), 3_000)
  t.equal(retryAfterMs(['5'], now), 5_000)
  t.equal(retryAfterMs('Thu, 03 Dec 2026 10:00:10 GMT', now), 10_000)
  t.equal(retryAfterMs('Thu, 03 Dec 2026 09:00:00 GMT', now), 0, 'a date in the past: at once')
  t.equal(retryAfterMs('soon', now), undefined)
  t.equal(retryAfterMs(undefined, now), undefined)
  t.equal(retryAfterMs('-1', now), undefined)
})

void t.test('withRetry retries transient failures only, then gives up', async (t) => {
  let calls = 0
  const transient = new VaultError('unreachable', 'p', 'down')
  const result = await withRetry(
    () => (++calls < 3 ? Promise.reject(transient) : Promise.resolve('ok')),
    (e) => e instanceof VaultError && e.isTransient,
    { attempts: 4, baseDelayMs: 1, maxDelayMs: 2 },
  )
  t.equal(result, 'ok')
  t.equal(calls, 3)
  calls = 0
  const denied = new VaultError('permission_denied', 'p', 'no')
  await t.rejects(
    withRetry(
      () => (calls++, Promise.reject(denied)),
      (e) => e instanceof VaultError && e.isTransient,
      { attempts: 4, baseDelayMs: 1, maxDelayMs: 2 },
    ),
    denied,
  )
  t.equal(calls, 1, 'a permanent failure is not retried')
  calls = 0
  await t.rejects(
    withRetry(
      () => (calls++, Promise.reject(transient)),
      () => true,
      { attempts: 3, baseDelayMs: 1, maxDelayMs: 2 },
    ),
  )
  t.equal(calls, 3, 'attempts are bounded')
})

void t.test('RefusalBackoff: first refusal retries, repeated ones wait longer each time', async (t) => {
  const b = new RefusalBackoff(1_000, 8_000)
  t.ok(b.allow(0))
  t.notOk(b.allow(500))
  t.ok(b.allow(1_000))
  t.notOk(b.allow(2_500), 'the second delay doubled to 2 s')
  t.ok(b.allow(3_000))
  t.ok(b.allow(100_000), 'much later, allowed again')
  t.notOk(b.allow(100_500), 'and the delay started over')
  t.ok(b.allow(101_000))
})

void t.test('Vault settings: the file first, then the standard VAULT_* variables', async (t) => {
  const config = parseConfig({ ...base, credentials: { vault: { role: 'app' } } })
  const env = {
    VAULT_ADDR: 'https://vault:8200',
    VAULT_TOKEN: 'env-token',
    VAULT_NAMESPACE: 'team',
    VAULT_SKIP_VERIFY: 'false',
    VAULT_CACERT: '/ca.pem',
  }
  const settings = resolveVaultSettings(config, env)
  t.match(settings.client, { address: 'https://vault:8200', namespace: 'team', caCert: '/ca.pem', skipVerify: false })
  t.same(settings.auth, { method: 'token', token: 'env-token', tokenFile: undefined })
  t.equal(resolveVaultSettings(config, { ...env, VAULT_SKIP_VERIFY: '1' }).client.skipVerify, true)

  const fromFile = parseConfig({
    ...base,
    vault: { address: 'http://file:8200', auth: { method: 'approle', role_id: 'rid', secret_id_file: '/s' } },
    credentials: { vault: { static_role: 'app' } },
  })
  t.match(resolveVaultSettings(fromFile, env), {
    client: { address: 'http://file:8200' },
    auth: { method: 'approle', mount: 'approle', roleId: 'rid', secretIdFile: '/s' },
  })
  const k8s = parseConfig({
    ...base,
    vault: { address: 'http://v', auth: { method: 'kubernetes', role: 'proxy' } },
    credentials: { kv: { path: 'db' } },
  })
  t.same(resolveVaultSettings(k8s, {}).auth, {
    method: 'kubernetes',
    mount: 'kubernetes',
    role: 'proxy',
    jwtFile: '/var/run/secrets/kubernetes.io/serviceaccount/token',
  })
  t.throws(() => resolveVaultSettings(config, {}), { name: 'ConfigError', message: /vault.address/ })
  t.throws(
    () =>
      resolveVaultSettings(
        parseConfig({ ...base, vault: { address: 'http://v' }, credentials: { vault: { role: 'a' } } }),
        {},
      ),
    {
      name: 'ConfigError',
      message: /vault.auth.token/,
    },
  )
})

void t.test('credential source and auth settings are validated with key paths', async (t) => {
  const problems = (raw: unknown): string => {
    try {
      parseConfig(raw)
      return ''
    } catch (err) {
      return (err as Error).message
    }
  }
  t.match(problems({ ...base, credentials: {} }), /credentials: set exactly one credential source/)
  t.match(problems({ ...base, credentials: { kv: { path: 'x' }, vault: { role: 'r' } } }), /found vault, kv/)
  t.match(
    problems({ ...base, credentials: { vault: { role: 'r', static_role: 's' } } }),
    /credentials\.vault\.role: set exactly one/,
  )
  t.match(
    problems({ ...base, vault: { auth: { method: 'approle' } }, credentials: { vault: { role: 'r' } } }),
    /vault\.auth\.role_id: required by vault\.auth\.method approle/,
  )
  t.match(
    problems({ ...base, vault: { auth: { method: 'jwt', role: 'x' } }, credentials: { vault: { role: 'r' } } }),
    /vault\.auth\.jwt_file: required/,
  )
  t.match(
    problems({ ...base, vault: { address: 'not a url' }, credentials: { vault: { role: 'r' } } }),
    /vault\.address/,
  )
  t.match(
    problems({ ...base, vault: { address: 'http://v', timeout_ms: 2 ** 31 }, credentials: { vault: { role: 'r' } } }),
    /vault\.timeout_ms/,
  )
})
