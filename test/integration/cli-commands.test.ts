import { spawn } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import t from 'tap'
import { freePort } from '../support/free-port.js'
import { opsGet } from '../support/ops-probe.js'
import { clusterFor } from '../support/pg-cluster.js'
import { eventually, vaultFor } from '../support/vault-target.js'

// `check`, `exec` and `version` end to end: the real CLI, the dev Vault, the real cluster.
const cluster = await clusterFor(t)
const vault = await vaultFor(t, cluster)
const db = await vault.database()
await db.createDynamicRole({ name: 'app', defaultTtl: 120, maxTtl: 600 })
const dir = await mkdtemp(join(tmpdir(), 'pgvp-cmd-'))
t.teardown(() => rm(dir, { recursive: true, force: true }))

const child = await vault.call('POST', 'auth/token/create', { policies: ['root'] })
const token = (child.json as { auth: { client_token: string } }).auth.client_token
const config = join(dir, 'proxy.yaml')
await writeFile(
  config,
  [
    `owner_role: ${cluster.ownerRole}`,
    `upstream: { host: ${cluster.host}, port: ${cluster.port}, database: ${cluster.database}, sslmode: disable }`,
    `vault: { address: '${vault.address}' }`,
    `credentials: { vault: { mount: ${db.mount}, role: app } }`,
  ].join('\n'),
)

function cli(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, ['--import=tsx', 'src/cli/main.ts', ...args], {
      env: { ...process.env, ...env },
    })
    let stdout = ''
    let stderr = ''
    proc.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    proc.on('close', (code) => resolve({ code, stdout, stderr }))
  })
}
const vaultUsers = async (): Promise<number> =>
  (await cluster.query("select 1 from pg_roles where rolname like 'v-%'")).length

/**
 * The CLI as a terminal runs it: detached, so it leads a process group of its own, as a shell puts
 * a job in one; `interrupt()` is Ctrl-C, a SIGINT to the whole group.
 */
function job(args: string[], env: Record<string, string>) {
  const proc = spawn(process.execPath, ['--import=tsx', 'src/cli/main.ts', ...args], {
    env: { ...process.env, ...env },
    detached: true,
  })
  let stdout = ''
  let stderr = ''
  proc.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
  proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
  const exit = new Promise<number | null>((resolve) => proc.on('close', resolve))
  t.teardown(() => {
    if (proc.exitCode === null) process.kill(-(proc.pid as number), 'SIGKILL')
  })
  return {
    exit,
    stdout: () => stdout,
    stderr: () => stderr,
    interrupt: () => process.kill(-(proc.pid as number), 'SIGINT'),
    kill: (signal: NodeJS.Signals) => proc.kill(signal),
  }
}

const noVaultUserLeft = (): Promise<boolean> => eventually(10, async () => (await vaultUsers()) === 0)

/** NAME=value lines of `env`, as a map. */
function parseEnv(text: string): Map<string, string> {
  const vars = new Map<string, string>()
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=')
    if (eq > 0) vars.set(line.slice(0, eq), line.slice(eq + 1))
  }
  return vars
}

