/**
 * Database secrets engine, dynamic side (builtin/logical/database, plugins/database/postgresql): config writes and reads, role
 * reads, creds with their lease and username formats, the real user they create in PostgreSQL,
 * and every error creds can give, with Vault's codes and texts.
 */
import pg from 'pg'
import t from 'tap'
import { clusterFor } from '../support/pg-cluster.js'
import type { PgCluster } from '../support/pg-cluster.js'
import { ENVELOPE_KEYS, vaultAdminFor, vaultFor } from '../support/vault-target.js'

const cluster = await clusterFor(t)

interface Envelope {
  lease_id: string
  renewable: boolean
  lease_duration: number
  data: Record<string, unknown> | null
  warnings: string[] | null
  mount_type: string
}

interface Creds {
  username: string
  password: string
}

/** Logs in over TCP (scram) as the given user; resolves the connected client or rejects with why not. */
async function login(c: PgCluster, user: string, password: string): Promise<pg.Client> {
  const client = new pg.Client({ host: c.host, port: c.port, database: c.database, user, password })
  await client.connect()
  return client
}

async function roleRow(user: string): Promise<{ rolvaliduntil: Date | null; owner_member: boolean } | undefined> {
  const rows = await cluster.query<{ rolvaliduntil: Date | null; owner_member: boolean }>(
    `SELECT r.rolvaliduntil, pg_has_role(r.rolname, $2, 'MEMBER') AS owner_member FROM pg_roles r WHERE r.rolname = $1`,
    [user, cluster.ownerRole],
  )
  return rows[0]
}

void t.test(
  'creds: envelope, lease id, username and password formats, and a real user valid until lease end + 5 s',
  async (t) => {
    const vault = await vaultFor(t, cluster)
    const db = await vault.database()
    await db.createDynamicRole({ name: 'app-rw', defaultTtl: 60, maxTtl: 120 })

    const before = Date.now()
    const reply = await vault.request('GET', `${db.mount}/creds/app-rw`)
    t.equal(reply.status, 200)
    const body = reply.json as Envelope
    t.same(Object.keys(body), ENVELOPE_KEYS)
    t.match(body.lease_id, new RegExp(`^${db.mount}/creds/app-rw/[0-9A-Za-z]{24}$`))
    t.same(
      { renewable: body.renewable, lease_duration: body.lease_duration, warnings: body.warnings },
      { renewable: true, lease_duration: 60, warnings: null },
    )
    t.equal(body.mount_type, 'database')
    t.same(Object.keys(body.data!), ['password', 'username'])
    const creds = body.data as unknown as Creds
    t.match(creds.username, /^v-root-app-rw-[0-9A-Za-z]{20}-\d{10}$/, 'v-<display 8>-<role 8>-<random 20>-<unix time>')
    t.ok(Math.abs(Number(creds.username.slice(-10)) - before / 1000) < 5, 'the suffix is the unix time of creation')
    t.match(creds.password, /^[A-Za-z0-9-]{20}$/)
    for (const set of [/[a-z]/, /[A-Z]/, /[0-9]/, /-/]) t.match(creds.password, set, `password has ${String(set)}`)

    const role = await roleRow(creds.username)
    t.ok(role, 'the user exists in PostgreSQL')
    t.equal(role?.owner_member, true, 'and is a member of the owner role')
    const validUntil = role!.rolvaliduntil!.getTime()
    const expected = before + (60 + 5) * 1000
    t.ok(Math.abs(validUntil - expected) < 3000, `VALID UNTIL ${role!.rolvaliduntil!.toISOString()} ≈ now + 65 s`)

    const client = await login(cluster, creds.username, creds.password)
    await client.query(`SET ROLE ${pg.escapeIdentifier(cluster.ownerRole)}`)
    t.equal((await client.query<{ u: string }>('SELECT current_user AS u')).rows[0]?.u, cluster.ownerRole)
    await client.end()
  },
)

