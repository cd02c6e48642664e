/**
 * The dev Vault's pure parts, checked against the behaviour of the Vault code they reproduce:
 * TTL arithmetic and duration formats, ACL matching priority, policy parsing, statement
 * splitting, username templates, connection URLs, JSON encoding, passwords, routing, and the
 * HTTP/1.1 server that accepts LIST.
 */
import net from 'node:net'
import fc from 'fast-check'
import t from 'tap'
import { encodeJson, goStruct, marshalJson, multierrorText } from '../../dev-vault/envelope.js'
import { glob, matchesGlobList } from '../../dev-vault/glob.js'
import { Http1Server } from '../../dev-vault/http1-server.js'
import { generatePassword } from '../../dev-vault/ids.js'
import { Acl, parsePolicy, PolicyStore } from '../../dev-vault/policies.js'
import {
  goPathEscape,
  hasLiteralPassword,
  redactConnectionUrl,
  renderConnectionUrl,
  withVaultSessionSettings,
} from '../../dev-vault/postgres/connection-url.js'
import {
  containsMultilineStatement,
  parseArbitraryStringSlice,
  queriesOf,
  substitute,
} from '../../dev-vault/postgres/statements.js'
import { DEFAULT_USERNAME_TEMPLATE, UsernameTemplate } from '../../dev-vault/postgres/username-template.js'
import { RateLimitQuotas } from '../../dev-vault/rate-limit-quotas.js'
import { Router } from '../../dev-vault/router.js'
import { keyIdentifiers } from '../../dev-vault/x509-key-ids.js'
import { calculateTtl, humanDuration, parseDurationSeconds, PastMaxTtlError } from '../../dev-vault/ttl.js'

void t.test('humanDuration drops zero parts as lease.go does', async (t) => {
  const cases: [number, string][] = [
    [0, '0s'],
    [2, '2s'],
    [60, '1m'],
    [90, '1m30s'],
    [3600, '1h'],
    [3661, '1h1m1s'],
    [5400, '1h30m'],
    [7201, '2h1s'], // Go's "2h0m1s" loses its "0m" too
    [768 * 3600, '768h'],
  ]
  for (const [seconds, text] of cases) t.equal(humanDuration(seconds), text, `${seconds}s`)
})

void t.test('parseDurationSeconds reads ints, digit strings, Go durations and days', async (t) => {
  const cases: [unknown, number | undefined][] = [
    [3600, 3600],
    ['3600', 3600],
    ['1h', 3600],
    ['1h30m', 5400],
    ['90s', 90],
    ['1.5h', 5400],
    ['7d', 604800],
    ['', 0],
    ['soon', undefined],
    ['1x', undefined],
    [{}, undefined],
  ]
  for (const [input, seconds] of cases) t.equal(parseDurationSeconds(input), seconds, JSON.stringify(input))
})

void t.test('calculateTtl: increment, backend TTL, mount default, max from issue time, capping warning', async (t) => {
  const base = {
    incrementSeconds: 0,
    backendTtlSeconds: 0,
    backendMaxTtlSeconds: 0,
    mountDefaultTtlSeconds: 2764800,
    mountMaxTtlSeconds: 2764800,
  }
  const now = 1_700_000_000_500
  t.same(calculateTtl({ ...base, nowMs: now }), { ttlSeconds: 2764800, warnings: [] }, 'the mount default')
  t.same(calculateTtl({ ...base, backendTtlSeconds: 60, nowMs: now }).ttlSeconds, 60, 'the backend TTL')
  t.same(
    calculateTtl({ ...base, backendTtlSeconds: 60, incrementSeconds: 30, nowMs: now }).ttlSeconds,
    30,
    'increment replaces, not adds',
  )
  t.same(calculateTtl({ ...base, backendTtlSeconds: 3600, backendMaxTtlSeconds: 60, nowMs: now }), {
    ttlSeconds: 60,
    warnings: ['TTL of "1h" exceeded the effective max_ttl of "1m"; TTL value is capped accordingly'],
  })
  // Issued 58 s ago with a 60 s max: a 1 m renewal is capped to the 2 s left (the OBS example).
  t.same(
    calculateTtl({ ...base, incrementSeconds: 60, backendMaxTtlSeconds: 60, issueTimeMs: now - 58_000, nowMs: now }),
    {
      ttlSeconds: 2,
      warnings: ['TTL of "1m" exceeded the effective max_ttl of "2s"; TTL value is capped accordingly'],
    },
  )
  const past = (() => {
    try {
      calculateTtl({ ...base, backendMaxTtlSeconds: 60, issueTimeMs: now - 61_000, nowMs: now })
    } catch (err) {
      return err
    }
  })()
  t.type(past, PastMaxTtlError)
  t.equal((past as Error).message, 'past the max TTL, cannot renew')
  t.same(calculateTtl({ ...base, periodSeconds: 120, nowMs: now }).ttlSeconds, 120, 'a period is the TTL')
})

