import { spawn } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import t from 'tap'
import { startDemo } from '../support/demo-process.js'
import { freePort } from '../support/free-port.js'
import { runClient, type ClientRun } from '../support/run-client.js'
import { eventually } from '../support/vault-target.js'

// README.md's "Try it" banner and "A five-minute tour", as a reader pastes them: the commands come
// from README.md itself, and run one by one against `npm run demo`.

/** The fenced block of `lang` that first follows the heading `heading` in a markdown text. */
function fencedBlockAfter(markdown: string, heading: string, lang: string): string[] {
  const lines = markdown.split('\n')
  const at = lines.findIndex((line) => line === heading)
  if (at < 0) throw new Error(`README.md has no heading "${heading}"`)
  const open = lines.findIndex((line, i) => i > at && line === '```' + lang)
  const close = lines.findIndex((line, i) => i > open && line === '```')
  if (open < 0 || close < 0) throw new Error(`no \`\`\`${lang} block after "${heading}"`)
  return lines.slice(open + 1, close).filter((line) => line.trim() !== '')
}

/** The output's lines, trimmed. */
function lines(run: ClientRun): string[] {
  return run.stdout.split('\n').map((l) => l.trim())
}

/** A tour line: the command, and the comment after it that says what to expect. */
function splitComment(line: string): { command: string; comment: string } {
  const at = line.search(/\s#\s/)
  return at < 0 ? { command: line, comment: '' } : { command: line.slice(0, at).trimEnd(), comment: line.slice(at + 3) }
}

/**
 * What the tour's comments promise, where a test can check it: `line` finds the tour line, `says`
 * must be in its comment (so the README still promises it), `holds` is checked on the output.
 */
const promises: Array<{ line: RegExp; says: string; holds: (run: ClientRun) => boolean }> = [
  {
    line: /select current_user, session_user/,
    says: 'app_owner | v-approle-app-',
    holds: (run) => lines(run).some((l) => /^app_owner *\| *v-approle-app-\S+$/.test(l)),
  },
  {
    line: /select tableowner from pg_tables/,
    says: 'app_owner',
    holds: (run) => lines(run).includes('app_owner'),
  },
  {
    line: /discard all/,
    says: 'still app_owner',
    holds: (run) => {
      // psql's table: a header, a rule, the value.
      const all = lines(run)
      const at = all.lastIndexOf('current_user')
      return at >= 0 && /^-+$/.test(all[at + 1] ?? '') && all[at + 2] === 'app_owner'
    },
  },
  {
    line: /pgbench -c 4 -T 10 -C/,
    says: 'a new connection per transaction',
    holds: (run) =>
      /number of transactions actually processed: [1-9]/.test(run.stdout) &&
      /number of failed transactions: 0 /.test(run.stdout),
  },
]

/** The line the reader ends with Ctrl-C: run, interrupted once the query runs upstream, as a terminal does. */
const CTRL_C_LINE = /pg_sleep/

const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8')
const tour = fencedBlockAfter(readme, '## A five-minute tour', 'sh').map(splitComment)
const bannerShown = fencedBlockAfter(readme, '## Try it', 'text')

void t.test('every line of the README tour works against the demo, as its comments say', async (t) => {
  const demo = startDemo(t, { PGVP_DEMO_PORT: String(await freePort()) })
  const banner = await demo.banner()

  // The banner README.md shows is the one the demo prints, up to ports and other numbers.
  const printed = demo.output().split('\n')
  for (const line of bannerShown) {
    const pattern = line
      .replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
      .replace(/\d+/g, '\\d+')
      .replace(/…/g, '.*')
    t.ok(
      printed.some((p) => new RegExp(`^${pattern}$`).test(p)),
      `README's banner line is printed: ${line}`,
    )
  }

  // The first line: README's export, with the port the demo actually took, is the one the demo printed.
  const first = tour[0]?.command ?? ''
  t.match(first, /^export PGHOST=127\.0\.0\.1 PGPORT=6432 /)
  const exportLine = first.replace('PGPORT=6432', `PGPORT=${banner.port}`)
  t.equal(exportLine, banner.exportLine, "README's export line is the demo's")

  // Each command in a shell of its own after the export, as pasted one by one into one terminal.
  const env = { PSQLRC: '/dev/null', PGCONNECT_TIMEOUT: '10' }
  const checked = new Set<number>()
  for (const { command, comment } of tour.slice(1)) {
    const script = `${exportLine}\n${command}`
    if (CTRL_C_LINE.test(command)) {
      t.match(comment, /Ctrl-C/)
      const result = await runInterrupted(script, env, `${exportLine}\n`)
      t.equal(result.code, 1, `${command}: psql reports the cancelled query`)
      t.match(result.stderr, /canceling statement due to user request/, `${command}: ${comment}`)
      continue
    }
    const run = await runClient('bash', ['-c', script], { env })
    t.equal(run.code, 0, `${command}\n${run.out}`)
    promises.forEach((promise, i) => {
      if (!promise.line.test(command)) return
      checked.add(i)
      t.ok(comment.includes(promise.says), `the README still says "${promise.says}" for ${command}`)
      t.ok(promise.holds(run), `${command}: ${comment}\n${run.out}`)
    })
  }
  t.same(
    [...checked].sort(),
    promises.map((_, i) => i),
    'every promise found its tour line',
  )
  t.ok(
    tour.some((l) => CTRL_C_LINE.test(l.command)),
    'the Ctrl-C line is in the tour',
  )

  // The two commands the banner prints with the demo's configuration file.
  const check = await runClient('bash', ['-c', banner.checkLine], { env })
  t.equal(check.code, 0, check.out)
  t.match(check.stdout, /logged in to .*\/appdb /)
  t.match(check.stdout, /current_user=app_owner session_user=v-approle-app-/)
  t.match(banner.execLine, / -- psql -c 'select current_user'$/)
  const exec = await runClient('bash', ['-c', banner.execLine], { env })
  t.equal(exec.code, 0, exec.out)
  t.ok(
    exec.stdout.split('\n').some((l) => l.trim() === 'app_owner'),
    exec.stdout,
  )

  demo.interrupt()
  t.equal(await demo.exit, 0)
  t.match(demo.output(), 'demo: no Vault-issued login role left in pg_roles')
})

/**
 * Runs `script` in a process group of its own, waits until its query is active upstream (seen
 * through the proxy with the same settings), then sends SIGINT to the group: Ctrl-C.
 */
async function runInterrupted(
  script: string,
  env: Record<string, string>,
  settings: string,
): Promise<{ code: number | null; stderr: string }> {
  const child = spawn('bash', ['-c', script], { env: { ...process.env, ...env }, detached: true })
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
  const code = new Promise<number | null>((resolve) => child.on('close', resolve))
  const sql = /-c '([^']*)'/.exec(script)?.[1] ?? ''
  // As the login user (SET ROLE NONE): pg_stat_activity shows a query only to its session's user.
  const active = `${settings}psql -X -A -t -c 'set role none' -c "select count(*) from pg_stat_activity where query = '${sql}' and state = 'active'"`
  const running = await eventually(20, async () =>
    /^1$/m.test((await runClient('bash', ['-c', active], { env })).stdout),
  )
  if (!running) throw new Error(`the query never ran upstream: ${stderr}`)
  process.kill(-(child.pid as number), 'SIGINT')
  return { code: await code, stderr }
}
