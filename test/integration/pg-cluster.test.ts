// Smoke test for the test harness itself: the throwaway cluster accepts every
// upstream auth method the proxy relies on, and leaves nothing behind.
import { existsSync, readFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import pg from 'pg'
import t from 'tap'
import { clusterFor } from '../support/pg-cluster.js'

const cluster = await clusterFor(t)
const ca = await readFile(cluster.tls.caFile)

/** Connects over TCP as the given login and runs one query. */
async function queryAs<T extends pg.QueryResultRow>(config: pg.ClientConfig, sql: string): Promise<T[]> {
  const client = new pg.Client({ host: cluster.host, port: cluster.port, database: cluster.database, ...config })
  await client.connect()
  try {
    return (await client.query<T>(sql)).rows
  } finally {
    await client.end()
  }
}

async function currentUser(config: pg.ClientConfig): Promise<string | undefined> {
  const rows = await queryAs<{ current_user: string }>(config, 'select current_user')
  return rows[0]?.current_user
}

async function storedVerifier(role: string): Promise<string> {
  const rows = await cluster.query<{ rolpassword: string }>('select rolpassword from pg_authid where rolname = $1', [
    role,
  ])
  return rows[0]?.rolpassword ?? ''
}

/** False once the process is gone or only a zombie is left (init reaps the orphaned postmaster, sometimes late). */
function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
  } catch {
    return false
  }
  const stat = existsSync(`/proc/${pid}/stat`) ? readFileSync(`/proc/${pid}/stat`, 'utf8') : ''
  return !/\) Z /.test(stat)
}

void t.test('scram_user logs in with SCRAM over plain TCP', async (t) => {
  const { user, password } = cluster.users.scram
  t.equal(await currentUser({ user, password, ssl: false }), user)
  t.match(await storedVerifier(user), /^SCRAM-SHA-256\$/)
})

void t.test('md5_user logs in with an MD5-stored password', async (t) => {
  const { user, password } = cluster.users.md5
  t.equal(await currentUser({ user, password, ssl: false }), user)
  t.match(await storedVerifier(user), /^md5[0-9a-f]{32}$/)
})

void t.test('password_user logs in with cleartext password auth', async (t) => {
  const { user, password } = cluster.users.password
  t.equal(await currentUser({ user, password, ssl: false }), user)
})

void t.test('pg_hba.conf rules are in the intended order', async (t) => {
  const rows = await cluster.query<{ type: string; user_name: string[]; auth_method: string }>(
    'select type, user_name, auth_method from pg_hba_file_rules order by line_number',
  )
  t.same(
    rows.map((r) => [r.type, r.user_name[0], r.auth_method]),
    [
      ['local', 'all', 'trust'],
      ['hostssl', 'cert_user', 'cert'],
      ['host', 'md5_user', 'md5'],
      ['host', 'password_user', 'password'],
      ['host', 'all', 'scram-sha-256'],
    ],
  )
})

void t.test('cert_user logs in with a client certificate over TLS', async (t) => {
  const ssl = {
    ca,
    cert: await readFile(cluster.tls.clientCertFile),
    key: await readFile(cluster.tls.clientKeyFile),
    servername: cluster.tls.serverName,
  }
  t.equal(await currentUser({ user: cluster.users.cert.user, ssl }), cluster.users.cert.user)
  await t.rejects(
    currentUser({ user: cluster.users.cert.user, ssl: { ca, servername: cluster.tls.serverName } }),
    { code: '28000' },
    'no client certificate, no login',
  )
})

void t.test('TLS with CA verification is really TLS; a wrong CA is rejected', async (t) => {
  const { user, password } = cluster.users.scram
  const rows = await queryAs<{ ssl: boolean }>(
    { user, password, ssl: { ca, servername: cluster.tls.serverName } },
    'select ssl from pg_stat_ssl where pid = pg_backend_pid()',
  )
  t.same(rows, [{ ssl: true }])
  const wrongCa = await readFile(cluster.tls.wrongCaFile)
  await t.rejects(currentUser({ user, password, ssl: { ca: wrongCa, servername: cluster.tls.serverName } }))
})

void t.test('roles and database', async (t) => {
  const membership = await cluster.query<{ role: string; owner: boolean; mixed: boolean }>(
    `select r.rolname as role, pg_has_role(r.rolname, $1, 'member') as owner, pg_has_role(r.rolname, $2, 'member') as mixed
       from pg_roles r where r.rolname = any($3) order by r.rolname`,
    [cluster.ownerRole, cluster.mixedCaseOwnerRole, Object.values(cluster.users).map((u) => u.user)],
  )
  t.same(membership, [
    { role: 'cert_user', owner: true, mixed: true },
    { role: 'md5_user', owner: true, mixed: true },
    { role: 'nomember_user', owner: false, mixed: false },
    { role: 'password_user', owner: true, mixed: true },
    { role: 'scram_user', owner: true, mixed: true },
  ])

  const [db] = await cluster.query<{ owner: string }>(
    'select pg_get_userbyid(datdba) as owner from pg_database where datname = $1',
    [cluster.database],
  )
  t.equal(db?.owner, cluster.ownerRole)

  // The owner role can create tables in appdb.public.
  const { user, password } = cluster.users.scram
  await queryAs({ user, password }, `set role ${pg.escapeIdentifier(cluster.ownerRole)}; create table smoke (id int)`)
  const [table] = await cluster.query<{ owner: string }>(
    "select tableowner as owner from pg_tables where schemaname = 'public' and tablename = 'smoke'",
  )
  t.equal(table?.owner, cluster.ownerRole)
})

void t.test('a wrong password is rejected with 28P01', async (t) => {
  await t.rejects(currentUser({ user: cluster.users.scram.user, password: 'wrong', ssl: false }), { code: '28P01' })
})

void t.test('stop() shuts the server down, removes the temp dir, and is idempotent', async (t) => {
  const pidFile = await readFile(path.join(cluster.dataDir, 'postmaster.pid'), 'utf8')
  const pid = Number(pidFile.split('\n')[0])
  await cluster.stop()
  t.notOk(isAlive(pid), 'postmaster is gone')
  await t.rejects(currentUser({ ...cluster.users.scram, ssl: false }), { code: 'ECONNREFUSED' }, 'port closed')
  t.notOk(existsSync(path.dirname(cluster.dataDir)), 'temp dir removed')
  await cluster.stop() // teardown calls it again, too
})