void t.test('creds error order and texts: unknown role, missing config, role not allowed, policy denial', async (t) => {
  const vault = await vaultFor(t, cluster)
  const db = await vault.database({ allowedRoles: ['app-rw', 'orphan'] })
  await db.createDynamicRole({ name: 'app-rw', defaultTtl: 60, maxTtl: 60 })
  await db.createDynamicRole({ name: 'not-listed', defaultTtl: 60, maxTtl: 60 })
  // db_name is not checked at write time; a role not in allowed_roles and without a config
  // shows which check comes first.
  await vault.call('POST', `${db.mount}/roles/orphan`, { db_name: 'nodb', creation_statements: 'SELECT 1' })
  await vault.call('POST', `${db.mount}/roles/orphan-not-allowed`, { db_name: 'nodb', creation_statements: 'SELECT 1' })

  const badName = await vault.request('GET', `${db.mount}/creds/-not-a-name`)
  t.equal(badName.status, 404)
  t.same(badName.json, { errors: ['1 error occurred:\n\t* unsupported path\n\n'] }, 'names follow GenericNameRegex')
  const unknown = await vault.request('GET', `${db.mount}/creds/nope`)
  t.equal(unknown.status, 400)
  t.equal(unknown.text, '{"errors":["unknown role: nope"]}\n')

  const noConfig = await vault.request('GET', `${db.mount}/creds/orphan`)
  t.equal(noConfig.status, 500)
  t.same(noConfig.json, {
    errors: ['1 error occurred:\n\t* failed to find entry for connection with name: "nodb"\n\n'],
  })
  const noConfigFirst = await vault.request('GET', `${db.mount}/creds/orphan-not-allowed`)
  t.same(noConfigFirst.json, noConfig.json, 'the missing config is reported before allowed_roles')

  const notAllowed = await vault.request('GET', `${db.mount}/creds/not-listed`)
  t.equal(notAllowed.status, 500)
  t.same(notAllowed.json, { errors: ['1 error occurred:\n\t* "not-listed" is not an allowed role\n\n'] })

  const policy = await vault.policy('creds-app-rw', `path "${db.mount}/creds/app-rw" { capabilities = ["read"] }`)
  const token = (
    (await vault.call('POST', 'auth/token/create', { policies: [policy], ttl: '5m' })).json as {
      auth: { client_token: string }
    }
  ).auth.client_token
  const viaToken = await vault.request('GET', `${db.mount}/creds/app-rw`, { token })
  t.equal(viaToken.status, 200)
  t.match((viaToken.json as Envelope).data!.username, /^v-token-app-rw-/, 'named after the token display name')
  const denied = await vault.request('GET', `${db.mount}/creds/not-listed`, { token })
  t.equal(denied.status, 403)
  t.same(denied.json, { errors: ['1 error occurred:\n\t* permission denied\n\n'] })
  const deniedConfig = await vault.request('GET', `${db.mount}/config/appdb`, { token })
  t.equal(deniedConfig.status, 403, 'the narrow policy does not reach the config')
  await vault.call('PUT', 'auth/token/revoke', { token })
})

void t.test('creds when the statements are empty or fail: 500 and nothing left behind', async (t) => {
  const vault = await vaultFor(t, cluster)
  const db = await vault.database()
  await vault.call('POST', `${db.mount}/roles/empty`, { db_name: 'appdb' })
  const empty = await vault.request('GET', `${db.mount}/creds/empty`)
  t.equal(empty.status, 500)
  t.same(empty.json, { errors: ['1 error occurred:\n\t* empty creation statements\n\n'] })

  // The first statement succeeds, the second fails: the transaction must roll the first back.
  await vault.call('POST', `${db.mount}/roles/broken`, {
    db_name: 'appdb',
    creation_statements: [`CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}'; GRANT no_such_role TO "{{name}}";`],
  })
  const before = await cluster.query<{ n: string }>(
    `SELECT count(*) AS n FROM pg_roles WHERE rolname LIKE 'v-root-broken-%'`,
  )
  const broken = await vault.request('GET', `${db.mount}/creds/broken`)
  t.equal(broken.status, 500)
  t.same(broken.json, {
    errors: [
      '1 error occurred:\n\t* failed to execute query: ERROR: role "no_such_role" does not exist (SQLSTATE 42704)\n\n',
    ],
  })
  const after = await cluster.query<{ n: string }>(
    `SELECT count(*) AS n FROM pg_roles WHERE rolname LIKE 'v-root-broken-%'`,
  )
  t.same(after, before, 'the CREATE ROLE was rolled back')
})