void t.test('ACL matching: exact beats globs, Vault priority among globs and + segments, deny wins', async (t) => {
  const acl = (text: string) => Acl.of([parsePolicy('p', text)])
  const rule = (path: string, caps: string) => `path "${path}" { capabilities = [${caps}] }\n`
  // acl.go's examples: prefer foo/a* over foo/+, foo/+/bar over foo/+/ba*, foo/bar/+/baz over foo/+/+/baz.
  const a = acl(rule('foo/a*', '"read"') + rule('foo/+', '"list"'))
  t.same([...a.capabilities('foo/abc')!], ['read'], 'the later first wildcard wins')
  const b = acl(rule('foo/+/bar', '"read"') + rule('foo/+/ba*', '"list"'))
  t.same([...b.capabilities('foo/x/bar')!], ['read'], 'not-a-prefix beats prefix')
  const c = acl(rule('foo/bar/+/baz', '"read"') + rule('foo/+/+/baz', '"list"'))
  t.same([...c.capabilities('foo/bar/x/baz')!], ['read'], 'fewer + segments win')
  const d = acl(rule('secret/*', '"read"') + rule('secret/app/*', '"list"') + rule('secret/app/x', '"update"'))
  t.same([...d.capabilities('secret/app/x')!], ['update'], 'exact beats everything')
  t.same([...d.capabilities('secret/app/y')!], ['list'], 'the longest glob')
  t.same([...d.capabilities('secret/other')!], ['read'])
  t.equal(d.capabilities('other/x'), undefined)
  const merged = Acl.of([
    parsePolicy('a', rule('k/*', '"read"')),
    parsePolicy('b', rule('k/*', '"update"')),
    parsePolicy('c', rule('k/x', '"deny"')),
  ])
  t.same([...merged.capabilities('k/y')!].sort(), ['read', 'update'], 'the same path in two policies adds up')
  t.equal(merged.allows('k/x', 'read'), false, 'deny')
  t.equal(acl(rule('sys/auth/*', '"update"')).allows('sys/auth/x', 'update', true), false, 'a sudo path needs sudo')
  t.equal(Acl.root().allows('anything', 'delete', true), true)
})

void t.test('policy parsing: HCL with comments, JSON, the legacy policy shorthand, and errors', async (t) => {
  const hcl = parsePolicy(
    'p',
    '# comment\npath "a/*" {\n  // another\n  capabilities = ["read", "list"]\n  allowed_parameters = { "x" = [] }\n}\n/* block */ path "b" { policy = "write" }',
  )
  t.same(
    hcl.rules.map((r) => [r.path, [...r.capabilities]]),
    [
      ['a/*', ['read', 'list']],
      ['b', ['create', 'read', 'update', 'delete', 'list']],
    ],
  )
  const json = parsePolicy('p', '{"path": {"c/+": {"capabilities": ["update"]}}}')
  t.same(
    json.rules.map((r) => [r.path, [...r.capabilities]]),
    [['c/+', ['update']]],
  )
  t.throws(() => parsePolicy('p', 'path "x" { capabilities = ["fly"] }'), {
    message: 'failed to parse policy: path "x": invalid capability "fly"',
  })
  t.throws(() => parsePolicy('p', 'path "x" {'), { message: /^failed to parse policy: / })
  const store = new PolicyStore()
  t.ok(store.acl(['default']).allows('auth/token/lookup-self', 'read'), 'the built-in default policy')
  t.notOk(store.acl(['default']).allows('sys/leases/revoke', 'update'), 'revoke is not in the default policy')
})

