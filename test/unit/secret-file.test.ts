import { chmod, chown, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import t from 'tap'
import { readSecretFile } from '../../src/config/secret-file.js'
import { createLogger } from '../../src/ops/logger.js'
import { StaticCredentialSource } from '../../src/vault/static-source.js'
import { VaultAuthenticator } from '../../src/vault/vault-authenticator.js'
import type { VaultClient } from '../../src/vault/vault-client.js'

// Secret files readable by group or others are warned about (path and mode, never the content).
const dir = await mkdtemp(join(tmpdir(), 'pgvp-secret-'))
t.teardown(() => rm(dir, { recursive: true, force: true }))
const SECRET = 's3cr3t-Value-that-must-not-leak'

function capture(): {
  logger: ReturnType<typeof createLogger>
  text: () => string
  warnings: () => Array<Record<string, unknown>>
} {
  let text = ''
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      text += chunk.toString()
      done()
    },
  })
  const lines = (): Array<Record<string, unknown>> =>
    text
      .split('\n')
      .filter((l) => l.trim())
      .map((l) => JSON.parse(l) as Record<string, unknown>)
  return {
    logger: createLogger('debug', sink),
    text: () => text,
    warnings: () => lines().filter((l) => l.level === 40),
  }
}

async function secretFile(name: string, mode: number): Promise<string> {
  const path = join(dir, name)
  await writeFile(path, `${SECRET}\n`)
  await chmod(path, mode)
  return path
}

void t.test('a 0644 secret file is read and warned about once; a 0600 one is not', async (t) => {
  const log = capture()
  const open = await secretFile('open', 0o644)
  t.equal(await readSecretFile(open, 'some.key', log.logger), `${SECRET}\n`, 'the content is returned')
  await readSecretFile(open, 'some.key', log.logger)
  t.same(
    log.warnings().map((w) => [w.key, w.path, w.mode]),
    [['some.key', open, '0644']],
    'one warning naming the key, the path and the mode',
  )
  t.notMatch(log.text(), SECRET, 'never the content')

  const closed = await secretFile('closed', 0o600)
  await readSecretFile(closed, 'some.key', log.logger)
  t.equal(log.warnings().length, 1, '0600: no warning')

  // Fixed, then opened up again: warned again.
  await chmod(open, 0o600)
  await readSecretFile(open, 'some.key', log.logger)
  await chmod(open, 0o604)
  await readSecretFile(open, 'some.key', log.logger)
  t.same(
    log.warnings().map((w) => w.mode),
    ['0644', '0604'],
  )
})

void t.test("the mode judged is the target's when the path is a symlink (a Kubernetes secret mount)", async (t) => {
  const log = capture()
  const target = await secretFile('target', 0o644)
  const link = join(dir, 'link')
  await symlink(target, link)
  await readSecretFile(link, 'k', log.logger)
  t.equal(log.warnings()[0]?.mode, '0644')
})

const root = process.geteuid?.() === 0
void t.test(
  'root-owned files may be group-readable (0640), as libpq allows for keys',
  { skip: root ? false : 'needs root to chown' },
  async (t) => {
    const log = capture()
    const rootOwned = await secretFile('root-0640', 0o640)
    await readSecretFile(rootOwned, 'k', log.logger)
    t.equal(log.warnings().length, 0, 'root-owned 0640: no warning')
    const userOwned = await secretFile('user-0640', 0o640)
    await chown(userOwned, 65534, 65534)
    await readSecretFile(userOwned, 'k', log.logger)
    t.same(
      log.warnings().map((w) => w.mode),
      ['0640'],
      'owned by another user, 0640 is warned about',
    )
  },
)

void t.test('the password file of credentials.static and vault.auth.token_file are read this way', async (t) => {
  const log = capture()
  const passwordFile = await secretFile('password', 0o644)
  const source = new StaticCredentialSource({ username: 'u', passwordFile, log: log.logger })
  t.equal((await source.get()).password, SECRET)
  const tokenFile = await secretFile('token', 0o644)
  const client = { token: '' } as unknown as VaultClient
  const auth = new VaultAuthenticator(client, { method: 'token', tokenFile }, log.logger)
  await auth.ensureToken()
  auth.stop()
  t.same(
    log.warnings().map((w) => [w.key, w.path]),
    [
      ['credentials.static.password_file', passwordFile],
      ['vault.auth.token_file', tokenFile],
    ],
  )
  t.notMatch(log.text(), SECRET, 'neither secret is logged')
})
