import net from 'node:net'
import t, { type Test } from 'tap'
import { startDemo } from '../support/demo-process.js'
import { freePort } from '../support/free-port.js'
import { runClient } from '../support/run-client.js'

// `npm run demo`, the README's first command, as a terminal runs it.

/** Holds 127.0.0.1:port for the test if it is free; if something else holds it, that does as well. */
async function occupy(t: Test, port: number): Promise<void> {
  const holder = net.createServer()
  await new Promise<void>((resolve) => {
    holder.once('error', () => resolve())
    holder.listen(port, '127.0.0.1', () => resolve())
  })
  t.teardown(() => new Promise<void>((resolve) => holder.close(() => resolve())))
}

void t.test(
  'with 6432 taken the demo picks a free port, says so once the proxy is ready, and one Ctrl-C to its process group revokes the lease',
  async (t) => {
    await occupy(t, 6432)
    const demo = startDemo(t, { PGVP_DEMO_PORT: undefined })
    const banner = await demo.banner()
    t.not(banner.port, 6432, 'not the taken port')
    t.match(demo.output(), `is listening on 127.0.0.1:${banner.port} (6432 was taken)`)
    t.equal(banner.psqlLine, `psql "host=127.0.0.1 port=${banner.port} dbname=appdb user=anyone"`)
    t.ok(
      demo.output().indexOf('pg-vault-proxy ready') < demo.output().indexOf('is listening on'),
      'the banner comes after the proxy is ready',
    )
    const who = await runClient('psql', [
      `host=127.0.0.1 port=${banner.port} dbname=appdb user=anyone`,
      '-X',
      '-A',
      '-t',
      '-c',
      'select current_user, session_user',
    ])
    t.equal(who.code, 0, who.out)
    t.match(who.stdout.trim(), /^app_owner\|v-approle-app-\S+$/)
    const login = who.stdout.trim().split('|')[1] ?? ''

    demo.interrupt()
    t.equal(await demo.exit, 0, 'Ctrl-C stops it with status 0')
    const output = demo.output()
    t.match(output, /revoked a lease/, 'the proxy revoked its lease on the way out')
    t.notMatch(output, /second signal/, 'one keypress was one request to stop')
    t.match(output, 'demo: no Vault-issued login role left in pg_roles')
    t.notMatch(output, `left in pg_roles: ${login}`)
  },
)

void t.test('PGVP_DEMO_PORT naming a taken port fails at once, naming the variable', async (t) => {
  const port = await freePort()
  await occupy(t, port)
  const demo = startDemo(t, { PGVP_DEMO_PORT: String(port) })
  t.equal(await demo.exit, 1)
  t.equal(
    demo.output(),
    `demo: PGVP_DEMO_PORT=${port} is not a free TCP port on 127.0.0.1; unset it to let the demo pick one\n`,
    'before starting anything',
  )
})