void t.test(
  'statements: split on ;, JSON arrays and base64, END blocks kept whole, literal substitution',
  async (t) => {
    t.same(parseArbitraryStringSlice(' CREATE ROLE a;  GRANT b TO a; ', ';'), ['CREATE ROLE a', 'GRANT b TO a'])
    t.same(
      parseArbitraryStringSlice('["SELECT 1; SELECT 2", "SELECT 3"]', ';'),
      ['SELECT 1; SELECT 2', 'SELECT 3'],
      'JSON items are not split',
    )
    t.same(parseArbitraryStringSlice(Buffer.from('SELECT 1;SELECT 2').toString('base64'), ';'), [
      'SELECT 1',
      'SELECT 2',
    ])
    t.same(parseArbitraryStringSlice("SELECT ';'", ';'), ["SELECT '", "'"], 'naive: a ; in quotes still splits')
    t.equal(containsMultilineStatement('DO $$ BEGIN x; y; END $$'), true)
    t.equal(containsMultilineStatement("SELECT 'END'"), false, 'END inside quotes does not count')
    t.equal(containsMultilineStatement('SELECT 1; SELECT 2'), false)
    t.same(queriesOf(['DO $$ BEGIN x; END $$', 'a; b'], true), ['DO $$ BEGIN x; END $$', 'a', 'b'])
    t.same(queriesOf(['DO $$ BEGIN x; END $$'], false), ['DO $$ BEGIN x', 'END $$'], 'renew and rotation always split')
    t.equal(
      substitute(`'{{password}}' "{{name}}"`, { name: 'v-x', password: "it's" }),
      `'it's' "v-x"`,
      'no SQL escaping',
    )
  },
)

void t.test('username templates: the default shape and truncation, and Vault template functions', async (t) => {
  const fixed = () => 1738324800_000
  const username = new UsernameTemplate(DEFAULT_USERNAME_TEMPLATE, fixed).generate({
    DisplayName: 'kubernetes-db-proxy',
    RoleName: 'reporting-ro',
  })
  t.match(username, /^v-kubernet-reportin-[0-9A-Za-z]{20}-1738324800$/)
  const long = new UsernameTemplate('{{ printf "%s-%s" .DisplayName .RoleName | truncate 10 }}').generate({
    DisplayName: 'abcdefgh',
    RoleName: 'ijkl',
  })
  t.equal(long, 'abcdefgh-i')
  const functions = new UsernameTemplate(
    '{{ .RoleName | uppercase }}_{{ replace "-" "_" .DisplayName }}_{{ truncate_sha256 12 "abcdefghijklmnop" }}',
  )
  t.match(functions.generate({ DisplayName: 'a-b', RoleName: 'r' }), /^R_a_b_abcd[0-9a-f]{8}$/)
  t.throws(() => new UsernameTemplate('{{ nosuchfunc 1 }}').generate({ DisplayName: '', RoleName: '' }), {
    message: 'function "nosuchfunc" not defined',
  })
  t.throws(() => new UsernameTemplate('{{ .RoleName '), { message: 'unclosed action' })
})

void t.test(
  'connection URLs: PathEscape, templating, Vault session settings, password detection and redaction',
  async (t) => {
    t.equal(goPathEscape('p@ss/w:rd;x y'), 'p@ss%2Fw:rd%3Bx%20y', 'url.PathEscape leaves @ and : alone')
    const template = 'postgresql://{{username}}:{{password}}@db:5432/app'
    t.equal(
      renderConnectionUrl(template, { username: 'vault', password: 'a/b', disableEscaping: false }),
      'postgresql://vault:a%2Fb@db:5432/app',
    )
    t.equal(
      renderConnectionUrl(template, { username: 'vault', password: 'a/b', disableEscaping: true }),
      'postgresql://vault:a/b@db:5432/app',
    )
    t.throws(() => renderConnectionUrl(template, { username: '{{password}}', password: '', disableEscaping: false }))
    t.equal(
      withVaultSessionSettings('postgresql://u@/app?host=/run/pg'),
      'postgresql://u@/app?host=/run/pg&timezone=UTC&application_name=vault',
    )
    t.equal(
      withVaultSessionSettings('postgres://u@h/app?application_name=x'),
      'postgres://u@h/app?application_name=x&timezone=UTC',
    )
    t.equal(hasLiteralPassword(template), false, 'template braces make Go refuse the userinfo')
    t.equal(hasLiteralPassword('postgresql://u:secret@h/app'), true)
    t.equal(hasLiteralPassword('postgresql://u@/app?host=/run/pg'), false)
    t.equal(redactConnectionUrl('postgresql://u:secret@h/app'), 'postgresql://u:xxxxx@h/app')
    t.equal(redactConnectionUrl(template), template)
  },
)