void t.test('check walks the chain and prints who the session is and the TTL', async (t) => {
  const result = await cli(['check', '--config', config], { VAULT_TOKEN: token })
  t.equal(result.code, 0, result.stdout + result.stderr)
  t.match(result.stdout, /ok {3}credential for "v-token-app-/)
  t.match(result.stdout, /ok {3}current_user=app_owner session_user=v-token-app-/)
  t.match(result.stdout, /ok {3}credential TTL remaining: \d+ s/)
  t.notMatch(result.stdout + result.stderr, token)
  t.ok(
    await (async () => {
      for (let i = 0; i < 50 && (await vaultUsers()) > 0; i++) await new Promise((r) => setTimeout(r, 100))
      return (await vaultUsers()) === 0
    })(),
    'check revoked its lease',
  )
})

void t.test('check stops at the first failing step with a precise message', async (t) => {
  const noToken = await cli(['check', '--config', config], { VAULT_TOKEN: '' })
  t.equal(noToken.code, 1)
  t.match(noToken.stderr, 'vault.auth.token: set vault.auth.token or vault.auth.token_file (or VAULT_TOKEN)')
  const badRole = await cli(['check', '--config', config], { VAULT_TOKEN: token, PGVP_CREDENTIALS_VAULT_ROLE: 'nope' })
  t.equal(badRole.code, 2)
  t.match(
    badRole.stdout,
    /FAIL credential: pg-vault-proxy could not obtain database credentials from Vault: Vault refused .*creds\/nope: unknown role: nope/,
  )
  const badOwner = await cli(['check', '--config', config], { VAULT_TOKEN: token, PGVP_OWNER_ROLE: 'no_such_owner' })
  t.equal(badOwner.code, 2)
  t.match(badOwner.stdout, /ok {3}credential for/)
  t.match(badOwner.stdout, /FAIL upstream login: .*no_such_owner.*CREATE ROLE "no_such_owner" NOLOGIN/)
})

void t.test('exec runs a command against a private proxy, passes its exit status, and revokes the lease', async (t) => {
  const ok = await cli(
    ['exec', '--config', config, '--', 'psql', '-X', '-A', '-t', '-c', 'select current_user, current_database()'],
    { VAULT_TOKEN: token },
  )
  t.equal(ok.code, 0, ok.stderr)
  t.equal(ok.stdout.trim(), `app_owner|${cluster.database}`)
  const url = await cli(
    [
      'exec',
      '--config',
      config,
      '--',
      'sh',
      '-c',
      'psql "$DATABASE_URL" -X -A -t -c "select 1" && echo "$PGHOST $PGUSER"',
    ],
    { VAULT_TOKEN: token },
  )
  t.match(url.stdout, /^1\n127\.0\.0\.1 pg-vault-proxy\n$/)
  const failing = await cli(['exec', '--config', config, '--', 'sh', '-c', 'exit 7'], { VAULT_TOKEN: token })
  t.equal(failing.code, 7, "the command's exit status")
  const missing = await cli(['exec', '--config', config, '--', 'no-such-command-xyz'], { VAULT_TOKEN: token })
  t.equal(missing.code, 127)
  const noRoute = await cli(['exec', '--config', config, '--route', 'nope', '--', 'true'], { VAULT_TOKEN: token })
  t.equal(noRoute.code, 1, 'bad usage')
  t.equal(noRoute.stderr, 'pg-vault-proxy: exec: no route named "nope" (the configuration has "default")\n')
  t.ok(
    await (async () => {
      for (let i = 0; i < 50 && (await vaultUsers()) > 0; i++) await new Promise((r) => setTimeout(r, 100))
      return (await vaultUsers()) === 0
    })(),
    'no v- role left behind',
  )
})

void t.test(
  "exec's command sees none of the proxy's secrets, and libpq's variables point at the private proxy",
  async (t) => {
    const secrets = {
      VAULT_TOKEN: token,
      PGVP_VAULT_AUTH_SECRET_ID: 'secret-id-not-for-the-child',
      PGPASSWORD: 'pgpassword-not-for-the-child',
      PGPASSFILE: join(dir, 'pgpass-not-for-the-child'),
      PGSERVICEFILE: join(dir, 'service-file-not-for-the-child'),
      // Both would steer libpq away from PGHOST: hostaddr is dialled instead, a service is read first.
      PGSERVICE: 'service-not-for-the-child',
      PGHOSTADDR: '192.0.2.1',
      PGHOST: 'db.elsewhere.invalid',
      KEPT_FOR_THE_CHILD: 'yes',
    }
    const result = await cli(['exec', '--config', config, '--', 'env'], secrets)
    t.equal(result.code, 0, result.stderr)
    const env = parseEnv(result.stdout)
    for (const name of ['VAULT_TOKEN', 'PGVP_VAULT_AUTH_SECRET_ID', 'PGPASSWORD', 'PGPASSFILE', 'PGSERVICEFILE'])
      t.notOk(env.has(name), `${name} is withheld`)
    t.notOk(
      [...env.keys()].some((name) => name.startsWith('PGVP_') || name.startsWith('VAULT_')),
      'no PGVP_* or VAULT_*',
    )
    for (const value of Object.values(secrets).filter((v) => v.includes('not-for-the-child') || v === token))
      t.notOk(result.stdout.includes(value), 'no secret value anywhere in the environment')
    t.equal(env.get('KEPT_FOR_THE_CHILD'), 'yes', 'the rest is inherited')
    t.equal(env.get('PGHOST'), '127.0.0.1')
    t.equal(env.get('PGDATABASE'), cluster.database)
    t.equal(env.get('PGUSER'), 'pg-vault-proxy')
    t.equal(env.get('PGSSLMODE'), 'disable')
    const port = env.get('PGPORT') ?? ''
    t.match(port, /^\d+$/)
    t.equal(
      env.get('DATABASE_URL'),
      `postgresql://pg-vault-proxy@127.0.0.1:${port}/${cluster.database}?sslmode=disable`,
    )

    // With the same environment, the command's psql reaches the database through the private proxy.
    const psql = await cli(
      ['exec', '--config', config, '--', 'psql', '-X', '-A', '-t', '-c', 'select current_user'],
      secrets,
    )
    t.equal(psql.code, 0, psql.stderr)
    t.equal(psql.stdout.trim(), 'app_owner')

    // A static password given to the proxy through PGVP_* reaches the proxy, not the command.
    const staticConfig = join(dir, 'static.yaml')
    await writeFile(
      staticConfig,
      `owner_role: ${cluster.ownerRole}\nupstream: { host: ${cluster.host}, port: ${cluster.port}, database: ${cluster.database}, sslmode: disable }\n`,
    )
    const fixed = await cli(
      ['exec', '--config', staticConfig, '--', 'sh', '-c', 'env; psql -X -A -t -c "select session_user"'],
      {
        PGVP_CREDENTIALS_STATIC_USERNAME: cluster.users.scram.user,
        PGVP_CREDENTIALS_STATIC_PASSWORD: cluster.users.scram.password,
      },
    )
    t.equal(fixed.code, 0, fixed.stderr)
    t.match(fixed.stdout, new RegExp(`^${cluster.users.scram.user}$`, 'm'), 'logged in with the static password')
    t.notOk(fixed.stdout.includes(cluster.users.scram.password), 'the static password is not in the environment')
    t.notOk(parseEnv(fixed.stdout).has('PGVP_CREDENTIALS_STATIC_USERNAME'))
    t.ok(await noVaultUserLeft(), 'every lease revoked')
  },
)

void t.test('exec beside a running `run` of the same file: both serve, on their own addresses', async (t) => {
  const listen = await freePort()
  const ops = await freePort()
  const shared = join(dir, 'shared.yaml')
  await writeFile(
    shared,
    [
      `listen: 127.0.0.1:${listen}`,
      `socket_dir: ${join(dir, 'shared-socket')}`,
      `ops: { listen: '127.0.0.1:${ops}' }`,
      `owner_role: ${cluster.ownerRole}`,
      `upstream: { host: ${cluster.host}, port: ${cluster.port}, database: ${cluster.database}, sslmode: disable }`,
      `vault: { address: '${vault.address}' }`,
      `credentials: { vault: { mount: ${db.mount}, role: app } }`,
    ].join('\n'),
  )
  const run = job(['run', '--config', shared, '--log-format', 'json'], { VAULT_TOKEN: token })
  t.ok(await eventually(30, () => Promise.resolve(run.stderr().includes('pg-vault-proxy ready'))), run.stderr())

  const exec = await cli(
    ['exec', '--config', shared, '--', 'sh', '-c', 'echo "$PGPORT"; psql -X -A -t -c "select current_user"'],
    { VAULT_TOKEN: token },
  )
  t.equal(exec.code, 0, exec.stderr)
  const [execPort, who] = exec.stdout.trim().split('\n')
  t.not(execPort, String(listen), "exec listened on a port of its own, not the file's")
  t.equal(who, 'app_owner', "exec's command reached the database as the owner role")
  t.notMatch(exec.stderr, /EADDRINUSE/)

  const client = new pg.Client({ host: '127.0.0.1', port: listen, user: 'anyone', database: cluster.database })
  await client.connect()
  t.equal((await client.query<{ u: string }>('select current_user as u')).rows[0]?.u, 'app_owner', 'run still serves')
  await client.end()
  t.equal((await opsGet(ops, '/readyz')).status, 200, "run's ops server is still the one on the file's ops port")
  run.kill('SIGTERM')
  t.equal(await run.exit, 0)
  t.ok(await noVaultUserLeft(), 'every lease revoked')
})

void t.test(
  'Ctrl-C during exec: the command gets one SIGINT, exec revokes its lease and exits with its status',
  async (t) => {
    // psql cancels its query through the private proxy and exits 1; exec passes that on.
    const sql = 'select pg_sleep(60)'
    const psql = job(['exec', '--config', config, '--', 'psql', '-X', '-c', sql], { VAULT_TOKEN: token })
    const running = async (): Promise<boolean> =>
      (await cluster.query("select 1 from pg_stat_activity where query = $1 and state = 'active'", [sql])).length > 0
    t.ok(await eventually(30, running), 'the query runs upstream')
    psql.interrupt()
    t.equal(await psql.exit, 1, "psql's own status after a cancelled query")
    t.match(psql.stderr(), /canceling statement due to user request/)
    t.ok(await noVaultUserLeft(), 'the lease is revoked and its login role gone from pg_roles')

    // A command that counts its SIGINTs: exactly one per Ctrl-C, not one from the terminal and one from exec.
    const counter = [
      "let n = 0; process.on('SIGINT', () => { if (++n === 1) setTimeout(() => { console.log('SIGINT x' + n); process.exit(3) }, 1000) });",
      "console.log('waiting'); setInterval(() => {}, 1000)",
    ].join(' ')
    const counted = job(['exec', '--config', config, '--', process.execPath, '-e', counter], { VAULT_TOKEN: token })
    t.ok(await eventually(30, () => Promise.resolve(counted.stdout().includes('waiting'))), counted.stderr())
    counted.interrupt()
    t.equal(await counted.exit, 3, "the command's status")
    t.match(counted.stdout(), /SIGINT x1\n/, 'one SIGINT')

    // A command that SIGINT kills: 128 + 2.
    const sleeper = job(['exec', '--config', config, '--', 'sh', '-c', 'echo started; exec sleep 60'], {
      VAULT_TOKEN: token,
    })
    t.ok(await eventually(30, () => Promise.resolve(sleeper.stdout().includes('started'))), sleeper.stderr())
    sleeper.interrupt()
    t.equal(await sleeper.exit, 130)

    // SIGTERM to exec alone (a supervisor's stop) is passed on to the command: 128 + 15.
    const stopped = job(['exec', '--config', config, '--', 'sh', '-c', 'echo started; exec sleep 60'], {
      VAULT_TOKEN: token,
    })
    t.ok(await eventually(30, () => Promise.resolve(stopped.stdout().includes('started'))), stopped.stderr())
    stopped.kill('SIGTERM')
    t.equal(await stopped.exit, 143)
    t.ok(await noVaultUserLeft(), 'every lease revoked')
  },
)

void t.test('version and help', async (t) => {
  const v = await cli(['version'])
  t.match(v.stdout, /^pg-vault-proxy \d+\.\d+\.\d+\n$/)
  const help = await cli(['exec', '--help'])
  t.match(help.stdout, /pg-vault-proxy exec --config proxy.yaml -- npx prisma migrate deploy/)
})
