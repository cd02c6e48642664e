import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { CONFIG_KEYS, ConfigError, loadConfig } from '../../src/config/load-config.js'

const dir = await mkdtemp(join(tmpdir(), 'pgvp-config-'))
t.teardown(() => rm(dir, { recursive: true, force: true }))
let n = 0
async function file(text: string): Promise<string> {
  const path = join(dir, `c${n++}.yaml`)
  await writeFile(path, text)
  return path
}
const minimal =
  'owner_role: app_owner\nupstream: { host: db }\ncredentials: { static: { username: u, password_file: /p } }\n'

async function problems(text: string | undefined, env: Record<string, string> = {}, flags = {}): Promise<string[]> {
  try {
    await loadConfig(text === undefined ? undefined : await file(text), flags, env)
    return []
  } catch (err) {
    if (err instanceof ConfigError) return err.problems
    throw err
  }
}

void t.test('precedence: flags > PGVP_* environment > file > defaults', async (t) => {
  const path = await file(`${minimal}listen: 127.0.0.1:7000\nlog: { level: warn }\n`)
  const fileOnly = await loadConfig(path, {}, {})
  t.same(fileOnly.listen, { host: '127.0.0.1', port: 7000 })
  t.equal(fileOnly.upstream.port, 5432, 'default')
  const withEnv = await loadConfig(
    path,
    {},
    { PGVP_LISTEN: '127.0.0.1:7001', PGVP_UPSTREAM_PORT: '6543', PGVP_LOG_LEVEL: 'debug' },
  )
  t.same(withEnv.listen, { host: '127.0.0.1', port: 7001 })
  t.equal(withEnv.upstream.port, 6543)
  t.equal(withEnv.upstream.host, 'db', 'the rest of the file stays')
  const withFlags = await loadConfig(
    path,
    { listen: '127.0.0.1:7002', logLevel: 'error' },
    { PGVP_LISTEN: '127.0.0.1:7001', PGVP_LOG_LEVEL: 'debug' },
  )
  t.same(withFlags.listen, { host: '127.0.0.1', port: 7002 })
  t.equal(withFlags.log.level, 'error')
  const envOnly = await loadConfig(
    undefined,
    {},
    {
      PGVP_OWNER_ROLE: 'o',
      PGVP_UPSTREAM_HOST: 'h',
      PGVP_CREDENTIALS_STATIC_USERNAME: 'u',
      PGVP_CREDENTIALS_STATIC_PASSWORD_FILE: '/p',
      PGVP_ALLOW_REMOTE: 'true',
    },
  )
  t.equal(envOnly.allow_remote, true, 'a whole configuration from the environment')
})

void t.test('routes: each entry laid over the top level; the top level alone is the "default" route', async (t) => {
  const single = await loadConfig(await file(minimal), {}, {})
  t.same(
    single.routes.map((r) => [r.name, r.users, r.config.owner_role]),
    [['default', undefined, 'app_owner']],
  )
  const routed = await loadConfig(
    await file(
      `${minimal.replace('{ host: db }', '{ host: db, sslmode: require }')}routes:\n  - { name: app, listen: 127.0.0.1:7001 }\n  - { name: reports, listen: 127.0.0.1:7001, users: [reporter], owner_role: reporting, upstream: { port: 6000 } }\n`,
    ),
    {},
    {},
  )
  const [app, reports] = routed.routes
  t.match(app, {
    name: 'app',
    users: undefined,
    config: {
      owner_role: 'app_owner',
      listen: { port: 7001 },
      upstream: { host: 'db', port: 5432, sslmode: 'require' },
    },
  })
  t.match(reports, {
    name: 'reports',
    users: ['reporter'],
    config: { owner_role: 'reporting', upstream: { host: 'db', port: 6000, sslmode: 'require' } },
  })
})

void t.test('every key has its environment variable', async (t) => {
  const envs = new Set(CONFIG_KEYS.map((k) => k.env))
  for (const name of [
    'PGVP_LISTEN',
    'PGVP_UPSTREAM_SSLMODE',
    'PGVP_VAULT_AUTH_ROLE_ID',
    'PGVP_CREDENTIALS_VAULT_ROLE',
    'PGVP_CREDENTIALS_KV_PATH',
    'PGVP_LOG_FORMAT',
  ]) {
    t.ok(envs.has(name), name)
  }
})