void t.test('statements: a JSON array string, base64, and a DO … END block kept whole', async (t) => {
  const vault = await vaultFor(t, cluster)
  const db = await vault.database()
  const owner = pg.escapeIdentifier(cluster.ownerRole)
  const asJson = JSON.stringify([
    `CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`,
    `GRANT ${owner} TO "{{name}}"`,
  ])
  const doBlock = `DO $$ BEGIN CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}'; GRANT ${owner} TO "{{name}}"; END $$;`
  await vault.call('POST', `${db.mount}/roles/json`, { db_name: 'appdb', creation_statements: [asJson] })
  await vault.call('POST', `${db.mount}/roles/b64`, {
    db_name: 'appdb',
    creation_statements: [Buffer.from(asJson).toString('base64')],
  })
  await vault.call('POST', `${db.mount}/roles/block`, { db_name: 'appdb', creation_statements: doBlock })
  for (const role of ['json', 'b64', 'block']) {
    const reply = await vault.request('GET', `${db.mount}/creds/${role}`)
    t.equal(reply.status, 200, `${role}: ${reply.text}`)
    const creds = (reply.json as Envelope).data as unknown as Creds
    t.equal((await roleRow(creds.username))?.owner_member, true, `${role}: the user exists and has the owner role`)
  }
})

void t.test(
  'config: templated and socket URLs, literal password warning, redacted read, verify_connection, bad auth type',
  async (t) => {
    const vault = await vaultFor(t, cluster)
    const db = await vault.database()
    const admin = await vaultAdminFor(cluster)

    const read = (await vault.call('GET', `${db.mount}/config/appdb`)).json as Envelope
    t.same(read.data, {
      allowed_roles: ['*'],
      connection_details: { connection_url: db.connectionUrl, username: admin.user },
      password_policy: '',
      plugin_name: 'postgresql-database-plugin',
      plugin_version: '',
      root_credentials_rotate_statements: [],
    })

    const literal = `postgresql://${admin.user}:${admin.password}@${cluster.host}:${cluster.port}/${cluster.database}`
    const withPassword = await vault.request('POST', `${db.mount}/config/literal`, {
      body: { plugin_name: 'postgresql-database-plugin', connection_url: literal, allowed_roles: '*' },
    })
    t.equal(withPassword.status, 200)
    t.same((withPassword.json as Envelope).warnings, [
      'Password found in connection_url, use a templated url to enable root rotation and prevent read access to password information.',
    ])
    const redacted = (await vault.call('GET', `${db.mount}/config/literal`)).json as Envelope
    t.equal(
      (redacted.data!.connection_details as { connection_url: string }).connection_url,
      `postgresql://${admin.user}:xxxxx@${cluster.host}:${cluster.port}/${cluster.database}`,
    )

    // The Unix-socket form, as the superuser with trust auth; the dev Vault's host reaches the socket.
    const socketUrl = `postgresql://postgres@/${cluster.database}?host=${cluster.socketDir}&port=${cluster.port}`
    t.equal(
      (
        await vault.request('POST', `${db.mount}/config/socket`, {
          body: { plugin_name: 'postgresql-database-plugin', connection_url: socketUrl, allowed_roles: 'via-socket' },
        })
      ).status,
      204,
    )
    await vault.call('POST', `${db.mount}/roles/via-socket`, {
      db_name: 'socket',
      creation_statements: `CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`,
    })
    const socketCreds = (await vault.call('GET', `${db.mount}/creds/via-socket`)).json as Envelope
    const viaSocket = socketCreds.data as unknown as Creds
    const client = await login(cluster, viaSocket.username, viaSocket.password)
    await client.end()
    const sessions = await cluster.query(
      `SELECT 1 FROM pg_stat_activity WHERE application_name = 'vault' AND usename = 'postgres'`,
    )
    t.ok(sessions.length > 0, "Vault's sessions say application_name = 'vault'")

    const wrongPassword = await vault.request('POST', `${db.mount}/config/wrong`, {
      body: {
        plugin_name: 'postgresql-database-plugin',
        connection_url: db.connectionUrl,
        username: admin.user,
        password: 'not-the-password',
      },
    })
    t.equal(wrongPassword.status, 400)
    t.match(
      (wrongPassword.json as { errors: string[] }).errors[0],
      /^error creating database object: error verifying connection: .*password authentication failed/,
    )
    t.notMatch(wrongPassword.text, 'not-the-password', 'the root password never appears in an error')
    t.equal(
      (
        await vault.request('POST', `${db.mount}/config/unverified`, {
          body: {
            plugin_name: 'postgresql-database-plugin',
            connection_url: db.connectionUrl,
            username: 'x',
            password: 'y',
            verify_connection: false,
          },
        })
      ).status,
      204,
      'verify_connection=false accepts a config it cannot log in with',
    )
    const badAuthType = await vault.request('POST', `${db.mount}/config/scramish`, {
      body: {
        plugin_name: 'postgresql-database-plugin',
        connection_url: db.connectionUrl,
        password_authentication: 'md5',
      },
    })
    t.equal(badAuthType.status, 400)
    t.same(badAuthType.json, {
      errors: ["error creating database object: 'md5' is not a valid password authentication type"],
    })
    const noPlugin = await vault.request('POST', `${db.mount}/config/noplugin`, {
      body: { connection_url: db.connectionUrl },
    })
    t.equal(noPlugin.status, 400)
    t.same(noPlugin.json, { errors: ['empty plugin name'] })
    t.equal(
      (await vault.request('GET', `${db.mount}/config/nope`)).text,
      '{"errors":[]}\n',
      'a missing config reads as 404',
    )
  },
)

