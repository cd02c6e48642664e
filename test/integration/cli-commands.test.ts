import { spawn } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { clusterFor } from '../support/pg-cluster.js'
import { vaultFor } from '../support/vault-target.js'

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
  t.ok(
    await (async () => {
      for (let i = 0; i < 50 && (await vaultUsers()) > 0; i++) await new Promise((r) => setTimeout(r, 100))
      return (await vaultUsers()) === 0
    })(),
    'no v- role left behind',
  )
})

void t.test('version and help', async (t) => {
  const v = await cli(['version'])
  t.match(v.stdout, /^pg-vault-proxy \d+\.\d+\.\d+\n$/)
  const help = await cli(['exec', '--help'])
  t.match(help.stdout, /pg-vault-proxy exec --config proxy.yaml -- npx prisma migrate deploy/)
})
