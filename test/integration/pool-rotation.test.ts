import { readFile, writeFile } from 'node:fs/promises'
import pg from 'pg'
import t from 'tap'
import { sample } from '../support/ops-probe.js'
import { clusterFor } from '../support/pg-cluster.js'
import { startProxy, type RunningProxy } from '../support/proxy-harness.js'
import { runClient, type ClientRun } from '../support/run-client.js'
import { eventually, vaultFor } from '../support/vault-target.js'

// Pooled server connections under credential rotation (docs/rotation.md, "Pooled connections"):
// short Vault leases whose revocation statements terminate the role's backends and drop it, while
// pgbench runs through the proxy with a new connection per transaction (-C: every transaction takes
// a connection from the pool and gives it back) and on persistent connections, and a few clients
// stay linked to connections they took from the pool. Idle connections of a superseded credential
// must be closed, never handed out; linked ones must move; every superseded lease must be given
// back and revoked by the proxy before Vault's own expiry would terminate anything.
const cluster = await clusterFor(t)
const vault = await vaultFor(t, cluster)
const db = await vault.database()
const viaRoot = { address: vault.address, auth: { method: 'token', token: vault.token } }

/** default_ttl = max_ttl: a new credential at half the lease (5 s), the old one revoked soon after. */
const TTL_SECONDS = 10
/** A few lease lifetimes. */
const LOAD_SECONDS = 24

async function metric(proxy: RunningProxy, name: string, labels: Record<string, string> = {}): Promise<number> {
  return sample(await proxy.server.metrics.registry.metrics(), name, labels) ?? 0
}

/** The numbers pgbench 15 prints at the end of a run. */
function pgbenchSummary(run: ClientRun): { processed: number; failed: number | undefined; aborted: boolean } {
  const processed = /number of transactions actually processed: (\d+)/.exec(run.stdout)
  const failed = /number of failed transactions: (\d+)/.exec(run.stdout)
  return {
    processed: processed ? Number(processed[1]) : 0,
    failed: failed ? Number(failed[1]) : undefined,
    aborted: /aborted|error/i.test(run.stderr),
  }
}

/** Vault users the proxy was issued, in order, with their lease ids (from its log). */
function issued(proxy: RunningProxy): { user: string; leaseId: string; at: number }[] {
  const out: { user: string; leaseId: string; at: number }[] = []
  proxy.logs.forEach((l, at) => {
    if (l.msg === 'issued a database credential') out.push({ user: String(l.user), leaseId: String(l.leaseId), at })
  })
  return out
}

