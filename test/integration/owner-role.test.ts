import t from 'tap'
import { clusterFor } from '../support/pg-cluster.js'
import { startProxy } from '../support/proxy-harness.js'

// Every session acts as the owner role from its first statement, and stays so.
const cluster = await clusterFor(t)

void t.test('current_user is the owner, session_user the login user, through RESET ROLE and DISCARD ALL', async (t) => {
  const proxy = await startProxy(t, cluster)
  const client = await proxy.client({ user: 'whoever-the-app-says' })
  const who = async (): Promise<{ current_user: string; session_user: string }> =>
    (await client.query<{ current_user: string; session_user: string }>('select current_user, session_user')).rows[0]!
  t.same(await who(), { current_user: 'app_owner', session_user: 'scram_user' })
  await client.query('RESET ROLE')
  t.equal((await who()).current_user, 'app_owner', 'RESET ROLE returns to the owner')
  await client.query('DISCARD ALL')
  t.equal((await who()).current_user, 'app_owner', 'DISCARD ALL returns to the owner')
  await client.query('SET SESSION AUTHORIZATION DEFAULT')
  t.equal((await who()).current_user, 'app_owner', 'SET SESSION AUTHORIZATION DEFAULT returns to the owner')
  await client.query('create table owned_by_owner (id int)')
  const owner = await cluster.query<{ tableowner: string }>(
    "select tableowner from pg_tables where tablename = 'owned_by_owner'",
  )
  t.equal(owner[0]?.tableowner, 'app_owner', 'a table created through the proxy belongs to the owner role')
})

void t.test('a client cannot choose its role through startup parameters or options', async (t) => {
  const proxy = await startProxy(t, cluster)
  const client = await proxy.client({ options: '-c statement_timeout=1234' })
  const row = (
    await client.query<{ current_user: string; st: string }>(
      "select current_user, current_setting('statement_timeout') as st",
    )
  ).rows[0]
  t.same(row, { current_user: 'app_owner', st: '1234ms' }, 'other options are passed on')
  const err = (await proxy.client({ options: '-c role=scram_user' }).catch((e: unknown) => e)) as Record<string, string>
  t.equal(err.code, '42501', 'an options switch that sets role is refused')
  t.match(err.message, /sets role/)
})

void t.test('a mixed-case owner role with a space works as is', async (t) => {
  const proxy = await startProxy(t, cluster, { owner_role: cluster.mixedCaseOwnerRole })
  const client = await proxy.client()
  t.equal((await client.query<{ u: string }>('select current_user as u')).rows[0]?.u, 'App Owner')
})

void t.test('a missing owner role reaches the client as the upstream FATAL with a hint', async (t) => {
  const proxy = await startProxy(t, cluster, { owner_role: 'no_such_owner' })
  const err = (await proxy.client().catch((e: unknown) => e)) as Record<string, string>
  t.equal(err.severity, 'FATAL')
  t.match(err.message, /no_such_owner/)
  t.match(err.hint, /CREATE ROLE "no_such_owner" NOLOGIN/)
  t.ok(err.code === '22023' || err.code === '42704', `SQLSTATE ${err.code}`)
})

void t.test('a login user without membership gets 42501 and the GRANT that fixes it', async (t) => {
  const proxy = await startProxy(t, cluster, {
    credentials: { static: { username: cluster.users.nomember.user, password: cluster.users.nomember.password } },
  })
  const err = (await proxy.client().catch((e: unknown) => e)) as Record<string, string>
  t.equal(err.code, '42501')
  t.equal(err.severity, 'FATAL')
  t.match(err.hint, 'GRANT "app_owner" TO "nomember_user"')
})