// Bad inputs and the exact messages an operator gets.
const table: Array<[string, string | undefined, Record<string, string>, string[]]> = [
  ['no configuration at all', undefined, {}, ['owner_role: required', 'upstream: required', 'credentials: required']],
  ['an unknown key', `${minimal}ownr_role: x\n`, {}, ['ownr_role: unknown key (see docs/configuration.md)']],
  [
    'an unknown nested key',
    minimal.replace('{ host: db }', '{ host: db, sslmod: require }'),
    {},
    ['upstream.sslmod: unknown key (see docs/configuration.md)'],
  ],
  [
    'a port out of range',
    minimal.replace('{ host: db }', '{ host: db, port: 70000 }'),
    {},
    ['upstream.port: Too big: expected number to be <=65535'],
  ],
  [
    'a bad sslmode',
    minimal.replace('{ host: db }', '{ host: db, sslmode: strict }'),
    {},
    [
      'upstream.sslmode: Invalid option: expected one of "disable"|"allow"|"prefer"|"require"|"verify-ca"|"verify-full"',
    ],
  ],
  [
    'verify-full without a CA',
    minimal.replace('{ host: db }', '{ host: db, sslmode: verify-full }'),
    {},
    [
      'upstream.sslrootcert: sslmode verify-full needs a CA to verify against: set upstream.sslrootcert to a PEM file, or "system" for the system CAs',
    ],
  ],
  [
    'a bad listen address',
    `${minimal}listen: localhost\n`,
    {},
    ['listen: expected host:port (e.g. 127.0.0.1:6432), got "localhost"'],
  ],
  [
    'two credential sources',
    `${minimal.replace('credentials: {', 'credentials: { kv: { path: x },')}`,
    {},
    [
      'credentials: set exactly one credential source: credentials.vault (role or static_role), credentials.kv or credentials.static (found static, kv)',
    ],
  ],
  [
    'a number variable that is not a number',
    minimal,
    { PGVP_UPSTREAM_PORT: 'five' },
    ['PGVP_UPSTREAM_PORT (upstream.port): expected a number, got "five"'],
  ],
  [
    'a boolean variable that is not a boolean',
    minimal,
    { PGVP_ALLOW_REMOTE: 'maybe' },
    ['PGVP_ALLOW_REMOTE (allow_remote): expected true or false, got "maybe"'],
  ],
  [
    'Vault without an address',
    minimal.replace('static: { username: u, password_file: /p }', 'vault: { role: app }'),
    {},
    ['vault.address: required by the Vault credential source (or set VAULT_ADDR)'],
  ],
  [
    'Vault without a token',
    minimal.replace('static: { username: u, password_file: /p }', 'vault: { role: app }'),
    { VAULT_ADDR: 'http://v:8200' },
    ['vault.auth.token: set vault.auth.token or vault.auth.token_file (or VAULT_TOKEN)'],
  ],
  ['not YAML', 'owner_role: [unclosed\n', {}, [/is not valid YAML/ as unknown as string]],
  [
    'an unknown key in a route',
    `${minimal}routes: [{ name: a, ownr_role: x }]\n`,
    {},
    ['routes.0.ownr_role: unknown key (see docs/configuration.md)'],
  ],
  [
    'a route key with a bad value',
    `${minimal}routes: [{ name: a, upstream: { port: 0 } }]\n`,
    {},
    ['routes.0.upstream.port: Too small: expected number to be >=1'],
  ],
  [
    'two routes with one name',
    `${minimal}routes: [{ name: a, listen: 1 }, { name: a, listen: 2 }]\n`,
    {},
    ['routes.1.name: "a" is used by another route'],
  ],
  [
    'two routes taking every user on one listener',
    `${minimal}routes: [{ name: a }, { name: b }]\n`,
    {},
    ['routes.1.users: routes "a" and "b" both take every user on 127.0.0.1:5432; give one of them users'],
  ],
  [
    'a user routed twice on one listener',
    `${minimal}routes: [{ name: a, users: [x] }, { name: b, users: [x, y] }]\n`,
    {},
    ['routes.1.users: "x" is already routed to "a" on 127.0.0.1:5432'],
  ],
  ['an empty routes list', `${minimal}routes: []\n`, {}, ['routes: expected a list of at least one route']],
]

for (const [what, text, env, expected] of table) {
  void t.test(what, async (t) => {
    const got = await problems(text, env)
    for (const wanted of expected) {
      if (typeof wanted === 'string') t.ok(got.includes(wanted), `${JSON.stringify(wanted)} in ${JSON.stringify(got)}`)
      else
        t.ok(
          got.some((p) => (wanted as RegExp).test(p)),
          `${String(wanted)} in ${JSON.stringify(got)}`,
        )
    }
  })
}
