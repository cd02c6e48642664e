import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { pino, type Logger } from 'pino'
import t, { type Test } from 'tap'
import { DynamicCredentialSource } from '../../src/vault/dynamic-source.js'
import { StaticRoleCredentialSource } from '../../src/vault/static-role-source.js'
import { VaultAuthenticator, type VaultAuthSettings } from '../../src/vault/vault-authenticator.js'
import { VaultClient } from '../../src/vault/vault-client.js'
import { VaultSession } from '../../src/vault/vault-session.js'
import { reply, scriptedVault, type ScriptedReply, type ScriptedRequest } from '../support/scripted-vault.js'

// VaultSession and VaultAuthenticator against a scripted Vault: what real Vault and OpenBao servers
// answer that the dev Vault did not always say.

interface Harness {
  session: VaultSession
  logs: Array<Record<string, unknown>>
  count(path: string): number
  requests: ScriptedRequest[]
}

const approle: VaultAuthSettings = { method: 'approle', mount: 'approle', roleId: 'rid', secretId: 'sid' }

async function harness(
  t: Test,
  respond: (r: ScriptedRequest) => ScriptedReply,
  auth: VaultAuthSettings = approle,
  tokenFilePollMs?: number,
): Promise<Harness> {
  const vault = await scriptedVault(respond)
  const logs: Array<Record<string, unknown>> = []
  const log: Logger = pino(
    { level: 'debug' },
    new Writable({
      write(chunk: Buffer, _e, done) {
        logs.push(JSON.parse(chunk.toString()) as Record<string, unknown>)
        done()
      },
    }),
  )
  const client = new VaultClient({ address: vault.address, skipVerify: false, timeoutMs: 2_000 })
  const session = new VaultSession(client, new VaultAuthenticator(client, auth, log, tokenFilePollMs), log, undefined, {
    attempts: 4,
    baseDelayMs: 10,
    maxDelayMs: 20,
  })
  t.teardown(async () => {
    session.stop()
    await vault.close()
  })
  return { session, logs, count: (path) => vault.count(path), requests: vault.requests }
}

const read = (h: Harness): Promise<string> =>
  h.session.call('database/creds/app', (c) => c.read('database/creds/app')).then((s) => s.leaseId)

/** A Vault whose first token dies after one use, answering a dead token as `flavor` does. */
function dyingToken(flavor: 'vault-1.17' | 'openbao'): (r: ScriptedRequest) => ScriptedReply {
  let logins = 0
  let used = 0
  return (r) => {
    if (r.path === 'auth/approle/login') return reply.login(`hvs.t${++logins}`, 3600)
    const token = r.headers['x-vault-token']
    const dead = token === 'hvs.t1' && used++ > 0
    if (dead) return reply.denied(flavor === 'vault-1.17')
    if (r.path === 'auth/token/lookup-self') return reply.lookup(3000, true)
    return reply.creds(`database/creds/app/${String(token)}`, 60)
  }
}

void t.test('a token that died early is replaced at once: Vault >= 1.17 says "invalid token"', async (t) => {
  const h = await harness(t, dyingToken('vault-1.17'))
  t.equal(await read(h), 'database/creds/app/hvs.t1')
  t.equal(await read(h), 'database/creds/app/hvs.t2', 'logged in again and retried')
  t.equal(h.count('auth/token/lookup-self'), 0, 'no lookup needed: the 403 said why')
  t.equal(h.count('auth/approle/login'), 2)
})

void t.test('OpenBao and Vault <= 1.16: a bare 403 is checked with lookup-self, then a new login', async (t) => {
  const h = await harness(t, dyingToken('openbao'))
  t.equal(await read(h), 'database/creds/app/hvs.t1')
  t.equal(await read(h), 'database/creds/app/hvs.t2', 'logged in again and retried')
  t.equal(h.count('auth/token/lookup-self'), 1)
  t.equal(h.count('auth/approle/login'), 2)
})

void t.test('a real policy denial is reported with a policy hint, without a new login', async (t) => {
  const h = await harness(t, (r) => {
    if (r.path === 'auth/approle/login') return reply.login('hvs.ok', 3600)
    if (r.path === 'auth/token/lookup-self') return reply.lookup(3000, true)
    return reply.denied()
  })
  const err = (await read(h).catch((e: unknown) => e)) as { failure: string; hint(a: string): string }
  t.match(err, { failure: 'permission_denied', message: 'Vault denied permission on database/creds/app' })
  t.match(err.hint(''), "Grant the proxy's Vault policy access to database/creds/app (the token itself is valid)")
  t.equal(h.count('auth/approle/login'), 1)
  t.equal(h.count('database/creds/app'), 1, 'not retried')
})

void t.test('a dead configured token that cannot log in again says so', async (t) => {
  const h = await harness(t, () => reply.denied(), { method: 'token', token: 'hvs.dead' })
  const err = await read(h).catch((e: unknown) => e)
  t.match(err, { failure: 'invalid_token' })
})

