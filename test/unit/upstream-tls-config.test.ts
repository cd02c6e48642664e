import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import t from 'tap'
import { ConfigError, loadConfig, type Config } from '../../src/config/load-config.js'
import { ConfigReloader } from '../../src/ops/config-reload.js'
import { createLogger } from '../../src/ops/logger.js'
import type { ProxyServer } from '../../src/proxy/proxy-server.js'
import { UpstreamEndpoint } from '../../src/proxy/upstream-endpoint.js'

// upstream.sslrootcert "system" and upstream.channel_binding as libpq reads them
// (src/interfaces/libpq/fe-connect.c): "system" only with verify-full, which it makes the default.

const dir = await mkdtemp(join(tmpdir(), 'pgvp-tls-config-'))
t.teardown(() => rm(dir, { recursive: true, force: true }))
let n = 0
async function file(upstream: string): Promise<string> {
  const path = join(dir, `c${n++}.yaml`)
  await writeFile(
    path,
    `owner_role: app_owner\nupstream: ${upstream}\ncredentials: { static: { username: u, password_file: /p } }\n`,
  )
  return path
}

async function problems(upstream: string, env: Record<string, string> = {}): Promise<string[]> {
  try {
    await loadConfig(await file(upstream), {}, env)
    return []
  } catch (err) {
    if (err instanceof ConfigError) return err.problems
    throw err
  }
}

const systemProblem = (mode: string): RegExp =>
  new RegExp(
    `^upstream\\.sslrootcert: "system" trusts every public CA for any host name, so \\(as in libpq\\) it needs upstream\\.sslmode verify-full, not ${mode}`,
  )

void t.test('sslrootcert system: refused with every sslmode but verify-full, naming the key', async (t) => {
  for (const mode of ['require', 'verify-ca', 'prefer', 'allow']) {
    const found = await problems(`{ host: db.example.com, sslmode: ${mode}, sslrootcert: system }`)
    t.equal(found.length, 1, mode)
    t.match(found[0], systemProblem(mode), mode)
  }
  // disable is refused by the TLS-files rule as well.
  const disabled = await problems('{ host: db.example.com, sslmode: disable, sslrootcert: system }')
  t.ok(
    disabled.some((p) => systemProblem('disable').test(p)),
    'disable',
  )
  t.match(
    await problems('{ host: db.example.com, sslrootcert: system }', { PGVP_UPSTREAM_SSLMODE: 'require' }),
    [systemProblem('require')],
    'from the environment too',
  )
})

void t.test('sslrootcert system: verify-full is accepted, and is the default sslmode with it', async (t) => {
  const explicit = await loadConfig(
    await file('{ host: db.example.com, sslmode: verify-full, sslrootcert: system }'),
    {},
    {},
  )
  t.equal(explicit.upstream.sslmode, 'verify-full')
  const implied = await loadConfig(await file('{ host: db.example.com, sslrootcert: system }'), {}, {})
  t.equal(implied.upstream.sslmode, 'verify-full', 'libpq: sslrootcert=system changes the default sslmode')
  const endpoint = new UpstreamEndpoint(implied.upstream)
  t.equal(endpoint.sslmode, 'verify-full')
  t.ok(endpoint.verifiesHostName, 'the host name is checked')
  t.equal(endpoint.tlsOptions(undefined as never).rejectUnauthorized, true, 'the chain is checked')

  const plain = await loadConfig(await file('{ host: db.example.com }'), {}, {})
  t.equal(plain.upstream.sslmode, 'prefer', 'without sslrootcert the default stays prefer')
  const routed = await loadConfig(
    await file('{ host: db.example.com }\nroutes: [{ name: a, upstream: { sslrootcert: system } }]'),
    {},
    {},
  )
  t.equal(routed.routes[0]?.config.upstream.sslmode, 'verify-full', 'per route, after merging')
})

void t.test('channel_binding require needs TLS: refused with sslmode disable and over a Unix socket', async (t) => {
  t.match(await problems('{ host: db, sslmode: disable, channel_binding: require }'), [
    /^upstream\.channel_binding: channel_binding require needs TLS/,
  ])
  t.match(await problems('{ host: /var/run/postgresql, channel_binding: require }'), [
    /^upstream\.channel_binding: channel_binding require needs TLS, which is never used over a Unix socket/,
  ])
  t.same(await problems('{ host: db, sslmode: require, channel_binding: require }'), [])
})

void t.test(
  'a reload to sslrootcert system with sslmode require is refused, naming the key; the running config stays',
  async (t) => {
    const path = await file('{ host: db.example.com, sslmode: verify-full, sslrootcert: system }')
    const initial: Config = await loadConfig(path, {}, {})
    const lines: Array<Record<string, unknown>> = []
    const logger = createLogger(
      'info',
      new Writable({
        write(chunk: Buffer, _encoding, done) {
          for (const line of chunk.toString().split('\n'))
            if (line) lines.push(JSON.parse(line) as Record<string, unknown>)
          done()
        },
      }),
    )
    const outcomes: string[] = []
    // A refused configuration is never built, so the server is only told the outcome.
    const server = { metrics: { configReload: (outcome: string) => outcomes.push(outcome) } } as unknown as ProxyServer
    const reloader = new ConfigReloader(initial, { server, logger, load: () => loadConfig(path, {}, {}) })
    await writeFile(
      path,
      'owner_role: app_owner\nupstream: { host: db.example.com, sslmode: require, sslrootcert: system }\ncredentials: { static: { username: u, password_file: /p } }\n',
    )
    t.equal(await reloader.reload(), false)
    t.same(outcomes, ['refused'])
    const refused = lines.find(
      (l) => l.msg === 'configuration reload refused; the running configuration stays in force',
    )
    t.match(refused?.problems, [systemProblem('require')])
    t.equal(reloader.config.upstream.sslmode, 'verify-full')
  },
)
