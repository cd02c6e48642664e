import { spawn } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import t from 'tap'
import { describeYamlError, loadConfig } from '../../src/config/load-config.js'
import { ConfigReloader } from '../../src/ops/config-reload.js'
import { createLogger } from '../../src/ops/logger.js'
import { ProxyMetrics } from '../../src/ops/metrics.js'
import type { ProxyServer } from '../../src/proxy/proxy-server.js'

// A YAML syntax error is reported by file, line, column and reason, never with the line's text,
// which may hold an inline secret: at start (stderr) and on reload (the log).
const dir = await mkdtemp(join(tmpdir(), 'pgvp-yaml-'))
t.teardown(() => rm(dir, { recursive: true, force: true }))
const SECRET = 'hvs.Sup3rS3cretTokenValue'

// Line 5, column 12 (where the token starts): a colon inside the unquoted token makes it a nested mapping.
const broken = [
  'listen: 127.0.0.1:6432',
  'owner_role: app_owner',
  'vault:',
  '  auth:',
  `    token: ${SECRET}: trailing`,
  'credentials: { vault: { role: app } }',
].join('\n')

void t.test('start: stderr names file, line and column, not the line', async (t) => {
  const file = join(dir, 'start.yaml')
  await writeFile(file, broken)
  const child = spawn(process.execPath, ['--import=tsx', 'src/cli/main.ts', 'run', '--config', file], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
  child.stdout.on('data', (d: Buffer) => (stderr += d.toString()))
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
  t.equal(code, 1, 'a configuration error')
  t.match(
    stderr,
    `${file}:5:12 is not valid YAML: Nested mappings are not allowed in compact mappings (BLOCK_AS_IMPLICIT_KEY)`,
  )
  t.notMatch(stderr, SECRET, 'the secret is not echoed')
  t.notMatch(stderr, 'trailing', 'nor anything else from the line')
})

void t.test('reload: the refusal in the log names file, line and column, not the line', async (t) => {
  const file = join(dir, 'reload.yaml')
  await writeFile(file, broken)
  let text = ''
  const logger = createLogger(
    'debug',
    new Writable({
      write(chunk: Buffer, _encoding, done) {
        text += chunk.toString()
        done()
      },
    }),
  )
  const server = { metrics: new ProxyMetrics() } as unknown as ProxyServer
  const reloader = new ConfigReloader({} as never, { server, logger, load: () => loadConfig(file, {}, {}) })
  t.equal(await reloader.reload(), false, 'refused')
  const line = text
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as { msg: string; problems?: string[] })
    .find((l) => l.msg.startsWith('configuration reload refused'))
  t.match(line?.problems?.[0], `${file}:5:12 is not valid YAML`)
  t.notMatch(text, SECRET, 'the secret is not logged')
  t.notMatch(text, 'trailing', 'nor anything else from the line')
})

void t.test('reasons that quote the source are cut before the quote', async (t) => {
  // yaml throws a ReferenceError naming the missing anchor, which comes from the file.
  const file = join(dir, 'alias.yaml')
  await writeFile(file, `owner_role: *${SECRET}\n`)
  const err = (await loadConfig(file, {}, {}).catch((e: unknown) => e)) as Error
  t.match(err.message, `${file} is not valid YAML: Unresolved alias (the anchor must be set before the alias)`)
  t.notMatch(err.message, SECRET)
  t.equal(describeYamlError('f.yaml', 'odd'), 'f.yaml is not valid YAML: odd', 'anything thrown is described')
})