void t.test('429: waits as Retry-After asks (plus jitter), then succeeds', async (t) => {
  let n = 0
  const h = await harness(t, (r) => {
    if (r.path === 'auth/approle/login') return reply.login('hvs.ok', 3600)
    return ++n === 1
      ? { status: 429, headers: { 'Retry-After': '1' }, body: { errors: ['rate limit quota exceeded'] } }
      : reply.creds('lease/1', 60)
  })
  t.equal(await read(h), 'lease/1')
  const retry = h.logs.find((l) => l.msg === 'Vault call failed; retrying')
  t.ok(retry, 'retried')
  t.ok(
    Number(retry?.delayMs) >= 2_000,
    `waited the second Vault asked and the second it truncated (${String(retry?.delayMs)} ms)`,
  )
  t.ok(Number(retry?.delayMs) <= 2_000 + 20, 'plus at most the jitter')
})

void t.test('429 asking for longer than the proxy waits in one call: the error goes back at once', async (t) => {
  const h = await harness(t, (r) =>
    r.path === 'auth/approle/login'
      ? reply.login('hvs.ok', 3600)
      : { status: 429, headers: { 'Retry-After': '120' }, body: { errors: ['rate limit quota exceeded'] } },
  )
  t.match(await read(h).catch((e: unknown) => e), { failure: 'rate_limited', retryAfterMs: 121_000 })
  t.equal(h.count('database/creds/app'), 1)
})

void t.test('a batch token is never renewed: the proxy logs in again before it ends', async (t) => {
  const h = await harness(t, (r) => {
    if (r.path === 'auth/approle/login') return reply.login(`hvb.${h.count('auth/approle/login')}`, 3, false)
    if (r.path === 'auth/token/renew-self') return { status: 400, body: { errors: ['batch tokens cannot be renewed'] } }
    if (r.path === 'sys/leases/revoke') return { status: 204 }
    if (r.path === 'sys/leases/renew')
      // Capped at the batch token's end, as Vault caps leases made under one.
      return { status: 200, body: { lease_id: 'lease/x', renewable: true, lease_duration: 1.5 } }
    return reply.creds(`lease/${h.count('database/creds/app')}`, 3)
  })
  let announced = 0
  h.session.auth.onNewToken(() => announced++)
  const source = new DynamicCredentialSource(h.session, {
    mount: 'database',
    role: 'app',
    revokeOnShutdown: false,
    swapBeforeEndMs: 2_000,
  })
  t.teardown(() => source.close())
  // The login and the lease in the same millisecond (as happens on a fast machine): the lease still
  // ends with the token, and is not renewed.
  const realNow = Date.now
  const frozen = realNow()
  Date.now = () => frozen
  try {
    await source.get()
  } finally {
    Date.now = realNow
  }
  await new Promise((r) => setTimeout(r, 3_000))
  t.equal(
    h.count('sys/leases/renew'),
    0,
    "a lease that dies with the token is not renewed (Vault would cap it at the token's end)",
  )
  t.equal(h.count('auth/token/renew-self'), 0, 'no renew-self for a token that cannot be renewed')
  t.equal(h.count('auth/approle/login'), 2, 'logged in again at 2/3 of the TTL (2 s), once')
  t.equal(announced, 1, 'the credential sources were told')
  t.equal(
    h.count('database/creds/app'),
    2,
    'one lease per token: none fetched under the old token after its renewal was capped',
  )
  t.equal(source.status().leaseId, 'lease/2')
  const second = h.requests.filter((r) => r.path === 'auth/approle/login')[1]
  t.ok(second, 'second login happened')
})

void t.test("a batch token's lease ends with the token, whatever lease_duration says", async (t) => {
  // Vault's reply shows the TTL asked for, but a lease made under a batch token is revoked when the
  // token ends: sessions must be told the real end, and move to the next token's lease before it.
  const h = await harness(t, (r) => {
    if (r.path === 'auth/approle/login') return reply.login(`hvb.${h.count('auth/approle/login')}`, 3, false)
    if (r.path === 'sys/leases/revoke') return { status: 204 }
    return reply.creds(`lease/${h.count('database/creds/app')}`, 60)
  })
  const source = new DynamicCredentialSource(h.session, { mount: 'database', role: 'app', revokeOnShutdown: false })
  t.teardown(() => source.close())
  const issuedAt = Date.now()
  const first = await source.get()
  const hold = source.use(first)
  t.teardown(() => hold.release())
  let told = 0
  hold.onChange(() => told++)
  const ends = source.status().expiresAt ?? 0
  t.ok(ends - issuedAt <= 3_100, `the lease ends with its token (in ${ends - issuedAt} ms), not in 60 s`)
  t.equal(hold.endsAt, ends, 'sessions see that end')
  await new Promise((r) => setTimeout(r, 2_500))
  t.equal(h.count('auth/approle/login'), 2, 'logged in again at 2/3 of the token TTL')
  t.equal(source.status().leaseId, 'lease/2', "the new token's lease serves new sessions at once")
  t.ok(hold.superseded, 'sessions on the old lease are told to move before the old token ends')
  t.ok(told >= 1, 'and their listeners ran')
  t.equal(h.count('sys/leases/renew'), 0, 'no renewal of a lease bound to a dying token')
})

