import { spawn } from 'node:child_process'
import t from 'tap'
import { freePort } from '../support/free-port.js'

// `npm run demo`, the README's first command: it comes up, answers psql, and cleans up on Ctrl-C.
void t.test('the demo comes up, answers psql as the owner role with a Vault user, and stops cleanly', async (t) => {
  const port = await freePort()
  const demo = spawn(process.execPath, ['--import', 'tsx', 'scripts/demo.ts'], {
    env: { ...process.env, PGVP_DEMO_PORT: String(port), PGVP_DEMO_FROM_SOURCE: '1' },
  })
  let output = ''
  demo.stdout.on('data', (d: Buffer) => (output += d.toString()))
  demo.stderr.on('data', (d: Buffer) => (output += d.toString()))
  const exited = new Promise<number | null>((resolve) => demo.on('exit', resolve))
  t.teardown(() => void demo.kill('SIGKILL'))
  for (let i = 0; i < 600 && !output.includes('pg-vault-proxy ready'); i++) await new Promise((r) => setTimeout(r, 100))
  t.match(output, `psql "host=127.0.0.1 port=${port} dbname=appdb user=anyone"`, 'it prints the psql command')
  const psql = await new Promise<string>((resolve) => {
    const child = spawn('psql', [
      `host=127.0.0.1 port=${port} dbname=appdb user=anyone`,
      '-X',
      '-A',
      '-t',
      '-c',
      'select current_user, session_user',
    ])
    let out = ''
    child.stdout.on('data', (d: Buffer) => (out += d.toString()))
    child.on('close', () => resolve(out.trim()))
  })
  t.match(psql, /^app_owner\|v-approle-app-/)
  demo.kill('SIGINT')
  t.equal(await exited, 0, 'Ctrl-C stops it with status 0')
  t.match(output, /revoked a lease/, 'the proxy revoked its lease on the way out')
})
