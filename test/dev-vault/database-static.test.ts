/**
 * Database static roles (builtin/logical/database/path_roles.go, rotation.go): Vault takes over an existing user's password on
 * create, rotates it on rotate-role and on the rotation queue, and hands it out without a lease.
 */
import pg from 'pg'
import t from 'tap'
import { clusterFor } from '../support/pg-cluster.js'
import { eventually, vaultFor } from '../support/vault-target.js'
import type { VaultTarget } from '../support/vault-target.js'

const cluster = await clusterFor(t)

interface Envelope {
  lease_id: string
  renewable: boolean
  lease_duration: number
  data: Record<string, unknown> | null
  mount_type: string
}

interface StaticCreds {
  last_vault_rotation: string
  password: string
  rotation_period: number
  ttl: number
  username: string
}

let userCounter = 0
/** A fresh login user with a known password, as a DBA would create it for Vault to take over. */
async function staticUser(): Promise<{ user: string; password: string }> {
  const user = `static_user_${++userCounter}`
  const password = 'initial-password'
  await cluster.query(
    `CREATE ROLE ${user} LOGIN PASSWORD '${password}' IN ROLE ${pg.escapeIdentifier(cluster.ownerRole)}`,
  )
  return { user, password }
}

async function canLogin(user: string, password: string): Promise<boolean> {
  const client = new pg.Client({ host: cluster.host, port: cluster.port, database: cluster.database, user, password })
  try {
    await client.connect()
    await client.end()
    return true
  } catch {
    return false
  }
}

async function staticCreds(vault: VaultTarget, mount: string, role: string): Promise<StaticCreds> {
  return ((await vault.call('GET', `${mount}/static-creds/${role}`)).json as Envelope).data as unknown as StaticCreds
}

void t.test(
  'create takes the password over; static-creds has no lease and says when the next rotation is',
  async (t) => {
    const vault = await vaultFor(t, cluster)
    const db = await vault.database()
    const { user, password } = await staticUser()
    t.equal(await canLogin(user, password), true)
    const before = Date.now()
    t.equal(
      (
        await vault.request('POST', `${db.mount}/static-roles/app-static`, {
          body: { db_name: 'appdb', username: user, rotation_period: '1h' },
        })
      ).status,
      204,
    )
    t.equal(await canLogin(user, password), false, 'the old password no longer works')

    const reply = (await vault.call('GET', `${db.mount}/static-creds/app-static`)).json as Envelope
    t.same(
      { lease_id: reply.lease_id, renewable: reply.renewable, lease_duration: reply.lease_duration },
      { lease_id: '', renewable: false, lease_duration: 0 },
    )
    t.equal(reply.mount_type, 'database')
    const creds = reply.data as unknown as StaticCreds
    t.same(Object.keys(creds), ['last_vault_rotation', 'password', 'rotation_period', 'ttl', 'username'])
    t.same(
      { username: creds.username, rotation_period: creds.rotation_period },
      { username: user, rotation_period: 3600 },
    )
    t.ok(creds.ttl > 3590 && creds.ttl <= 3600, `ttl ${creds.ttl} counts down to the next rotation`)
    t.match(creds.last_vault_rotation, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/)
    t.ok(Math.abs(Date.parse(creds.last_vault_rotation) - before) < 5000)
    t.match(creds.password, /^[A-Za-z0-9-]{20}$/)
    t.equal(await canLogin(user, creds.password), true, 'the password Vault hands out logs in')

    const read = (await vault.call('GET', `${db.mount}/static-roles/app-static`)).json as Envelope
    t.same(read.data, {
      credential_type: 'password',
      db_name: 'appdb',
      last_vault_rotation: creds.last_vault_rotation,
      rotation_period: 3600,
      rotation_statements: [],
      username: user,
    })
  },
)

