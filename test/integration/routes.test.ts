import { Writable } from 'node:stream'
import pg from 'pg'
import t from 'tap'
import { freePort } from '../support/free-port.js'
import { clusterFor } from '../support/pg-cluster.js'
import { startProxy } from '../support/proxy-harness.js'

// Several routes in one process: each with its own listener, owner role and credentials, or chosen
// by the client's user name on a shared listener.
const cluster = await clusterFor(t)

async function whoAs(port: number, user: string): Promise<{ current: string; session: string }> {
  const client = new pg.Client({ host: '127.0.0.1', port, user, database: cluster.database })
  client.on('error', () => {})
  await client.connect()
  try {
    return (
      await client.query<{ current: string; session: string }>(
        'select current_user as current, session_user as session',
      )
    ).rows[0]!
  } finally {
    await client.end()
  }
}

const md5Login = { static: { username: cluster.users.md5.user, password: cluster.users.md5.password } }

void t.test('two routes on two listeners, each with its owner role and credentials', async (t) => {
  const [portA, portB] = [await freePort(), await freePort()]
  const proxy = await startProxy(t, cluster, {
    routes: [
      { name: 'app', listen: `127.0.0.1:${portA}` },
      { name: 'reports', listen: `127.0.0.1:${portB}`, owner_role: cluster.mixedCaseOwnerRole, credentials: md5Login },
    ],
  })
  t.same(await whoAs(portA, 'x'), { current: 'app_owner', session: 'scram_user' })
  t.same(await whoAs(portB, 'x'), { current: 'App Owner', session: 'md5_user' })
  t.same(
    proxy.server.status().routes.map((r) => [r.name, r.ownerRole]),
    [
      ['app', 'app_owner'],
      ['reports', 'App Owner'],
    ],
  )
  const ended = proxy.logs.filter((l) => l.msg === 'session ended').map((l) => l.route)
  t.same(ended.sort(), ['app', 'reports'], 'the audit line names the route')
})

void t.test('one listener, the route chosen by the client user name', async (t) => {
  const port = await freePort()
  await startProxy(t, cluster, {
    routes: [
      {
        name: 'reports',
        listen: `127.0.0.1:${port}`,
        users: ['reporter', 'analyst'],
        owner_role: cluster.mixedCaseOwnerRole,
        credentials: md5Login,
      },
      { name: 'app', listen: `127.0.0.1:${port}` },
    ],
  })
  t.same(await whoAs(port, 'reporter'), { current: 'App Owner', session: 'md5_user' })
  t.same(await whoAs(port, 'analyst'), { current: 'App Owner', session: 'md5_user' })
  t.same(
    await whoAs(port, 'anyone-else'),
    { current: 'app_owner', session: 'scram_user' },
    'the route without users takes the rest',
  )
})

void t.test('a user no route on the listener serves is refused with 28000, not told who may connect', async (t) => {
  const port = await freePort()
  const proxy = await startProxy(t, cluster, {
    routes: [{ name: 'only', listen: `127.0.0.1:${port}`, users: ['app', 'secret-admin-name'] }],
  })
  t.equal((await whoAs(port, 'app')).current, 'app_owner')
  const err = (await whoAs(port, 'stranger').catch((e: unknown) => e)) as Record<string, string>
  t.equal(err.code, '28000')
  t.equal(err.message, 'pg-vault-proxy has no route for user "stranger" on this listener')
  t.match(err.hint, 'routes[].users', 'the hint names the configuration key')
  t.notMatch(JSON.stringify(err), /secret-admin-name|"app"|: app/, 'no routed user name reaches the client')
  const line = proxy.logs.find((l) => l.msg === 'no route for the client user on this listener')
  t.same(line?.routedUsers, ['app', 'secret-admin-name'], "the operator's log lists them")
  t.equal(line?.clientUser, 'stranger')
})

void t.test('the connection limit counts per route', async (t) => {
  const port = await freePort()
  await startProxy(t, cluster, {
    max_client_connections: 1,
    routes: [
      { name: 'a', listen: `127.0.0.1:${port}`, users: ['a'] },
      { name: 'b', listen: `127.0.0.1:${port}`, users: ['b'] },
    ],
  })
  const holdA = new pg.Client({ host: '127.0.0.1', port, user: 'a', database: cluster.database })
  await holdA.connect()
  t.teardown(() => holdA.end())
  t.equal((await whoAs(port, 'b')).current, 'app_owner', 'route b still has room')
  const err = (await whoAs(port, 'a').catch((e: unknown) => e)) as Record<string, string>
  t.equal(err.code, '53300', 'route a is full')
})

void t.test('a reload changes a route for new sessions and keeps unchanged credential sources', async (t) => {
  const port = await freePort()
  const routes = [
    {
      name: 'reports',
      listen: `127.0.0.1:${port}`,
      users: ['reporter'],
      owner_role: cluster.mixedCaseOwnerRole,
      credentials: md5Login,
    },
    { name: 'app', listen: `127.0.0.1:${port}` },
  ]
  const proxy = await startProxy(t, cluster, { routes })
  const before = new Map(proxy.server.currentRoutes.map((r) => [r.name, r.credentials]))
  t.equal((await whoAs(port, 'reporter')).current, 'App Owner')
  const { ConfigReloader } = await import('../../src/ops/config-reload.js')
  const { parseConfig } = await import('../../src/config/load-config.js')
  const { createLogger } = await import('../../src/ops/logger.js')
  const quiet = createLogger('silent', new Writable({ write: (_chunk, _encoding, done) => done() }))
  const raw = {
    listen: `127.0.0.1:${port}`,
    owner_role: cluster.ownerRole,
    upstream: { host: cluster.host, port: cluster.port, sslmode: 'disable' },
    credentials: proxy.config.routes[1]?.config.credentials,
    routes: [{ ...routes[0], owner_role: cluster.ownerRole }, routes[1]],
  }
  const reloader = new ConfigReloader(proxy.config, {
    server: proxy.server,
    logger: quiet,
    load: () => Promise.resolve(parseConfig(raw)),
  })
  t.equal(await reloader.reload(), true)
  t.equal((await whoAs(port, 'reporter')).current, 'app_owner', 'the changed owner role applies to a new session')
  const after = new Map(proxy.server.currentRoutes.map((r) => [r.name, r.credentials]))
  t.equal(after.get('app'), before.get('app'), 'route app kept its credential source')
  t.equal(after.get('reports'), before.get('reports'), 'route reports too: its credentials did not change')
  const moved = { ...raw, routes: [{ ...routes[1], listen: `127.0.0.1:${await freePort()}` }] }
  const refused = new ConfigReloader(proxy.config, {
    server: proxy.server,
    logger: quiet,
    load: () => Promise.resolve(parseConfig(moved)),
  })
  t.equal(await refused.reload(), false, 'a route on a listener that is not open needs a restart')
})
