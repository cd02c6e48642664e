import t from 'tap'
import { execConfig, ExecRouteError } from '../../src/cli/exec-config.js'
import { execEnvironment } from '../../src/cli/exec-environment.js'
import { listenersOf } from '../../src/proxy/create-proxy-server.js'
import { parseConfig } from '../../src/config/load-config.js'

void t.test("exec's command gets libpq's variables for the private proxy and none of the secrets", async (t) => {
  const inherited = {
    PATH: '/usr/bin',
    HOME: '/home/u',
    PGAPPNAME: 'migrate',
    PGCONNECT_TIMEOUT: '5',
    PGVP_CREDENTIALS_STATIC_PASSWORD: 'static-secret',
    PGVP_VAULT_AUTH_SECRET_ID: 'secret-id',
    PGVP_LOG_LEVEL: 'debug',
    VAULT_TOKEN: 'hvs.token',
    VAULT_ADDR: 'https://vault:8200',
    PGPASSWORD: 'other-server-password',
    PGPASSFILE: '/home/u/.pgpass',
    PGSERVICEFILE: '/home/u/.pg_service.conf',
    PGSERVICE: 'prod',
    PGHOSTADDR: '192.0.2.10',
    PGHOST: 'db.elsewhere',
    PGPORT: '5432',
    PGUSER: 'someone',
    PGDATABASE: 'other',
    PGSSLMODE: 'verify-full',
    DATABASE_URL: 'postgresql://someone:pw@db.elsewhere/other',
  }
  const env = execEnvironment(inherited, { port: 40123, database: 'app db' })
  t.same(env, {
    PATH: '/usr/bin',
    HOME: '/home/u',
    PGAPPNAME: 'migrate',
    PGCONNECT_TIMEOUT: '5',
    PGHOST: '127.0.0.1',
    PGPORT: '40123',
    PGDATABASE: 'app db',
    PGUSER: 'pg-vault-proxy',
    PGSSLMODE: 'disable',
    DATABASE_URL: 'postgresql://pg-vault-proxy@127.0.0.1:40123/app%20db?sslmode=disable',
  })
  for (const secret of ['static-secret', 'secret-id', 'hvs.token', 'other-server-password', 'pw@'])
    t.notOk(JSON.stringify(env).includes(secret), `${secret} is withheld`)
})

void t.test('exec serves one route on a free loopback port and a private socket directory, no ops', async (t) => {
  const base = {
    listen: '0.0.0.0:6432',
    allow_remote: true,
    socket_dir: '/run/shared',
    socket_mode: '0777',
    ops: { listen: '127.0.0.1:9187' },
    owner_role: 'app_owner',
    upstream: { host: 'db' },
    credentials: { static: { username: 'u', password_file: '/p' } },
  }
  const single = execConfig(parseConfig(base), '/tmp/private')
  t.same(single.listen, { host: '127.0.0.1', port: 0 })
  t.equal(single.allow_remote, false)
  t.equal(single.ops.enabled, false)
  t.same(listenersOf(single), [{ listen: { host: '127.0.0.1', port: 0 }, socketDir: '/tmp/private' }])
  t.equal(single.routes[0]?.config.socket_mode, '0700')

  const routed = parseConfig({
    ...base,
    routes: [
      { name: 'app', users: ['app'], listen: '127.0.0.1:6432' },
      { name: 'reports', users: ['reports'], listen: '127.0.0.1:6433', owner_role: 'reports_owner' },
    ],
  })
  const first = execConfig(routed, '/tmp/private')
  t.same(
    first.routes.map((r) => [r.name, r.users, r.config.owner_role]),
    [['app', undefined, 'app_owner']],
    'the first route, for every user name',
  )
  const reports = execConfig(routed, '/tmp/private', 'reports')
  t.equal(reports.owner_role, 'reports_owner')
  t.same(listenersOf(reports), [{ listen: { host: '127.0.0.1', port: 0 }, socketDir: '/tmp/private' }])
  t.throws(
    () => execConfig(routed, '/tmp/private', 'nope'),
    new ExecRouteError('exec: no route named "nope" (the configuration has "app", "reports")'),
  )
})