void t.test('token file: a new token written by an agent is announced without waiting for a failure', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'pgvp-tokenfile-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'token')
  await writeFile(file, 'hvs.first\n', { mode: 0o600 })
  const h = await harness(
    t,
    (r) => reply.creds(`lease/${String(r.headers['x-vault-token'])}`, 60),
    { method: 'token', tokenFile: file },
    50,
  )
  let announced = 0
  h.session.auth.onNewToken(() => announced++)
  t.equal(await read(h), 'lease/hvs.first')
  await writeFile(file, 'hvs.second\n')
  const deadline = Date.now() + 3_000
  while (announced === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  t.equal(announced, 1, 'the change was noticed by the watcher, not by a failing call')
  t.equal(await read(h), 'lease/hvs.second')
  await writeFile(file, 'hvs.second\n')
  await new Promise((r) => setTimeout(r, 200))
  t.equal(announced, 1, 'rewriting the same token announces nothing')
})

void t.test('the dynamic source fetches a lease of the new token when the token file changes', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'pgvp-tokenfile-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'token')
  await writeFile(file, 'hvs.first\n', { mode: 0o600 })
  const h = await harness(
    t,
    (r) =>
      r.path === 'sys/leases/revoke'
        ? { status: 204 }
        : reply.creds(`lease/${String(r.headers['x-vault-token'])}`, 600, `v-${String(r.headers['x-vault-token'])}`),
    { method: 'token', tokenFile: file },
    50,
  )
  const source = new DynamicCredentialSource(h.session, { mount: 'database', role: 'app', revokeOnShutdown: false })
  t.teardown(() => source.close())
  t.equal((await source.get()).username, 'v-hvs.first')
  await writeFile(file, 'hvs.second\n')
  const deadline = Date.now() + 3_000
  while (source.status().user !== 'v-hvs.second' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  t.equal(source.status().user, 'v-hvs.second', 'a lease of the new token, with no client asking')
})

void t.test('distrust (57P01 on a sibling) backs off: sessions cannot force churn', async (t) => {
  let issued = 0
  const h = await harness(t, (r) => {
    if (r.path === 'auth/approle/login') return reply.login('hvs.ok', 3600)
    if (r.path === 'sys/leases/revoke') return { status: 204 }
    issued++
    return reply.creds(`lease/${issued}`, 600, `v-${issued}`)
  })
  const source = new DynamicCredentialSource(h.session, { mount: 'database', role: 'app', revokeOnShutdown: false })
  t.teardown(() => source.close())
  const first = await source.get()
  source.distrust?.(first)
  const second = await source.get()
  t.not(second.username, first.username, 'the first termination fetches a new credential')
  for (let i = 0; i < 20; i++) {
    source.distrust?.(second)
    t.equal((await source.get()).username, second.username)
  }
  t.equal(issued, 2, 'twenty more terminations within the backoff fetched nothing')
  t.ok(
    h.logs.some(
      (l) => l.msg === 'the server keeps terminating sessions of fresh credentials; keeping this one for now',
    ),
  )
})

void t.test('static role with skip_import_rotation: an empty password is refused with the fix', async (t) => {
  const h = await harness(t, (r) =>
    r.path === 'auth/approle/login'
      ? reply.login('hvs.ok', 3600)
      : { status: 200, body: { data: { username: 'app_user', password: '', ttl: 3600, rotation_period: 3600 } } },
  )
  const source = StaticRoleCredentialSource.forRole(h.session, 'database', 'app')
  t.teardown(() => source.close())
  const err = (await source.get().catch((e: unknown) => e)) as { code?: string; clientError: Record<string, string> }
  t.match(err.clientError, {
    sqlState: '08001',
    message:
      /static role database\/static-creds\/app has no password yet \(never rotated by Vault: skip_import_rotation\)/,
    hint: 'Have Vault rotate it once: vault write database/rotate-role/app -f',
  })
})

void t.test('TTLs beyond 24.8 days: no renewal hot loop for a 900 h lease or an 8760 h token', async (t) => {
  const h = await harness(t, (r) => {
    if (r.path === 'auth/approle/login') return reply.login('hvs.long', 8760 * 3600)
    if (r.path === 'auth/token/renew-self') return reply.login('hvs.long', 8760 * 3600)
    if (r.path === 'sys/leases/renew')
      return { status: 200, body: { lease_id: 'lease/long', renewable: true, lease_duration: 900 * 3600 } }
    return reply.creds('lease/long', 900 * 3600)
  })
  const source = new DynamicCredentialSource(h.session, { mount: 'database', role: 'app', revokeOnShutdown: false })
  t.teardown(() => source.close())
  await source.get()
  await new Promise((r) => setTimeout(r, 500))
  t.equal(h.count('sys/leases/renew'), 0, 'the lease is renewed at 600 h, not now')
  t.equal(h.count('auth/token/renew-self'), 0, 'the token is renewed at 5840 h, not now')
  t.equal(h.count('database/creds/app'), 1)
})