void t.test('rotate-role changes the real password and restarts the rotation clock', async (t) => {
  const vault = await vaultFor(t, cluster)
  const db = await vault.database()
  const { user } = await staticUser()
  await db.createStaticRole('app-static', user, '1h')
  const first = await staticCreds(vault, db.mount, 'app-static')
  await new Promise((resolve) => setTimeout(resolve, 1100))
  const rotated = await vault.request('POST', `${db.mount}/rotate-role/app-static`, { body: {} })
  t.equal(rotated.status, 204)
  const second = await staticCreds(vault, db.mount, 'app-static')
  t.not(second.password, first.password)
  t.ok(Date.parse(second.last_vault_rotation) > Date.parse(first.last_vault_rotation))
  t.equal(await canLogin(user, first.password), false, 'the previous password stopped working')
  t.equal(await canLogin(user, second.password), true)
})

void t.test('the rotation queue rotates a role once its rotation_period has passed', async (t) => {
  const vault = await vaultFor(t, cluster)
  const db = await vault.database()
  const { user } = await staticUser()
  await db.createStaticRole('fast', user, 5)
  const first = await staticCreds(vault, db.mount, 'fast')
  const rotated = await eventually(
    15,
    async () => (await staticCreds(vault, db.mount, 'fast')).password !== first.password,
  )
  t.ok(rotated, 'a new password within two queue ticks of the period')
  const second = await staticCreds(vault, db.mount, 'fast')
  t.equal(await canLogin(user, second.password), true)
  t.equal(await canLogin(user, first.password), false)
})

void t.test(
  'static role errors: missing user, short period, missing fields, username change, unknown role, not allowed',
  async (t) => {
    const vault = await vaultFor(t, cluster)
    const db = await vault.database({ allowedRoles: ['missing-user', 'app-static', 'named'] })
    const missingUser = await vault.request('POST', `${db.mount}/static-roles/missing-user`, {
      body: { db_name: 'appdb', username: 'no_such_user', rotation_period: 3600 },
    })
    t.equal(missingUser.status, 500)
    t.same(missingUser.json, {
      errors: [
        '1 error occurred:\n\t* error setting credentials: 1 error occurred:\n\t* failed to execute query: ERROR: role "no_such_user" does not exist (SQLSTATE 42704)\n\n\n\n',
      ],
    })
    t.equal(
      (await vault.request('GET', `${db.mount}/static-roles/missing-user`)).status,
      404,
      'a failed create leaves no role',
    )

    const { user } = await staticUser()
    const cases: [Record<string, unknown>, string][] = [
      [{ db_name: 'appdb', username: user, rotation_period: 4 }, 'rotation_period must be 5 seconds or more'],
      [{ db_name: 'appdb', rotation_period: 60 }, 'username is a required field to create a static account'],
      [{ db_name: 'appdb', username: user }, 'rotation_period is required to create static accounts'],
      [{ username: user, rotation_period: 60 }, 'database name is a required field'],
    ]
    for (const [body, message] of cases) {
      const reply = await vault.request('POST', `${db.mount}/static-roles/app-static`, { body })
      t.equal(reply.status, 400, message)
      t.same(reply.json, { errors: [message] })
    }
    await db.createStaticRole('app-static', user, 3600)
    const rename = await vault.request('POST', `${db.mount}/static-roles/app-static`, {
      body: { username: 'someone_else' },
    })
    t.same(rename.json, { errors: ['cannot update static account username'] })

    const unknown = await vault.request('GET', `${db.mount}/static-creds/nope`)
    t.equal(unknown.status, 400)
    t.same(unknown.json, { errors: ['unknown role: nope'] })
    const rotateUnknown = await vault.request('POST', `${db.mount}/rotate-role/nope`, { body: {} })
    t.equal(rotateUnknown.status, 400)
    t.same(rotateUnknown.json, { errors: ['no static role found for role name'] })

    const other = await staticUser()
    const notAllowed = await vault.request('POST', `${db.mount}/static-roles/not-listed`, {
      body: { db_name: 'appdb', username: other.user, rotation_period: 3600 },
    })
    t.equal(notAllowed.status, 500)
    t.same(notAllowed.json, { errors: ['1 error occurred:\n\t* "not-listed" is not an allowed role\n\n'] })
    t.equal(await canLogin(other.user, other.password), true, 'a refused role does not touch the password')
  },
)