void t.test(
  'JSON as Go writes it: maps sorted bytewise, structs in order, HTML escaped, multierror text',
  async (t) => {
    t.equal(marshalJson({ b: 1, a: { '2': 0, '10': 0 } }), '{"a":{"10":0,"2":0},"b":1}')
    t.equal(marshalJson(goStruct({ z: 1, a: 2 })), '{"z":1,"a":2}')
    t.equal(encodeJson({ s: '<a&b>' }), '{"s":"\\u003ca\\u0026b\\u003e"}\n')
    t.equal(multierrorText(['x']), '1 error occurred:\n\t* x\n\n')
    t.equal(multierrorText(['x', 'y']), '2 errors occurred:\n\t* x\n\t* y\n\n')
  },
)

void t.test('generated passwords always have the four character classes', async (t) => {
  for (let i = 0; i < 200; i++) {
    const password = generatePassword()
    if (!/^(?=.*[a-z])(?=.*[A-Z])(?=.*\d)(?=.*-)[A-Za-z0-9-]{20}$/.test(password)) t.fail(`bad password ${password}`)
  }
  t.pass('200 passwords checked')
})

void t.test('router: params, rest segments with slashes, trailing slashes, first match wins', async (t) => {
  const router = new Router<string, string>()
    .add('roles', { list: async () => 'list' })
    .add('roles/:name', { read: async () => 'role' })
    .add('data/*path', { read: async () => 'data' })
  t.same(router.match('roles/')?.params, {})
  t.same(router.match('roles/app-rw')?.params, { name: 'app-rw' })
  t.equal(router.match('roles/a/b'), undefined)
  t.equal(router.match('roles/-x'), undefined, 'a :param is a Vault name: \\w, then [\\w.-], ending in \\w')
  t.equal(router.match('roles/x.'), undefined)
  t.same(router.match('roles/a.b_c-d')?.params, { name: 'a.b_c-d' })
  t.same(router.match('data/a/b/')?.params, { path: 'a/b/' })
  t.equal(router.match('nothing'), undefined)
})

void t.test(
  'the HTTP/1.1 server accepts LIST, keep-alive, pipelining, chunked bodies and Expect: 100-continue',
  async (t) => {
    const server = new Http1Server(async (req) => ({
      status: 200,
      headers: {},
      body: `${req.method} ${req.target} ${req.body.toString()}`,
    }))
    const port = await server.listen(0, '127.0.0.1')
    t.teardown(() => server.close())
    const exchange = (payload: string, waitFor: RegExp) =>
      new Promise<string>((resolve, reject) => {
        const socket = net.connect(port, '127.0.0.1', () => socket.write(payload))
        let received = ''
        socket.on('data', (chunk) => {
          received += chunk.toString()
          if (waitFor.test(received)) {
            socket.destroy()
            resolve(received)
          }
        })
        socket.on('error', reject)
      })
    const pipelined = await exchange(
      'LIST /v1/a HTTP/1.1\r\nHost: x\r\n\r\nPOST /v1/b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n',
      /POST \/v1\/b abcde/,
    )
    t.match(
      pipelined,
      /^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\nLIST \/v1\/a [\s\S]*HTTP\/1\.1 200 OK[\s\S]*POST \/v1\/b abcde$/,
    )
    const continued = await exchange(
      'PUT /v1/c HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n',
      /100 Continue/,
    )
    t.match(continued, /^HTTP\/1\.1 100 Continue\r\n\r\n/)
    const bad = await exchange('NOT HTTP\r\n\r\n', /400/)
    t.match(bad, /^HTTP\/1\.1 400 Bad Request/)
  },
)