void t.test('password_authentication scram-sha-256 stores a verifier, and the password still logs in', async (t) => {
  const vault = await vaultFor(t, cluster)
  const db = await vault.database()
  const admin = await vaultAdminFor(cluster)
  await vault.call('POST', `${db.mount}/config/appdb`, {
    password_authentication: 'scram-sha-256',
    username: admin.user,
    password: admin.password,
  })
  await db.createDynamicRole({ name: 'scram', defaultTtl: 60, maxTtl: 60 })
  const creds = ((await vault.call('GET', `${db.mount}/creds/scram`)).json as Envelope).data as unknown as Creds
  const stored = await cluster.query<{ rolpassword: string }>('SELECT rolpassword FROM pg_authid WHERE rolname = $1', [
    creds.username,
  ])
  t.match(stored[0]?.rolpassword, /^SCRAM-SHA-256\$4096:/)
  await (await login(cluster, creds.username, creds.password)).end()
})

void t.test('roles: read shape, partial updates keep fields, dynamic and static names must differ', async (t) => {
  const vault = await vaultFor(t, cluster)
  const db = await vault.database()
  await vault.call('POST', `${db.mount}/roles/shape`, {
    db_name: 'appdb',
    creation_statements: 'SELECT 1',
    default_ttl: '1h',
    max_ttl: 86400,
  })
  await vault.call('POST', `${db.mount}/roles/shape`, { max_ttl: '2h' })
  const read = (await vault.call('GET', `${db.mount}/roles/shape`)).json as Envelope
  t.same(read.data, {
    creation_statements: ['SELECT 1'],
    credential_type: 'password',
    db_name: 'appdb',
    default_ttl: 3600,
    max_ttl: 7200,
    renew_statements: [],
    revocation_statements: [],
    rollback_statements: [],
  })
  t.equal((await vault.request('GET', `${db.mount}/roles/nope`)).status, 404)
  const listed = (await vault.call('LIST', `${db.mount}/roles`)).json as Envelope
  t.same(listed.data, { keys: ['shape'] })
  const noDb = await vault.request('POST', `${db.mount}/roles/nodb`, { body: { creation_statements: 'SELECT 1' } })
  t.same(noDb.json, { errors: ['database name is required'] })

  await cluster.query(`CREATE ROLE shape_static LOGIN PASSWORD 'initial'`)
  await db.createStaticRole('shape-static', 'shape_static', 3600)
  const clash = await vault.request('POST', `${db.mount}/roles/shape-static`, { body: { db_name: 'appdb' } })
  t.equal(clash.status, 400)
  t.same(clash.json, { errors: ['Role and Static Role names must be unique'] })
})

void t.test('username_template on the config replaces the default names', async (t) => {
  const vault = await vaultFor(t, cluster)
  const db = await vault.database()
  await vault.call('POST', `${db.mount}/config/appdb`, {
    username_template: '{{ printf "app-%s-%s" (.RoleName | truncate 4) (random 6) | lowercase }}',
  })
  await db.createDynamicRole({ name: 'Reporting', defaultTtl: 60, maxTtl: 60 })
  const creds = ((await vault.call('GET', `${db.mount}/creds/Reporting`)).json as Envelope).data as unknown as Creds
  t.match(creds.username, /^app-repo-[0-9a-z]{6}$/)
  t.ok(await roleRow(creds.username))
  const bad = await vault.request('POST', `${db.mount}/config/appdb`, {
    body: { username_template: '{{ nosuchfunc 3 }}' },
  })
  t.equal(bad.status, 400)
  t.match(
    (bad.json as { errors: string[] }).errors[0],
    /^error creating database object: (unable to initialize|invalid) username template: /,
  )
})