void t.test(
  'pooled connections across a credential switch under pgbench load, with terminating revocation',
  async (t) => {
    await db.createDynamicRole({ name: 'pool_rotation', defaultTtl: TTL_SECONDS, maxTtl: TTL_SECONDS })
    await cluster.query('create table if not exists pool_rotation_tx (n int, who text)')
    await cluster.query('grant all on pool_rotation_tx to app_owner')
    const logFrom = (await readFile(cluster.logFile)).length
    const proxy = await startProxy(t, cluster, { vault: viaRoot, credentials: { vault: { role: 'pool_rotation' } } })

    // Six connections logged in and given back: six idle in the pool, with the one pool.min_idle
    // pre-warmed. Three clients then take three of them and stay linked through the run; the
    // others stay idle (or pre-warmed) in the pool.
    const connect = async (): Promise<pg.Client> => {
      const client = new pg.Client({ host: proxy.host, port: proxy.port, user: 'app', database: cluster.database })
      client.on('error', () => {})
      await client.connect()
      return client
    }
    const first = await Promise.all(Array.from({ length: 6 }, connect))
    await Promise.all(first.map((c) => c.end()))
    t.ok(
      await eventually(5, async () => Promise.resolve((proxy.server.status().routes[0]?.pool.idle ?? 0) >= 6)),
      'six connections pooled',
    )
    const loginsBefore = await metric(proxy, 'pg_vault_proxy_upstream_logins_total', { route: 'default' })
    const linked = await Promise.all(Array.from({ length: 3 }, connect))
    t.teardown(() => Promise.all(linked.map((c) => c.end().catch(() => undefined))))
    t.equal(
      await metric(proxy, 'pg_vault_proxy_upstream_logins_total', { route: 'default' }),
      loginsBefore,
      'the linked clients run on pooled connections (no login of their own)',
    )
    const sessionUser = (c: pg.Client): Promise<string> =>
      c.query<{ u: string }>('select session_user as u').then((r) => r.rows[0]!.u)
    const startUsers = await Promise.all(linked.map(sessionUser))

    // The load: a new connection per transaction, and persistent connections, side by side.
    const script = `${proxy.socketDir}/tx.sql`
    await writeFile(
      script,
      [
        '\\set n random(1, 1000)',
        'begin;',
        'insert into pool_rotation_tx values (:n, session_user);',
        'select current_user;',
        'end;',
        'select session_user;',
      ].join('\n') + '\n',
    )
    const env = { PGHOST: proxy.host, PGPORT: String(proxy.port), PGUSER: 'bench', PGDATABASE: cluster.database }
    const bench = (extra: string[]): Promise<ClientRun> =>
      runClient('pgbench', ['-n', '-c', '4', '-j', '2', '-T', String(LOAD_SECONDS), '-f', script, ...extra], { env })
    let loadDone = false
    const linkedSeen = linked.map(() => new Set<string>())
    const linkedErrors: string[] = []
    const watchLinked = (async () => {
      while (!loadDone) {
        await Promise.all(
          linked.map((c, i) =>
            sessionUser(c).then(
              (u) => linkedSeen[i]!.add(u),
              (err: Error) => linkedErrors.push(err.message),
            ),
          ),
        )
        await new Promise((resolve) => setTimeout(resolve, 500))
      }
    })()
    const [perTx, persistent] = await Promise.all([bench(['-C']), bench([])]).finally(() => (loadDone = true))
    await watchLinked

    for (const [name, run] of [
      ['pgbench -C', perTx],
      ['pgbench', persistent],
    ] as const) {
      const summary = pgbenchSummary(run)
      t.equal(run.code, 0, `${name} exited 0`)
      t.equal(summary.failed, 0, `${name}: number of failed transactions: 0`)
      t.notOk(summary.aborted, `${name}: no client aborted or reported an error`)
      t.ok(summary.processed > 0, `${name} processed ${summary.processed} transactions`)
      if (run.code !== 0 || summary.failed !== 0) t.comment(run.out)
    }

    const credentials = issued(proxy)
    t.ok(credentials.length >= 3, `the credential switched during the run (${credentials.length} issued)`)
    t.ok(
      (await metric(proxy, 'pg_vault_proxy_pool_reuses_total', { route: 'default' })) > 0,
      `pooled connections were reused (${await metric(proxy, 'pg_vault_proxy_pool_reuses_total', { route: 'default' })})`,
    )
    const prewarmed = await metric(proxy, 'pg_vault_proxy_pool_prewarms_total', { route: 'default', outcome: 'ok' })
    t.ok(prewarmed > 1, `connections were pre-warmed, across credential switches too (${prewarmed})`)
    t.equal(
      await metric(proxy, 'pg_vault_proxy_pool_prewarms_total', { route: 'default', outcome: 'failed' }),
      0,
      'no pre-warming login failed (none used a revoked credential)',
    )

    // Linked clients: moved with the credential, and never failed.
    t.same(linkedErrors, [], 'the linked clients never saw an error')
    linkedSeen.forEach((seen, i) =>
      t.ok(seen.size >= 2, `linked client ${i} ran on several credentials (${[...seen].join(', ')})`),
    )
    const endUsers = await Promise.all(linked.map(sessionUser))
    t.ok(
      endUsers.every((u, i) => u !== startUsers[i]),
      'every linked client runs on a later credential than the one it took from the pool',
    )
    await Promise.all(linked.map((c) => c.end()))

    // Every session that took a pooled connection took one of the newest credential: none of a
    // superseded (or distrusted) credential was handed out. The log is in order, and a credential is
    // superseded in the same step that logs the next one's issue.
    // One pass over the log, in order (a nested scan would stall the proxy, which runs in this process).
    let newest: unknown
    const distrusted = new Set<unknown>()
    const startedOn = new Map<unknown, string | undefined>()
    for (const l of proxy.logs) {
      if (l.msg === 'issued a database credential') newest = l.user
      else if (String(l.msg).startsWith('the server terminated sessions of this credential')) distrusted.add(l.user)
      else if (l.msg === 'session started')
        startedOn.set(
          l.session,
          l.upstreamUser === newest && !distrusted.has(l.upstreamUser)
            ? undefined
            : `started on ${String(l.upstreamUser)}; newest was ${String(newest)}`,
        )
    }
    const ends = proxy.logs.filter((l) => l.msg === 'session ended')
    const reused = ends.filter((l) => l.reused === true)
    t.ok(reused.length > 0, `${reused.length} sessions ran on pooled connections`)
    const stale = reused.flatMap((end) => {
      if (!startedOn.has(end.session)) return [`session ${String(end.session)}: no 'session started' line`]
      const why = startedOn.get(end.session)
      return why === undefined ? [] : [`session ${String(end.session)} ${why}`]
    })
    t.same(stale, [], 'no pooled connection of a superseded credential was handed out')
    t.same(
      ends.filter((l) => l.reason !== 'client_terminated').map((l) => `${String(l.reason)}: ${String(l.detail)}`),
      [],
      'every session ended because its client said so (no error, no lost upstream)',
    )
    t.notOk(
      proxy.logs.some((l) => l.msg === 'upstream refused the credential'),
      'the upstream never refused a credential',
    )
    t.notOk(
      proxy.logs.some((l) => String(l.msg).startsWith('upstream connection lost')),
      'no session lost its upstream',
    )

    // Every superseded lease was given back and revoked by the proxy itself, and its role is gone;
    // the pool holds connections of the current credential only. The rotation goes on meanwhile, and
    // empties the pool at each switch: each check is of one moment, refilling the pool when empty.
    let last = ''
    t.ok(
      await eventually(15, async () => {
        if ((proxy.server.status().routes[0]?.pool.idle ?? 0) === 0) {
          await connect().then((c) => c.end())
          return false
        }
        const now = issued(proxy)
        const newest = now[now.length - 1]!
        const old = now.slice(0, -1)
        const revoked = new Set(proxy.logs.filter((l) => l.msg === 'revoked a lease').map((l) => String(l.leaseId)))
        const roles = await cluster.query<{ rolname: string }>('select rolname from pg_roles where rolname = any($1)', [
          old.map((c) => c.user),
        ])
        const backends = await cluster.query<{ usename: string }>(
          'select usename from pg_stat_activity where usename = any($1)',
          [now.map((c) => c.user)],
        )
        const idle = proxy.server.status().routes[0]?.pool.idle ?? 0
        last = JSON.stringify({
          newest: newest.user,
          unrevoked: old.filter((c) => !revoked.has(c.leaseId)).map((c) => c.user),
          roles: roles.map((r) => r.rolname),
          backends: backends.map((b) => b.usename),
          idle,
        })
        return (
          issued(proxy).length === now.length &&
          old.every((c) => revoked.has(c.leaseId)) &&
          roles.length === 0 &&
          idle > 0 &&
          backends.length === idle &&
          backends.every((b) => b.usename === newest.user)
        )
      }),
      `old leases revoked by the proxy and their roles dropped; the pool's backends are all of the current credential (${last})`,
    )
    t.notOk(
      proxy.logs.some((l) => l.msg === 'could not revoke a lease'),
      'every revocation succeeded',
    )
    // A backend terminated by a revocation statement would mean a lease was revoked under it: by
    // Vault at expiry because something still held it, or by the proxy while a connection lived.
    const serverLog = (await readFile(cluster.logFile, 'utf8')).slice(logFrom)
    t.notMatch(
      serverLog,
      /terminating connection due to administrator command/,
      'no backend was terminated by a revocation: every connection left its credential before the lease ended',
    )

    // Shutdown revokes the current lease too (credentials.vault revoke_on_shutdown, the default).
    await proxy.stop()
    const all = issued(proxy).map((c) => c.user)
    const left = await cluster.query<{ rolname: string }>('select rolname from pg_roles where rolname = any($1)', [all])
    t.same(
      left.map((r) => r.rolname),
      [],
      'after shutdown no role the proxy was issued is left',
    )
    const backendsLeft = await cluster.query('select 1 from pg_stat_activity where usename = any($1)', [all])
    t.equal(backendsLeft.length, 0, 'and no backend of them')
    // Shutdown closes pooled and linked connections first, and revokes once they have gone.
    t.notMatch(
      (await readFile(cluster.logFile, 'utf8')).slice(logFrom),
      /terminating connection due to administrator command/,
      "shutdown's revocation terminated no backend: it waited for the connections to close",
    )
  },
)