void t.test('glob matches as go-glob does, and as an anchored regular expression would', async (t) => {
  t.ok(glob('db-*', 'db-migrations'))
  t.notOk(glob('db-*', 'app-db-x'), 'no leading * means a prefix')
  t.ok(glob('*-rw', 'app-rw'))
  t.ok(glob('a*b*c', 'abc'))
  t.notOk(glob('a*a', 'a'), 'parts may not overlap')
  t.ok(glob('*', ''))
  t.notOk(glob('', 'x'))
  t.ok(matchesGlobList(['x', 'app-*'], 'app-1'))
  // The property: the same answers as ^…$ with .* for each *, on a small alphabet where parts repeat.
  const text = fc.string({ unit: fc.constantFrom('a', 'b', '*'), maxLength: 8 })
  fc.assert(
    fc.property(text, fc.string({ unit: fc.constantFrom('a', 'b'), maxLength: 10 }), (pattern, value) => {
      const re = new RegExp(`^${pattern.split('*').join('.*')}$`)
      return glob(pattern, value) === re.test(value)
    }),
    { numRuns: 2000 },
  )
})

void t.test(
  'rate-limit windows: round(rate) per interval from the first request, per client, then blocked',
  async (t) => {
    let now = 1_000_000
    const quotas = new RateLimitQuotas(() => now)
    quotas.config.enableRateLimitResponseHeaders = true
    quotas.set({ name: 'q', path: '', rate: 2.4, intervalSeconds: 10, blockIntervalSeconds: 0, inheritable: true })
    const take = (client = '10.0.0.1') => quotas.apply('secret/data/x', client)
    t.same([take().allowed, take().allowed, take().allowed], [true, true, false], 'round(2.4) = 2 per window')
    t.same(take('10.0.0.2').headers, {
      'X-Ratelimit-Limit': '2',
      'X-Ratelimit-Remaining': '1',
      'X-Ratelimit-Reset': '10',
    })
    now += 3_500
    const refused = take()
    t.equal(refused.headers['Retry-After'], '6', 'whole seconds to the window end, truncated')
    now += 6_500
    t.equal(take().allowed, true, 'a new window')
    t.equal(quotas.apply('sys/health', '10.0.0.1').allowed, true, 'exempt')
    t.same(quotas.apply('sys/health', '10.0.0.1').headers, {}, 'exempt paths get no headers')

    quotas.set({ name: 'q', path: '', rate: 1, intervalSeconds: 1, blockIntervalSeconds: 60, inheritable: true })
    t.equal(take().allowed, true)
    t.equal(take().headers['Retry-After'], '60', 'blocked for block_interval')
    now += 30_000
    t.same([take().allowed, take().headers['Retry-After']], [false, '30'], 'still blocked, whatever the windows')
    now += 30_000
    t.equal(take().allowed, true, 'unblocked')

    quotas.set({
      name: 'mount',
      path: 'auth/approle/',
      rate: 1,
      intervalSeconds: 60,
      blockIntervalSeconds: 0,
      inheritable: false,
    })
    t.equal(quotas.apply('auth/approle/login', 'c').allowed, true)
    t.equal(quotas.apply('auth/approle/login', 'c').allowed, false, 'the mount quota, not the global one, applies')
    t.throws(
      () =>
        quotas.set({
          name: 'other',
          path: 'auth/approle/',
          rate: 5,
          intervalSeconds: 1,
          blockIntervalSeconds: 0,
          inheritable: false,
        }),
      { errors: ['quota rule with similar properties exists under the name "mount"'] },
    )
  },
)

void t.test('key identifiers: any bytes give ids or "", never an exception', async (t) => {
  t.same(keyIdentifiers(Buffer.alloc(0)), { subjectKeyId: '', authorityKeyId: '' })
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
      const ids = keyIdentifiers(Buffer.from(bytes))
      return typeof ids.subjectKeyId === 'string' && typeof ids.authorityKeyId === 'string'
    }),
    { numRuns: 3000 },
  )
})
